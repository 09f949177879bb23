//! Door safety as a property: for any interleaving of unlock commands, redeliveries of the same
//! command, commands that expire before delivery, and restarts of the gateway or of the agent
//! at any step of a command (between commands; with a command in flight, sent and not yet
//! answered; and between ingest storing a Result and the dispatcher recording its outcome),
//! every command ends with exactly one outcome, a lock fires at most once per command, it fires
//! exactly for the commands reported `opened`, and an expired command never fires.

use std::collections::HashMap;

use locker_schemas::{Action, Command, CommandId, CompartmentId, DownlinkBody};
use locker_tests::agent::TestCabinet;
use locker_tests::eventually_async;
use locker_tests::gateway::TestGateway;
use locker_tests::pki::TestPki;
use proptest::prelude::*;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
enum Op {
    /// Unlock a compartment (1..=4) and close its door again afterwards.
    Unlock(u16),
    /// Deliver the last command again straight into the agent (a broker redelivery).
    Redeliver,
    /// Queue an unlock while the agent is offline with a TTL that runs out before it returns.
    ExpireWhileOffline(u16),
    RestartGateway,
    RestartAgent,
    /// Unlock and restart one side as soon as the command is sent: it may not have reached
    /// the agent yet, be running there, or be answered but not yet stored.
    InFlight(u16, Side),
    /// Unlock, let ingest store its Result while the dispatcher is held, then restart one
    /// side before the dispatcher records the outcome.
    StoredNotRecorded(u16, Side),
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Gateway,
    Agent,
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Gateway), Just(Side::Agent)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u16..=4).prop_map(Op::Unlock),
        2 => Just(Op::Redeliver),
        1 => (1u16..=4).prop_map(Op::ExpireWhileOffline),
        1 => Just(Op::RestartGateway),
        1 => Just(Op::RestartAgent),
        2 => ((1u16..=4), side()).prop_map(|(c, s)| Op::InFlight(c, s)),
        2 => ((1u16..=4), side()).prop_map(|(c, s)| Op::StoredNotRecorded(c, s)),
    ]
}

async fn final_outcome(gw: &TestGateway, id: &str) -> Value {
    let path = format!("/v1/commands/{id}");
    eventually_async(&format!("outcome of {id}"), || {
        let (api, path) = (gw.api.clone(), path.clone());
        async move {
            let (_, r) = api.get(&path).await;
            r["outcome"].is_string().then_some(r)
        }
    })
    .await
}

async fn online(gw: &TestGateway, id: &str) {
    let path = format!("/v1/cabinets/{id}");
    eventually_async("cabinet online", || {
        let (api, path) = (gw.api.clone(), path.clone());
        async move { (api.get(&path).await.1["online"] == json!(true)).then_some(()) }
    })
    .await;
}

async fn result_stored(gw: &TestGateway, id: &str) {
    eventually_async("the result is in the audit log", || {
        let api = gw.api.clone();
        async move {
            api.events("CAB-P")
                .await
                .iter()
                .any(|e| e["kind"] == json!("result") && e["data"]["command"] == json!(id))
                .then_some(())
        }
    })
    .await;
}

