//! Shared subscriptions at the edge (issue 15): `$share/{group}/{filter}` for integrators, the
//! filter inside checked against their ACL; a fleet's QoS 1 events spread over a group's
//! members, each exactly once per group; groups per integrator identity; a member that leaves
//! with unacknowledged messages loses nothing for the group. With stock clients (paho v5,
//! mosquitto_sub 3.1.1) and a raw v5 member that never acknowledges.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use locker_schemas::Filter;
use locker_tests::edge::*;
use locker_tests::eventually;
use locker_tests::interop::*;
use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
use rumqttc::QoS;

const GROUP: &str = "$share/g1/lk/v1/+/up/door";
const CABINETS: [&str; 3] = ["CAB-A", "CAB-B", "CAB-C"];

/// Integrators `erp` and `bi` both read door events.
fn two_integrators(cfg: &mut locker_gateway::edge::EdgeConfig) {
    cfg.integrator_acls.insert(
        "bi".into(),
        vec![Filter::new("lk/v1/+/up/door").expect("filter")],
    );
}

/// The fleet: one connected 3.1.1 cabinet client per id.
async fn fleet(fx: &mut EdgeFixture) -> Vec<Client> {
    let mut out = Vec::new();
    for id in CABINETS {
        let cert = fx.cabinet(id);
        let c = fx.client(id, Some(&cert));
        c.wait_connected(id).await;
        out.push(c);
    }
    out
}

/// Each cabinet publishes `per_cabinet` QoS 1 door events `{id}:{n}` from `from`; returns
/// them as the set a group must receive.
async fn publish_events(fleet: &[Client], from: usize, per_cabinet: usize) -> BTreeSet<String> {
    let mut sent = BTreeSet::new();
    for n in from..from + per_cabinet {
        for (id, c) in CABINETS.iter().zip(fleet) {
            let payload = format!("{id}:{n}");
            c.client
                .publish(
                    format!("lk/v1/{id}/up/door"),
                    QoS::AtLeastOnce,
                    false,
                    payload.clone().into_bytes(),
                )
                .await
                .expect("publish");
            sent.insert(payload);
        }
    }
    sent
}

/// Payloads received by paho members, as (payload -> how many times).
fn tally(members: &[&Stock]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for m in members {
        for (_, p) in m.messages() {
            *t.entry(String::from_utf8(p).expect("utf-8")).or_insert(0) += 1;
        }
    }
    t
}

/// Waits until the edge lists `n` connections: a group's members are several connections of
/// one integrator identity side by side (none takes over another).
async fn members_coexist(fx: &EdgeFixture, n: usize) {
    let edge = fx.edge.clone();
    locker_tests::eventually_async(
        &format!("{n} connections side by side (several members of one integrator identity)"),
        || {
            let edge = edge.clone();
            async move { (edge.connected().await.len() == n).then_some(()) }
        },
    )
    .await;
}

