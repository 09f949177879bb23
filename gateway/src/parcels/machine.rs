//! The order state machine, as a pure function: which step is allowed from which state, what
//! state and exception it leads to. API steps are refused when they make no sense (with a
//! reason a person understands); what happened at the cabinet is never refused: the physical
//! world wins, a late or conflicting report becomes an exception instead of being lost, and a
//! report that was already applied changes nothing (so each is applied exactly once).

use locker_schemas::Millis;

use super::model::{Exception, OrderKind, OrderState};

/// Something that happens to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A compartment was held for it (created -> reserved).
    Reserve,
    /// Its held compartment was given up (the reservation lapsed, or the compartment failed).
    Release,
    /// The cabinet reports the parcel put in (a courier, a customer's drop-off, a command).
    Deposited,
    /// The recipient's code was issued and the notice queued.
    Ready,
    /// The cabinet reports the parcel taken out by the recipient.
    PickedUp,
    /// The cabinet reports the parcel taken away by the carrier.
    Collected,
    /// The pickup window ended.
    Expire,
    /// The carrier (or an operator) wants the parcel back.
    RequestReturn,
    /// Cancel at the API.
    Cancel,
    /// A new pickup deadline (extend).
    Extend,
}

impl Step {
    /// Whether the step reports something that physically happened at the cabinet.
    pub fn is_physical(self) -> bool {
        matches!(self, Step::Deposited | Step::PickedUp | Step::Collected)
    }
}

/// What a step leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new state (possibly the same state, for an extension), with an exception if the
    /// step conflicted with what the API had decided.
    Next(OrderState, Option<Exception>),
    /// Already applied (a replayed or duplicate report): nothing changes.
    Same,
}

/// Why an API step is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the order is {state}; {what} needs it to be {needs}")]
pub struct Refusal {
    pub state: &'static str,
    pub what: &'static str,
    pub needs: &'static str,
}

fn refuse(state: OrderState, what: &'static str, needs: &'static str) -> Result<Outcome, Refusal> {
    Err(Refusal {
        state: state.as_str(),
        what,
        needs,
    })
}

/// The transition of `state` (of an order of `kind`) under `step`.
pub fn next(kind: OrderKind, state: OrderState, step: Step) -> Result<Outcome, Refusal> {
    use OrderState::*;
    let to = |s| Ok(Outcome::Next(s, None));
    let ex = |s, e| Ok(Outcome::Next(s, Some(e)));
    match step {
        Step::Reserve => match state {
            Created => to(Reserved),
            _ => refuse(state, "a reservation", "created"),
        },
        Step::Release => match state {
            Reserved => to(Created),
            _ => refuse(state, "releasing the compartment", "reserved"),
        },
        Step::Deposited => match state {
            Created | Reserved => to(Deposited),
            Cancelled => match kind {
                // a cancelled delivery put in anyway: the carrier takes it back
                OrderKind::Delivery => ex(ReturnRequested, Exception::DepositedAfterCancel),
                OrderKind::Return => ex(Deposited, Exception::DepositedAfterCancel),
            },
            Deposited | Ready | PickedUp | Expired | ReturnRequested | Returned => {
                Ok(Outcome::Same)
            }
        },
        Step::Ready => match (kind, state) {
            (OrderKind::Delivery, Deposited) => to(Ready),
            _ => refuse(state, "issuing the pickup code", "deposited"),
        },
        Step::PickedUp => match state {
            Ready | Expired | Deposited => to(PickedUp),
            ReturnRequested | Cancelled => ex(PickedUp, Exception::PickedUpAfterCancel),
            // the carrier took it first; the report is kept in the history only
            PickedUp | Returned => Ok(Outcome::Same),
            Created | Reserved => ex(PickedUp, Exception::PickupWithoutParcel),
        },
        Step::Collected => match (kind, state) {
            (_, Expired | ReturnRequested) => to(Returned),
            (OrderKind::Return, Deposited) => to(Returned),
            (_, Returned | PickedUp) => Ok(Outcome::Same),
            (_, Ready | Deposited) => to(Returned),
            (_, Created | Reserved | Cancelled) => ex(Returned, Exception::PickupWithoutParcel),
        },
        Step::Expire => match state {
            Ready => to(Expired),
            _ => refuse(state, "expiry", "ready"),
        },
        Step::RequestReturn => match state {
            Deposited | Ready | Expired => to(ReturnRequested),
            _ => refuse(state, "a return request", "deposited, ready or expired"),
        },
        Step::Cancel => match state {
            Created | Reserved => to(Cancelled),
            // a parcel is inside: cancelling it means the carrier takes it back
            Deposited | Ready => to(ReturnRequested),
            _ => refuse(state, "cancelling", "created, reserved, deposited or ready"),
        },
        Step::Extend => match state {
            Ready => to(Ready),
            Expired => to(Ready),
            _ => refuse(state, "extending the pickup window", "ready or expired"),
        },
    }
}

