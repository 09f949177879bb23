//! The HTTP control surface over a real socket changes simulator state.
#![allow(clippy::unwrap_used)]

mod common;

use common::{connect, di, Transport};
use locker_sim::{
    control::{charger_router, lockboard_router, serve_http},
    ChargerConfig, ChargerSim, LockBoardConfig, LockBoardSim,
};
use serde_json::Value;

async fn post(client: &reqwest::Client, url: String) -> (u16, Value) {
    let res = client.post(url).send().await.expect("http");
    let status = res.status().as_u16();
    (status, res.json().await.expect("json body"))
}

#[tokio::test]
async fn lockboard_control_changes_state() {
    let b = LockBoardSim::new(LockBoardConfig::default()).unwrap();
    let (addr, _task) = serve_http(
        "127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap(),
        lockboard_router(b.clone()),
    )
    .await
    .unwrap();
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let mut ctx = connect(&b.modbus_server(), Transport::Tcp, 1).await;

    let (status, door) = post(&http, format!("{base}/doors/3/parcel")).await;
    assert_eq!(status, 200);
    assert_eq!(door["parcel"], true);
    assert!(di(&mut ctx, 0x103).await);

    post(&http, format!("{base}/doors/3/open")).await;
    assert!(di(&mut ctx, 3).await);
    post(&http, format!("{base}/doors/3/close")).await;
    assert!(!di(&mut ctx, 3).await);
    post(&http, format!("{base}/doors/3/take")).await;
    assert!(!b.parcel_present(3).unwrap());

    let (_, door) = post(&http, format!("{base}/doors/4/stuck?value=open")).await;
    assert_eq!(door["sensor_open"], true);
    assert!(di(&mut ctx, 4).await);
    post(&http, format!("{base}/doors/4/stuck?value=none")).await;
    assert!(!di(&mut ctx, 4).await);

    let (_, door) = post(&http, format!("{base}/doors/5/jam?on=true")).await;
    assert_eq!(door["jammed"], true);
    assert!(b.door(5).unwrap().jammed);
    let (_, door) = post(&http, format!("{base}/doors/6/pulse")).await;
    assert_eq!(door["pulses"], 1);

    let (_, state) = post(&http, format!("{base}/unresponsive?on=true")).await;
    assert_eq!(state["link"]["unresponsive"], true);
    post(&http, format!("{base}/unresponsive?on=false")).await;
    let (_, state) = post(&http, format!("{base}/delay?ms=5")).await;
    assert_eq!(state["link"]["delay_ms"], 5);
    let (_, state) = post(&http, format!("{base}/auto-close?ms=1000")).await;
    assert_eq!(state["auto_close_ms"], 1000);

    let (status, err) = post(&http, format!("{base}/doors/16/open")).await;
    assert_eq!(status, 404);
    assert!(err["error"].as_str().unwrap().contains("no lock 16"));
    let status = http
        .post(format!("{base}/doors/1/stuck?value=sideways"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 400);

    let state: Value = http
        .get(format!("{base}/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["locks"], 16);
    assert_eq!(state["doors"].as_array().unwrap().len(), 16);
    assert_eq!(state["total_pulses"], 1);
    assert_eq!(state["doors"][6]["pulses"], 1);
}

#[tokio::test]
async fn charger_control_changes_state() {
    let c = ChargerSim::new(ChargerConfig {
        speed: 0.0,
        ..ChargerConfig::default()
    })
    .unwrap();
    let (addr, _task) = serve_http(
        "127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap(),
        charger_router(c.clone()),
    )
    .await
    .unwrap();
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();

    let (status, snap) = post(&http, format!("{base}/time?hour=3")).await;
    assert_eq!(status, 200);
    assert!((snap["time_of_day_h"].as_f64().unwrap() - 3.0).abs() < 1e-6);
    assert_eq!(snap["pv_power_w"], 0.0);
    let (_, snap) = post(&http, format!("{base}/load?w=12.5")).await;
    assert_eq!(snap["load_power_w"], 12.5);
    let (_, snap) = post(&http, format!("{base}/soc?pct=33")).await;
    assert!((snap["soc_pct"].as_f64().unwrap() - 33.0).abs() < 1e-9);
    let (_, snap) = post(&http, format!("{base}/cloud?pct=40")).await;
    assert_eq!(snap["cloudiness_pct"], 40.0);
    let (_, snap) = post(&http, format!("{base}/speed?x=60")).await;
    assert_eq!(snap["speed"], 60.0);
    let (_, snap) = post(&http, format!("{base}/fault?on=true")).await;
    assert_eq!(snap["fault"], true);
    assert_eq!(snap["battery_status"].as_u64().unwrap() & 0x0F, 4);
    let (_, snap) = post(&http, format!("{base}/fault?on=false")).await;
    assert_eq!(snap["fault"], false);
    let (status, err) = post(&http, format!("{base}/cloud?pct=140")).await;
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("cloudiness"));
    let snap: Value = http
        .get(format!("{base}/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(snap["chemistry"], "lifepo4");
    assert!((c.snapshot().load_power_w - 12.5).abs() < 1e-9);
}
