//! The real agent and the real gateway end to end: mutual TLS, real Modbus TCP to a simulated
//! lock board, sled on both sides. Door safety (at most once, never after expiry) across
//! redelivery, reconnects and restarts of either side, and no event lost or duplicated when
//! the gateway is killed mid-stream.

use std::time::Duration;

use locker_schemas::{Command, CommandId, DownlinkBody};
use locker_tests::agent::TestCabinet;
use locker_tests::api::ApiClient;
use locker_tests::cluster::outcome;
use locker_tests::gateway::{test_config, GatewayProcess, TestGateway};
use locker_tests::pki::TestPki;
use locker_tests::{eventually, eventually_async};
use serde_json::{json, Value};

/// A configuration for a gateway process that comes back on the same ports after `kill -9`;
/// the reservations keep the ports from other tests until they are dropped.
fn fixed_port_config(
    pki: &TestPki,
    data: &std::path::Path,
) -> (
    locker_gateway::config::GatewayConfig,
    [locker_tests::net::PortReservation; 2],
) {
    let mut cfg = test_config(pki, data);
    let (edge, api) = (locker_tests::net::reserve(), locker_tests::net::reserve());
    cfg.edge.listen = edge.addr();
    cfg.api.listen = api.addr();
    (cfg, [edge, api])
}

async fn online(api: &ApiClient, id: &str) {
    let path = format!("/v1/cabinets/{id}");
    eventually_async(&format!("{id} online with its compartments"), || {
        let (api, path) = (api.clone(), path.clone());
        async move {
            let (s, c) = api.get(&path).await;
            (s == 200
                && c["online"] == json!(true)
                && c["compartments"].as_array().map(Vec::len) == Some(16))
            .then_some(())
        }
    })
    .await;
}