/// Whether an order in `state` holds its compartment (reserved or with a parcel inside).
pub fn holds_compartment(state: OrderState) -> bool {
    state == OrderState::Reserved || state.parcel_inside()
}

/// The pickup deadline `window_ms` after `from`.
pub fn deadline(from: Millis, window_ms: Millis) -> Millis {
    from.saturating_add(window_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STEPS: [Step; 10] = [
        Step::Reserve,
        Step::Release,
        Step::Deposited,
        Step::Ready,
        Step::PickedUp,
        Step::Collected,
        Step::Expire,
        Step::RequestReturn,
        Step::Cancel,
        Step::Extend,
    ];

    #[test]
    fn the_happy_paths() {
        use OrderState::*;
        let k = OrderKind::Delivery;
        let mut s = Created;
        for (step, want) in [
            (Step::Reserve, Reserved),
            (Step::Deposited, Deposited),
            (Step::Ready, Ready),
            (Step::PickedUp, PickedUp),
        ] {
            assert_eq!(next(k, s, step), Ok(Outcome::Next(want, None)));
            s = want;
        }
        let mut s = Ready;
        for (step, want) in [
            (Step::Expire, Expired),
            (Step::RequestReturn, ReturnRequested),
            (Step::Collected, Returned),
        ] {
            assert_eq!(next(k, s, step), Ok(Outcome::Next(want, None)));
            s = want;
        }
        // a return: reserved for the drop-off, deposited by the customer, collected
        let r = OrderKind::Return;
        assert_eq!(
            next(r, Deposited, Step::Collected),
            Ok(Outcome::Next(Returned, None))
        );
        assert!(next(r, Deposited, Step::Ready).is_err());
    }

    #[test]
    fn offline_reports_against_api_decisions_end_in_an_exception_not_a_loss() {
        use OrderState::*;
        let k = OrderKind::Delivery;
        // cancelled at the API (parcel inside -> return requested), picked up offline
        assert_eq!(
            next(k, Ready, Step::Cancel),
            Ok(Outcome::Next(ReturnRequested, None))
        );
        assert_eq!(
            next(k, ReturnRequested, Step::PickedUp),
            Ok(Outcome::Next(
                PickedUp,
                Some(Exception::PickedUpAfterCancel)
            ))
        );
        // cancelled before the deposit, deposited offline
        assert_eq!(
            next(k, Cancelled, Step::Deposited),
            Ok(Outcome::Next(
                ReturnRequested,
                Some(Exception::DepositedAfterCancel)
            ))
        );
        let e = next(k, PickedUp, Step::Cancel).expect_err("refused");
        assert_eq!(e.to_string(), "the order is picked_up; cancelling needs it to be created, reserved, deposited or ready");
    }

    proptest! {
        /// Physical reports are never refused, and a report applied twice changes nothing
        /// the second time (exactly once, whatever the order of API steps around it).
        #[test]
        fn physical_reports_are_never_refused_and_are_idempotent(
            steps in proptest::collection::vec(0usize..10, 0..40),
            ret in any::<bool>(),
        ) {
            let kind = if ret { OrderKind::Return } else { OrderKind::Delivery };
            let mut s = OrderState::Created;
            for i in steps {
                let step = STEPS[i];
                match next(kind, s, step) {
                    Ok(Outcome::Next(n, _)) => {
                        if step.is_physical() {
                            prop_assert_eq!(next(kind, n, step), Ok(Outcome::Same), "{:?} twice from {:?}", step, s);
                        }
                        s = n;
                    }
                    Ok(Outcome::Same) => prop_assert!(step.is_physical()),
                    Err(_) => prop_assert!(!step.is_physical(), "{:?} refused in {:?}", step, s),
                }
                // final states only move on physical reports that were already applied
                if s.is_final() {
                    for st in STEPS.iter().filter(|s| !s.is_physical()) {
                        prop_assert!(next(kind, s, *st).is_err());
                    }
                }
            }
        }
    }
}
