//! Properties of the pure engine over random inputs: (1) battery_low's hysteresis under a
//! state of charge oscillating around `below_pct` and through the band: at most one alert
//! per excursion below, raised only after `for_ms` of low readings, never cleared while the
//! value stays <= `clear_above_pct`; (2) under random presence changes, door events, jams,
//! silent commands, acknowledgements, restarts and time, no (cabinet, kind, subject) ever
//! has two active alerts, and every clear follows the raise of the same id, once.

use std::collections::{HashMap, HashSet};

use locker_schemas::{CommandId, CompartmentId, Door, DoorCause, Millis, Outcome, UplinkBody};
use proptest::prelude::*;

use super::super::engine::{Effect, Engine};
use super::super::{AlertKind, DispatchNote};
use super::engine::{engine, up};
use super::harness::{cab, rules_cfg, MIN, T0};
use super::kinds_power::power;

const BELOW: u8 = 15;
const CLEAR: u8 = 30;
const FOR_MS: u64 = 5 * MIN;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn battery_low_hysteresis_holds_under_oscillation(
        steps in proptest::collection::vec(
            // time to the next reading (ticks in between), and the reading: mostly around
            // below_pct and inside the band, sometimes over clear_above_pct
            (0u64..4 * MIN, prop_oneof![
                8 => (BELOW - 3)..(BELOW + 3),
                6 => BELOW..=CLEAR,
                2 => (CLEAR - 2)..(CLEAR + 4),
            ]),
            1..120,
        )
    ) {
        let mut e = engine("", T0);
        let mut now = T0;
        // the model: the start of the current run of low readings, and the alert's state
        let mut soc: Option<u8> = None;
        let mut run: Option<Millis> = None;
        let mut active: Option<String> = None;
        let mut raises = 0usize;
        let mut excursions = 0usize;
        for (dt, reading) in steps {
            // a tick halfway and one at the reading's time
            for t in [now + dt / 2, now + dt] {
                e.tick(t);
                check(&mut e, t, soc, run, &mut active, &mut raises)?;
            }
            now += dt;
            if reading < BELOW {
                if run.is_none() {
                    excursions += 1;
                    run = Some(now);
                }
            } else if reading > CLEAR || active.is_none() {
                // over the band everything ends; in it, only a pending condition does
                run = None;
            }
            soc = Some(reading);
            e.uplinks(&[up(1, power(reading, 0, 5), now)], now);
            check(&mut e, now, soc, run, &mut active, &mut raises)?;
        }
        prop_assert!(raises <= excursions, "{raises} alerts for {excursions} excursions below");
    }
}