async fn unlock(api: &ApiClient, cab: &str, compartment: u16, ttl_ms: u32, wait_ms: u64) -> Value {
    let (s, r) = api
        .post(
            &format!("/v1/cabinets/{cab}/commands"),
            json!({"action": {"type": "unlock", "compartment": compartment}, "ttl_ms": ttl_ms, "wait_ms": wait_ms}),
        )
        .await;
    assert!(s == 200 || s == 202, "{s} {r}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_unlock_opens_the_door_once_and_redelivery_never_fires_again() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start(&pki).await;
    let cab = TestCabinet::start(&mut pki, "CAB-E1", gw.edge_addr()).await;
    online(&gw.api, "CAB-E1").await;

    let r = unlock(&gw.api, "CAB-E1", 3, 30_000, 15_000).await;
    let r = if r["outcome"].is_string() {
        r
    } else {
        outcome(&gw.api, r["id"].as_str().expect("id")).await
    };
    assert_eq!(r["outcome"], json!("opened"), "{r}");
    assert_eq!(cab.pulses(3), 1);
    assert!(
        cab.board.door_open(2).expect("door"),
        "the simulated door is open"
    );

    // the same command delivered again (a broker redelivery, a resend) never fires again
    let id: CommandId = r["id"].as_str().expect("id").parse().expect("command id");
    let cmd = Command {
        id,
        issued_at: r["issued_at"].as_u64().expect("t"),
        expires_at: r["expires_at"].as_u64().expect("t"),
        ttl_ms: 30_000,
        action: locker_schemas::Action::UnlockCompartment(locker_schemas::CompartmentId(3)),
    };
    let h = cab.handle.as_ref().expect("agent");
    for _ in 0..3 {
        h.downlink(DownlinkBody::Command(cmd.clone()))
            .await
            .expect("downlink");
    }
    let again = h.execute(cmd).await.expect("execute");
    assert!(
        format!("{again:?}").to_lowercase().contains("duplicate"),
        "{again:?}"
    );
    assert_eq!(
        cab.pulses(3),
        1,
        "a redelivered command never fires the lock again"
    );

    // the audit log has the door opening with its cause, then the result
    cab.board.close_door(2).expect("close");
    eventually_async("door closed and every answer in the audit log", || {
        let api = gw.api.clone();
        async move {
            let ev = api.events("CAB-E1").await;
            (ev.iter()
                .any(|e| e["kind"] == json!("door") && e["data"]["open"] == json!(false))
                && ev.iter().filter(|e| e["kind"] == json!("result")).count() >= 5)
                .then_some(())
        }
    })
    .await;
    let ev = gw.api.events("CAB-E1").await;
    let opened = ev
        .iter()
        .find(|e| e["kind"] == json!("door") && e["data"]["open"] == json!(true))
        .expect("door open event");
    assert_eq!(opened["data"]["cause"]["command"], json!(id.to_string()));
    // one result for the execution, and the same stored answer again for each of the four
    // redeliveries (never a second execution)
    let results: Vec<&Value> = ev.iter().filter(|e| e["kind"] == json!("result")).collect();
    assert_eq!(results.len(), 5, "{results:?}");
    for r in &results {
        assert_eq!(r["data"], results[0]["data"], "same outcome and detail");
    }
    assert_eq!(
        results[0]["data"]["outcome"],
        json!("opened"),
        "{results:?}"
    );
    let seqs: Vec<u64> = ev.iter().map(|e| e["seq"].as_u64().expect("seq")).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "contiguous: {seqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_commands_are_delivered_on_return_and_expired_ones_never_fire() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start(&pki).await;
    let mut cab = TestCabinet::start(&mut pki, "CAB-E2", gw.edge_addr()).await;
    online(&gw.api, "CAB-E2").await;
    cab.stop().await;
    eventually_async("offline", || {
        let api = gw.api.clone();
        async move { (api.get("/v1/cabinets/CAB-E2").await.1["online"] == json!(false)).then_some(()) }
    })
    .await;

    let keep = unlock(&gw.api, "CAB-E2", 1, 120_000, 0).await;
    let short = unlock(&gw.api, "CAB-E2", 2, 200, 0).await;
    assert_eq!(keep["state"], json!("queued"));
    let expired = outcome(&gw.api, short["id"].as_str().expect("id")).await;
    assert_eq!(expired["outcome"], json!("expired"));

    cab.boot().await;
    let done = outcome(&gw.api, keep["id"].as_str().expect("id")).await;
    assert_eq!(done["outcome"], json!("opened"), "{done}");
    assert_eq!(cab.pulses(1), 1);
    assert_eq!(cab.pulses(2), 0, "an expired command never fires");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_gateway_mid_stream_loses_and_duplicates_nothing() {
    let mut pki = TestPki::new();
    let data = tempfile::tempdir().expect("temp dir");
    let (cfg, _ports) = fixed_port_config(&pki, data.path());
    let t0 = std::time::Instant::now();
    let mut gw = GatewayProcess::start(&cfg);
    eprintln!("[{:?}] gateway process up", t0.elapsed());
    let mut cab = TestCabinet::start(&mut pki, "CAB-K9", gw.edge_addr).await;
    online(&gw.api, "CAB-K9").await;

    // a person keeps opening and closing doors (forced openings: door events and alarms)
    let board = cab.board.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let person = tokio::spawn(async move {
        let mut i = 0usize;
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            let door = i % 8;
            let _ = board.open_door(door);
            tokio::time::sleep(Duration::from_millis(40)).await;
            let _ = board.close_door(door);
            tokio::time::sleep(Duration::from_millis(40)).await;
            i += 1;
        }
    });

    eventually("some events acknowledged", || {
        cab.status().last_acked_seq >= 20
    })
    .await;
    eprintln!("[{:?}] 20 events acked; kill -9", t0.elapsed());
    gw.kill9();
    let acked_before = cab.status().last_acked_seq;
    eventually(
        "events pile up in the outbox while the gateway is down",
        || cab.status().next_seq > acked_before + 10,
    )
    .await;
    eprintln!("[{:?}] backlog built; restarting", t0.elapsed());
    gw.restart();
    eprintln!("[{:?}] gateway process restarted", t0.elapsed());
    eventually("more events acknowledged after the restart", || {
        cab.status().last_acked_seq > acked_before + 10
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    person.await.expect("person");
    // the last door closings and alarm clearings are still coming: wait until the agent's
    // outbox is empty and the audit log holds exactly what the agent had acknowledged
    let api = gw.api.clone();
    let seqs = eventually_async("outbox drained and the audit log complete", || {
        let (api, s) = (api.clone(), cab.status());
        async move {
            if s.outbox_depth != 0 || s.last_acked_seq + 1 != s.next_seq {
                return None;
            }
            let ev = api.events("CAB-K9").await;
            let seqs: Vec<u64> = ev.iter().map(|e| e["seq"].as_u64().expect("seq")).collect();
            (seqs.len() as u64 >= s.last_acked_seq).then_some(seqs)
        }
    })
    .await;
    eprintln!("[{:?}] outbox drained", t0.elapsed());
    let n = seqs.len() as u64;
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>(),
        "every event stored exactly once, in order"
    );
    assert!(
        gw.api
            .metric("locker_ingest_events_total{kind=\"door\"}")
            .await
            > 0.0
    );
    cab.stop().await;
    let status = gw.terminate();
    assert!(status.success(), "SIGTERM exits cleanly: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_made_before_the_gateway_exists_arrive_in_order_once_it_is_up() {
    let mut pki = TestPki::new();
    let reserved = locker_tests::net::reserve();
    let edge = reserved.addr();
    // the cabinet starts first: nothing listens on its gateway address yet (connections to a
    // reserved port are refused)
    let cab = TestCabinet::start(&mut pki, "CAB-EARLY", edge).await;
    for door in 0..5 {
        cab.board.open_door(door).expect("open");
        eventually("the agent sees the door open", || {
            cab.status().open_doors.len() == 1
        })
        .await;
        cab.board.close_door(door).expect("close");
        eventually("the agent sees the door closed", || {
            cab.status().open_doors.is_empty()
        })
        .await;
    }
    let backlog = cab.status().next_seq - 1;
    assert!(
        backlog >= 10,
        "door events and alarms are in the outbox: {backlog}"
    );
    assert_eq!(cab.status().last_acked_seq, 0);

    let gw = TestGateway::start_with(&pki, |c| c.edge.listen = edge).await;
    let seqs = eventually_async("backlog delivered and acknowledged", || {
        let (api, s) = (gw.api.clone(), cab.status());
        async move {
            if s.outbox_depth != 0 || s.last_acked_seq < backlog {
                return None;
            }
            let ev = api.events("CAB-EARLY").await;
            Some(
                ev.iter()
                    .map(|e| e["seq"].as_u64().expect("seq"))
                    .collect::<Vec<_>>(),
            )
        }
    })
    .await;
    let n = seqs.len() as u64;
    assert!(n > backlog, "the backlog and the hello after connecting");
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "in order, once each");
}

/// Waits until the audit log of `cab` holds a Result for command `id`.
async fn result_stored(api: &ApiClient, cab: &str, id: &str) {
    eventually_async("the result is in the audit log", || {
        let api = api.clone();
        async move {
            api.events(cab)
                .await
                .iter()
                .any(|e| e["kind"] == json!("result") && e["data"]["command"] == json!(id))
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_stored_but_not_recorded_before_a_stop_is_recovered_from_the_audit_log() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start(&pki).await;
    let mut cab = TestCabinet::start(&mut pki, "CAB-R1", gw.edge_addr()).await;
    online(&gw.api, "CAB-R1").await;

    // ingest stores the Result; the dispatcher does not get to record it before the stop
    gw.gw.commands.hold_results_for_tests(true).await;
    let r = unlock(&gw.api, "CAB-R1", 4, 60_000, 0).await;
    let id = r["id"].as_str().expect("id").to_owned();
    result_stored(&gw.api, "CAB-R1", &id).await;
    assert!(gw.api.get(&format!("/v1/commands/{id}")).await.1["outcome"].is_null());
    // the cabinet stays away: only the gateway's own audit log can give the outcome
    cab.stop().await;
    let gw = gw.restart().await;
    let rec = gw.api.get(&format!("/v1/commands/{id}")).await.1;
    assert_eq!(rec["outcome"], json!("opened"), "recovered at start: {rec}");
    assert_eq!(rec["state"], json!("done"));
    assert_eq!(gw.api.metric("locker_commands_recovered_total").await, 1.0);
    assert_eq!(cab.pulses(4), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_finished_command_is_answered_with_its_stored_outcome() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start(&pki).await;
    let cab = TestCabinet::start(&mut pki, "CAB-R2", gw.edge_addr()).await;
    online(&gw.api, "CAB-R2").await;

    // the gateway misses the first Result (held), so it resends; the agent must answer the
    // resend with the stored outcome, without firing again
    gw.gw.commands.hold_results_for_tests(true).await;
    let r = unlock(&gw.api, "CAB-R2", 5, 60_000, 0).await;
    let id = r["id"].as_str().expect("id").to_owned();
    result_stored(&gw.api, "CAB-R2", &id).await;
    eventually_async("answered again after a resend", || {
        let api = gw.api.clone();
        let id = id.clone();
        async move {
            let n = api
                .events("CAB-R2")
                .await
                .iter()
                .filter(|e| e["kind"] == json!("result") && e["data"]["command"] == json!(id))
                .count();
            (n >= 2).then_some(())
        }
    })
    .await;
    gw.gw.commands.hold_results_for_tests(false).await;
    let done = outcome(&gw.api, &id).await;
    assert_eq!(done["outcome"], json!("opened"), "{done}");
    assert_eq!(cab.pulses(5), 1, "a resend never fires the lock again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_config_changes_persists_and_reports_and_sync_credentials_reports_the_held_set() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start(&pki).await;
    let mut cab = TestCabinet::start(&mut pki, "CAB-SC", gw.edge_addr()).await;
    online(&gw.api, "CAB-SC").await;
    let command = |action: Value| {
        let api = gw.api.clone();
        async move {
            let (s, r) = api
                .post(
                    "/v1/cabinets/CAB-SC/commands",
                    json!({"action": action, "wait_ms": 15000}),
                )
                .await;
            assert!(s == 200 || s == 202, "{s} {r}");
            if r["outcome"].is_string() {
                r
            } else {
                outcome(&api, r["id"].as_str().expect("id")).await
            }
        }
    };
    let r =
        command(json!({"type": "set_config", "values": {"timing.door_left_open_s": "120"}})).await;
    assert_eq!(r["outcome"], json!("done"), "{r}");
    assert_eq!(r["detail"], json!("timing.door_left_open_s: 300 -> 120"));

    // persisted: after a restart the agent starts from the value it was set to
    cab.stop().await;
    cab.boot().await;
    online(&gw.api, "CAB-SC").await;
    let r = command(json!({"type": "set_config", "values": {"timing.door_left_open_s": "90", "timing.unlock_confirm_ms": "2500"}})).await;
    assert_eq!(r["outcome"], json!("done"), "{r}");
    assert_eq!(
        r["detail"],
        json!("timing.door_left_open_s: 120 -> 90; timing.unlock_confirm_ms: 2000 -> 2500")
    );

    // sync_credentials: the cabinet reports the set it holds (a new hello) so the gateway
    // resends a newer one
    let hellos = |events: &Value| {
        events["events"]
            .as_array()
            .map(|a| a.iter().filter(|e| e["kind"] == "hello").count())
            .unwrap_or(0)
    };
    let (_, before) = gw.api.get("/v1/cabinets/CAB-SC/events?limit=1000").await;
    let r = command(json!({"type": "sync_credentials"})).await;
    assert_eq!(r["outcome"], json!("done"), "{r}");
    assert!(
        r["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("holding credential set version")),
        "{r}"
    );
    let (_, after) = gw.api.get("/v1/cabinets/CAB-SC/events?limit=1000").await;
    assert_eq!(hellos(&after), hellos(&before) + 1, "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_gateway_with_unlocks_in_flight_gives_each_its_one_outcome() {
    let mut pki = TestPki::new();
    let data = tempfile::tempdir().expect("temp dir");
    let (cfg, _ports) = fixed_port_config(&pki, data.path());
    let mut gw = GatewayProcess::start(&cfg);
    let cab = TestCabinet::start(&mut pki, "CAB-K9C", gw.edge_addr).await;
    online(&gw.api, "CAB-K9C").await;

    // unlocks sent one after the other, the gateway killed right after the last one was sent:
    // each is somewhere between sent, executed, stored and recorded when the process dies
    let mut ids = Vec::new();
    for c in 1..=3u16 {
        let r = unlock(&gw.api, "CAB-K9C", c, 60_000, 0).await;
        ids.push((c, r["id"].as_str().expect("id").to_owned()));
    }
    gw.kill9();
    gw.restart();
    for (c, id) in &ids {
        let r = outcome(&gw.api, id).await;
        assert_eq!(r["outcome"], json!("opened"), "{r}");
        assert_eq!(cab.pulses(*c), 1, "compartment {c} fired exactly once");
    }
    let status = gw.terminate();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_unlock_costs_one_command_store_flush_and_two_agent_flushes() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start(&pki).await;
    let cab = TestCabinet::start(&mut pki, "CAB-FL", gw.edge_addr()).await;
    online(&gw.api, "CAB-FL").await;
    let commands_flushes = r#"locker_store_flushes_total{store="commands"}"#;
    let before = gw.api.metric(commands_flushes).await;
    let agent_before = cab.status().counters.flushed_writes;

    let r = unlock(&gw.api, "CAB-FL", 2, 60_000, 10_000).await;
    assert_eq!(r["outcome"], json!("opened"), "{r}");
    // the record is written before the answer: a read right after it agrees
    let id = r["id"].as_str().expect("id");
    let rec = gw.api.get(&format!("/v1/commands/{id}")).await.1;
    assert_eq!(rec["outcome"], json!("opened"), "{rec}");
    assert_eq!(rec["state"], json!("done"), "{rec}");

    // the gateway flushes the command once (written as sent, then sent); its outcome comes
    // from the Result that ingest already flushed into the audit log
    assert_eq!(gw.api.metric(commands_flushes).await - before, 1.0);
    assert!(
        gw.api
            .metric(r#"locker_store_flushes_total{store="audit"}"#)
            .await
            >= 1.0
    );
    // the agent flushes the claim before the pulse, then the door opening with the Result
    assert_eq!(cab.status().counters.flushed_writes - agent_before, 2);
    let ev = gw.api.events("CAB-FL").await;
    let kinds: Vec<&str> = ev
        .iter()
        .rev()
        .take(2)
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        vec!["result", "door"],
        "door opening then its Result"
    );
    assert_eq!(cab.pulses(2), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_answered_to_the_api_survives_kill_9_right_after_the_answer() {
    let mut pki = TestPki::new();
    let data = tempfile::tempdir().expect("temp dir");
    let (cfg, _ports) = fixed_port_config(&pki, data.path());
    let mut gw = GatewayProcess::start(&cfg);
    let mut cab = TestCabinet::start(&mut pki, "CAB-K9A", gw.edge_addr).await;
    online(&gw.api, "CAB-K9A").await;

    // the outcome is answered once the Result is durable in the audit log; its record on the
    // command is written without a flush, so kill -9 may lose it: recovery gives it back
    let r = unlock(&gw.api, "CAB-K9A", 3, 60_000, 10_000).await;
    assert_eq!(r["outcome"], json!("opened"), "{r}");
    let id = r["id"].as_str().expect("id").to_owned();
    gw.kill9();
    // the cabinet stays away: only the gateway's own storage can give the outcome
    cab.stop().await;
    gw.restart();
    let rec = gw.api.get(&format!("/v1/commands/{id}")).await.1;
    assert_eq!(rec["outcome"], json!("opened"), "after kill -9: {rec}");
    assert_eq!(rec["state"], json!("done"), "{rec}");
    assert_eq!(cab.pulses(3), 1);
    let status = gw.terminate();
    assert!(status.success(), "{status:?}");
}