async fn wait_subscribed(p: &Stock, codes: serde_json::Value) {
    eventually("paho SUBACK", || !p.events_of("suback").is_empty()).await;
    assert_eq!(p.events_of("suback")[0]["codes"], codes, "{}", p.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_three_paho_v5_consumers_gets_each_event_once() {
    const PER_CABINET: usize = 20;
    let mut fx = EdgeFixture::start(two_integrators).await;
    let (erp, bi) = (fx.integrator("erp"), fx.integrator("bi"));
    let (erp_creds, bi_creds) = (Creds::new(&fx, &erp), Creds::new(&fx, &bi));
    let fleet = fleet(&mut fx).await;

    let member = |id: &str, creds: &Creds, filter: &str| {
        let mut o = PahoOpts::new(Version::V5, &[filter]);
        o.client_id = id.to_owned();
        paho(&fx, creds, &o)
    };
    let g1: Vec<Stock> = ["m1", "m2", "m3"]
        .into_iter()
        .map(|id| member(id, &erp_creds, GROUP))
        .collect();
    // Another group of erp, and bi's group of the same name: each gets everything once.
    let g2 = member("other", &erp_creds, "$share/g2/lk/v1/+/up/door");
    let bi_g1 = member("bi-1", &bi_creds, GROUP);
    for p in g1.iter().chain([&g2, &bi_g1]) {
        wait_subscribed(p, serde_json::json!([1])).await;
    }
    members_coexist(&fx, CABINETS.len() + 5).await;

    let sent = publish_events(&fleet, 0, PER_CABINET).await;
    let total = sent.len();
    let members: Vec<&Stock> = g1.iter().collect();
    eventually("the group received every event", || {
        tally(&members).len() == total
    })
    .await;
    eventually("the other groups too", || {
        tally(&[&g2]).len() == total && tally(&[&bi_g1]).len() == total
    })
    .await;

    let t = tally(&members);
    assert_eq!(t.keys().cloned().collect::<BTreeSet<_>>(), sent);
    assert!(t.values().all(|&n| n == 1), "exactly once per group: {t:?}");
    assert!(tally(&[&g2]).values().all(|&n| n == 1));
    assert!(tally(&[&bi_g1]).values().all(|&n| n == 1));
    let busy = g1.iter().filter(|m| !m.messages().is_empty()).count();
    assert!(busy >= 2, "spread over the members ({busy} of 3 got any)");
    for m in &g1 {
        assert!(m.events_of("message").iter().all(|e| e["qos"] == 1));
        assert!(m.events_of("disconnect").is_empty(), "{}", m.output());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_leaves_with_unacknowledged_messages_loses_nothing() {
    const PER_CABINET: usize = 10;
    let mut fx = EdgeFixture::start(|_| {}).await;
    let erp = fx.integrator("erp");
    let creds = Creds::new(&fx, &erp);
    let fleet = fleet(&mut fx).await;

    let mut stock = Vec::new();
    for id in ["m1", "m2"] {
        let mut o = PahoOpts::new(Version::V5, &[GROUP]);
        o.client_id = id.to_owned();
        let p = paho(&fx, &creds, &o);
        wait_subscribed(&p, serde_json::json!([1])).await;
        stock.push(p);
    }
    // The third member takes messages and never acknowledges them, then goes away.
    let (mut silent, _) = fx.raw_v5_connected(&erp, None).await;
    let (codes, _) = silent.subscribe(1, &[GROUP]).await;
    assert_eq!(
        codes,
        vec![SubscribeReasonCode::Success(
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce
        )]
    );
    members_coexist(&fx, CABINETS.len() + 3).await;

    let mut sent = publish_events(&fleet, 0, PER_CABINET).await;
    let mut held = Vec::new();
    while held.is_empty() {
        match silent.expect_next("a message for the silent member").await {
            Packet::Publish(p) => held.push(String::from_utf8(p.payload.to_vec()).expect("utf-8")),
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(silent);

    // One paho member is killed mid-stream as well.
    sent.extend(publish_events(&fleet, PER_CABINET, PER_CABINET).await);
    let mut killed = stock.remove(0);
    eventually("m1 got some", || !killed.messages().is_empty()).await;
    killed.kill().await;
    sent.extend(publish_events(&fleet, 2 * PER_CABINET, PER_CABINET).await);

    // Everything delivered to the group reaches a member that acknowledges it.
    let members = [&killed, &stock[0]];
    eventually("nothing lost", || {
        let got: BTreeSet<String> = tally(&members).into_keys().collect();
        sent.is_subset(&got)
    })
    .await;
    let got: BTreeSet<String> = tally(&members).into_keys().collect();
    for h in &held {
        assert!(
            got.contains(h),
            "{h} held unacknowledged by the leaver was redelivered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_1_1_group_of_mosquitto_subs_gets_each_event_once() {
    const PER_CABINET: usize = 10;
    let mut fx = EdgeFixture::start(|_| {}).await;
    let erp = fx.integrator("erp");
    let creds = Creds::new(&fx, &erp);
    let fleet = fleet(&mut fx).await;

    let mut members = Vec::new();
    for id in ["s1", "s2", "s3"] {
        let mut s = mosquitto_sub(
            &fx,
            &creds,
            Version::V311,
            &[GROUP],
            0,
            60,
            &["-d", "-i", id],
        );
        eventually("SUBACK", || {
            s.lines().iter().any(|l| l.starts_with("Subscribed")) || s.exited().is_some()
        })
        .await;
        assert!(
            s.lines().iter().any(|l| l == "Subscribed (mid: 1): 1"),
            "{}",
            s.output()
        );
        members.push(s);
    }
    members_coexist(&fx, CABINETS.len() + 3).await;
    let sent = publish_events(&fleet, 0, PER_CABINET).await;
    let received = |members: &[Stock]| {
        let mut t = BTreeMap::new();
        for m in members {
            for (topic, p) in sub_messages(m) {
                if topic.starts_with("lk/") {
                    *t.entry(p).or_insert(0usize) += 1;
                }
            }
        }
        t
    };
    eventually("the group received every event", || {
        received(&members).len() == sent.len()
    })
    .await;
    let t = received(&members);
    assert_eq!(t.keys().cloned().collect::<BTreeSet<_>>(), sent);
    assert!(t.values().all(|&n| n == 1), "exactly once per group: {t:?}");
    for m in members.iter_mut() {
        assert!(m.exited().is_none(), "still connected: {}", m.output());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_inside_a_share_is_checked_against_the_acl() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let erp = fx.integrator("erp");

    // MQTT 5: refused with 0x87, the allowed share of the same SUBSCRIBE granted.
    let (mut raw, _) = fx.raw_v5_connected(&erp, None).await;
    let (codes, _) = raw
        .subscribe(
            1,
            &[
                "$share/g1/lk/v1/+/up/#",
                GROUP,
                "$share/g1/lk/v1/CAB-A/down/#",
            ],
        )
        .await;
    let q1 = SubscribeReasonCode::Success(rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
    assert_eq!(
        codes,
        vec![
            SubscribeReasonCode::NotAuthorized,
            q1,
            SubscribeReasonCode::NotAuthorized
        ]
    );
    eventually("counted", || fx.rejections("acl_subscribe") == 2).await;
    drop(raw);
    fx.wait_connected(0).await;

    // 3.1.1: the `$share/` prefix is a filter string there; refused with 0x80, connection stays.
    let c = fx.client("erp", Some(&erp));
    c.wait_connected("erp").await;
    c.client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("$share/g1/lk/v1/+/up/#".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new(GROUP.into(), QoS::AtLeastOnce),
        ])
        .await
        .expect("subscribe");
    eventually("SUBACK", || c.seen().suback_codes.len() == 2).await;
    assert_eq!(
        c.seen().suback_codes,
        vec![
            rumqttc::SubscribeReasonCode::Failure,
            rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)
        ]
    );
    assert!(c.connected());
    eventually("counted", || fx.rejections("acl_subscribe") == 3).await;
}