/// Checks the effects of one engine call against the model.
fn check(
    e: &mut Engine,
    now: Millis,
    soc: Option<u8>,
    run: Option<Millis>,
    active: &mut Option<String>,
    raises: &mut usize,
) -> Result<(), TestCaseError> {
    for fx in e.take_effects() {
        match fx {
            Effect::Raised(a) if a.kind == AlertKind::BatteryLow => {
                prop_assert!(active.is_none(), "raised while {active:?} is active");
                let Some(start) = run else {
                    return Err(TestCaseError::fail(format!(
                        "raised at {soc:?} with no low run"
                    )));
                };
                prop_assert!(soc.is_some_and(|s| s < BELOW), "raised at {soc:?}");
                prop_assert_eq!(a.started, start);
                prop_assert!(
                    now >= start + FOR_MS,
                    "raised {} ms into the run",
                    now - start
                );
                *active = Some(a.id.clone());
                *raises += 1;
            }
            Effect::Cleared(a) if a.kind == AlertKind::BatteryLow => {
                prop_assert_eq!(active.as_ref(), Some(&a.id));
                prop_assert!(soc.is_some_and(|s| s > CLEAR), "cleared at {soc:?}");
                *active = None;
            }
            _ => {}
        }
    }
    // a run of low readings that lasted for_ms has its alert by the end of this call
    if let Some(start) = run {
        if now >= start + FOR_MS && soc.is_some_and(|s| s < BELOW) {
            prop_assert!(active.is_some(), "low since {start}, not raised at {now}");
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Op {
    Presence(u32, bool),
    Door(u32, u16, bool, bool),
    Jam(u32, u16),
    NoAnswer(u32),
    Ack(usize),
    Advance(u64),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u32..3, any::<bool>()).prop_map(|(k, on)| Op::Presence(k, on)),
        3 => (0u32..3, 1u16..3, any::<bool>(), any::<bool>())
            .prop_map(|(k, c, open, forced)| Op::Door(k, c, open, forced)),
        1 => (0u32..3, 1u16..3).prop_map(|(k, c)| Op::Jam(k, c)),
        1 => (0u32..3).prop_map(Op::NoAnswer),
        1 => (0usize..8).prop_map(Op::Ack),
        4 => (0u64..20 * MIN).prop_map(Op::Advance),
        1 => Just(Op::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn never_two_active_alerts_for_one_condition_and_clears_follow_raises(
        ops in proptest::collection::vec(op(), 1..150)
    ) {
        // short windows so that jams and drops age out within a run
        let toml_text = "[flapping]\ndisconnects = 3\nwindow_ms = 1800000\n\
                         [lock_jammed]\njams = 2\nwindow_ms = 3600000\n\
                         [command_no_outcome]\nclear_after_ms = 3600000\n";
        let mut e = engine(toml_text, T0);
        let mut now = T0;
        let mut raised: HashSet<String> = HashSet::new();
        let mut cleared: HashSet<String> = HashSet::new();
        let mut live: HashMap<(String, AlertKind, String), String> = HashMap::new();
        for op in ops {
            match op {
                Op::Presence(k, on) => e.presence(&cab(k), on, now, now),
                Op::Door(k, c, open, forced) => {
                    let cause = if forced { DoorCause::Unknown } else { DoorCause::LocalAccess };
                    let d = UplinkBody::Door(Door {
                        compartment: CompartmentId(c),
                        open,
                        cause,
                        parcel: (!open).then_some(true),
                    });
                    e.uplinks(&[up(k, d, now)], now);
                }
                Op::Jam(k, c) => e.dispatch(DispatchNote::Outcome {
                    cabinet: cab(k),
                    command: CommandId::generate(),
                    compartment: Some(CompartmentId(c)),
                    outcome: Outcome::Jammed,
                    at: now,
                }, now),
                Op::NoAnswer(k) => e.dispatch(DispatchNote::Outcome {
                    cabinet: cab(k),
                    command: CommandId::generate(),
                    compartment: None,
                    outcome: Outcome::NoAnswer,
                    at: now,
                }, now),
                Op::Ack(i) => {
                    let mut ids: Vec<String> = e.active.keys().cloned().collect();
                    ids.sort();
                    if let Some(id) = ids.get(i % ids.len().max(1)) {
                        prop_assert!(e.ack(id, "ops", None, now).is_some());
                    }
                }
                Op::Advance(ms) => {
                    now += ms;
                    e.tick(now);
                }
                Op::Restart => {
                    // what the store holds: every cabinet's state and the active alerts
                    let cabs = e.cabs.clone();
                    let active = e.active.values().cloned().collect();
                    let _ = e.take_effects();
                    let cfg = rules_cfg(toml_text);
                    e = Engine::new(
                        cfg.compile().expect("compiles"),
                        cfg.max_conditions_per_cabinet,
                        cabs,
                        active,
                        now,
                    );
                }
            }
            for fx in e.take_effects() {
                match fx {
                    Effect::Raised(a) => {
                        let key = (a.cabinet.to_string(), a.kind, a.subject.clone());
                        prop_assert!(
                            !live.contains_key(&key),
                            "{key:?} raised as {} while {:?} is active", a.id, live.get(&key)
                        );
                        prop_assert!(raised.insert(a.id.clone()), "{} raised twice", a.id);
                        live.insert(key, a.id);
                    }
                    Effect::Cleared(a) => {
                        let key = (a.cabinet.to_string(), a.kind, a.subject.clone());
                        prop_assert!(raised.contains(&a.id), "{} cleared, never raised", a.id);
                        prop_assert!(cleared.insert(a.id.clone()), "{} cleared twice", a.id);
                        prop_assert_eq!(live.remove(&key), Some(a.id.clone()));
                    }
                    _ => {}
                }
            }
            // the engine's active set is the model's
            let mut mine: Vec<&String> = live.values().collect();
            let mut its: Vec<&String> = e.active.keys().collect();
            mine.sort();
            its.sort();
            prop_assert_eq!(mine, its);
        }
    }
}