async fn post_unlock(gw: &TestGateway, c: u16) -> String {
    let (s, r) = gw
        .api
        .post(
            "/v1/cabinets/CAB-P/commands",
            json!({"action": {"type": "unlock", "compartment": c}, "ttl_ms": 60000}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    r["id"].as_str().expect("id").to_owned()
}

/// Restarts one side and waits until the cabinet is back online.
async fn restart(side: Side, gw: TestGateway, cab: &mut TestCabinet) -> TestGateway {
    let gw = match side {
        Side::Gateway => gw.restart().await,
        Side::Agent => {
            cab.stop().await;
            cab.boot().await;
            gw
        }
    };
    online(&gw, "CAB-P").await;
    gw
}

/// Waits for an unlock's outcome, remembers it for redelivery, and closes its door again.
async fn settle(
    gw: &TestGateway,
    cab: &TestCabinet,
    id: String,
    c: u16,
    commands: &mut Vec<(String, u16, bool)>,
) -> Command {
    let rec = final_outcome(gw, &id).await;
    let cmd = Command {
        id: id.parse::<CommandId>().expect("id"),
        issued_at: rec["issued_at"].as_u64().expect("t"),
        expires_at: rec["expires_at"].as_u64().expect("t"),
        ttl_ms: 60_000,
        action: Action::UnlockCompartment(CompartmentId(c)),
    };
    commands.push((id, c, false));
    cab.board.close_door(usize::from(c - 1)).expect("close");
    locker_tests::eventually("the agent sees the door closed", || {
        !cab.status().open_doors.contains(&CompartmentId(c))
    })
    .await;
    cmd
}

async fn run(ops: Vec<Op>) {
    let mut pki = TestPki::new();
    let mut gw = TestGateway::start(&pki).await;
    let mut cab = TestCabinet::start(&mut pki, "CAB-P", gw.edge_addr()).await;
    online(&gw, "CAB-P").await;
    let mut commands: Vec<(String, u16, bool)> = Vec::new(); // (id, compartment, expected expired)
    let mut last: Option<Command> = None;
    for op in ops {
        match op {
            Op::Unlock(c) => {
                let id = post_unlock(&gw, c).await;
                last = Some(settle(&gw, &cab, id, c, &mut commands).await);
            }
            Op::InFlight(c, side) => {
                let id = post_unlock(&gw, c).await;
                gw = restart(side, gw, &mut cab).await;
                last = Some(settle(&gw, &cab, id, c, &mut commands).await);
            }
            Op::StoredNotRecorded(c, side) => {
                gw.gw.commands.hold_results_for_tests(true).await;
                let id = post_unlock(&gw, c).await;
                result_stored(&gw, &id).await;
                gw = restart(side, gw, &mut cab).await;
                // a restarted gateway has a new dispatcher; a kept one is let go again
                gw.gw.commands.hold_results_for_tests(false).await;
                last = Some(settle(&gw, &cab, id, c, &mut commands).await);
            }
            Op::Redeliver => {
                if let Some(cmd) = last.clone() {
                    let h = cab.handle.as_ref().expect("agent");
                    h.downlink(DownlinkBody::Command(cmd))
                        .await
                        .expect("downlink");
                }
            }
            Op::ExpireWhileOffline(c) => {
                cab.stop().await;
                let (s, r) = gw
                    .api
                    .post(
                        "/v1/cabinets/CAB-P/commands",
                        json!({"action": {"type": "unlock", "compartment": c}, "ttl_ms": 1}),
                    )
                    .await;
                assert_eq!(s, 202, "{r}");
                let id = r["id"].as_str().expect("id").to_owned();
                commands.push((id.clone(), c, true));
                // If the gateway had not yet seen the cabinet go, the command was sent into
                // the void; then only the cabinet may decide, once it is back (it judges the
                // command expired). Otherwise the gateway expires it while it waits.
                cab.boot().await;
                online(&gw, "CAB-P").await;
                final_outcome(&gw, &id).await;
            }
            Op::RestartGateway => gw = restart(Side::Gateway, gw, &mut cab).await,
            Op::RestartAgent => gw = restart(Side::Agent, gw, &mut cab).await,
        }
    }
    // every command has exactly one final outcome; pulses match the `opened` ones exactly
    let mut opened: HashMap<u16, u64> = HashMap::new();
    for (id, c, expect_expired) in &commands {
        let rec = final_outcome(&gw, id).await;
        let outcome = rec["outcome"].as_str().expect("outcome").to_owned();
        if *expect_expired {
            assert_eq!(outcome, "expired", "{rec}");
        } else {
            // the board is healthy and every door was closed again before the next unlock
            assert_eq!(outcome, "opened", "{rec}");
        }
        if outcome == "opened" {
            *opened.entry(*c).or_default() += 1;
        }
    }
    for c in 1..=4u16 {
        assert_eq!(
            cab.pulses(c),
            opened.get(&c).copied().unwrap_or(0),
            "compartment {c}: pulses == opened commands"
        );
    }
    cab.stop().await;
    gw.gw.shutdown().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, max_shrink_iters: 8, ..ProptestConfig::default() })]
    #[test]
    fn a_door_opens_at_most_once_per_command_and_never_after_expiry(ops in proptest::collection::vec(op(), 3..9)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        rt.block_on(run(ops));
    }
}
