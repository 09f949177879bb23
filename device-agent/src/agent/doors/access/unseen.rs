//! Local accesses whose lock fired but whose door was never seen opening: opened and shut
//! again between two polls of the door sensors, or not opened at all. This part of the access
//! state owns them (by compartment) from the confirm deadline (`unlock_confirm_ms`) until the
//! late-open grace (`late_open_grace_ms`) ends.
//!
//! At the deadline, an access whose parcel sensor was read before its lock fired has the
//! sensors read again. A change the access explains (the parcel gone after a pickup or a
//! collection, a parcel there after a deposit) means the door was opened: the door's opening,
//! the Access event with the removal of the credentials it spent, and the door's close with the
//! reading are stored in one write, as if the door had been seen. No change (or no reading):
//! nothing is reported and nothing is spent, so the code works again. A door seen opening
//! before the grace ends is the access's own (late) opening and is reported as such.

use locker_schemas::{AccessAction, CompartmentId, Door, DoorCause, UplinkBody};
use tokio::time::Instant;

use super::LocalAccess;
use crate::agent::ctx::Ctx;
use crate::agent::doors::Doors;
use crate::agent::uplink::Uplink;
use crate::hw::IoRequest;

/// A fired local access whose door was not seen opening.
pub(super) struct Unseen {
    la: LocalAccess,
    /// The parcel read asked at the deadline, until it answers.
    token: Option<u64>,
    /// The end of the late-open grace.
    until: Instant,
}

/// Whether the parcel sensor's change (`before` -> `after`) is the one `action` makes.
fn explained(action: AccessAction, before: Option<bool>, after: Option<bool>) -> bool {
    match action {
        AccessAction::Deposit => before == Some(false) && after == Some(true),
        AccessAction::Pickup | AccessAction::Collect => {
            before == Some(true) && after == Some(false)
        }
    }
}

impl Doors {
    /// A local access's confirm deadline passed with its door not seen opening: it waits for
    /// a late opening until `until`, and the parcel sensors are read again to judge it.
    pub(in crate::agent::doors) fn access_unseen(
        &mut self,
        ctx: &Ctx,
        c: CompartmentId,
        la: LocalAccess,
        until: Instant,
    ) {
        let token = match la.before {
            Some(_) => {
                self.access.next_token += 1;
                let token = self.access.next_token;
                match self.io_tx.try_send(IoRequest::ReadParcels { token }) {
                    Ok(()) => Some(token),
                    Err(_) => {
                        tracing::warn!(cabinet = %ctx.cabinet(), compartment = %c, "local access: door not seen opening, parcel sensors not read (hardware queue full)");
                        None
                    }
                }
            }
            None => None,
        };
        if token.is_none() {
            self.access.unconfirmed += 1;
            tracing::warn!(cabinet = %ctx.cabinet(), compartment = %c, "local access: door did not open");
        }
        self.access.unseen.insert(c, Unseen { la, token, until });
    }

    /// Ends the wait of a local access on `c` (its door opened, or its lock fires again):
    /// the access, if one waited.
    pub(in crate::agent::doors) fn take_unseen(&mut self, c: CompartmentId) -> Option<LocalAccess> {
        self.access.unseen.remove(&c).map(|u| u.la)
    }

    /// Forgets the accesses whose late-open grace ended.
    pub(in crate::agent::doors) fn expire_unseen(&mut self, now: Instant) {
        self.access.unseen.retain(|_, u| u.until > now);
    }

    /// The parcel sensors read for an access whose door was not seen opening (see the module
    /// doc).
    pub(super) fn judge_unseen(
        &mut self,
        ctx: &Ctx,
        up: &mut Uplink,
        token: u64,
        present: &[(CompartmentId, bool)],
    ) {
        let Some((&c, u)) = self
            .access
            .unseen
            .iter_mut()
            .find(|(_, u)| u.token == Some(token))
        else {
            return;
        };
        u.token = None;
        let after = present.iter().find(|(p, _)| *p == c).map(|(_, f)| *f);
        let (action, before) = (u.la.action, u.la.before);
        if !explained(action, before, after) {
            self.access.unconfirmed += 1;
            return tracing::warn!(cabinet = %ctx.cabinet(), compartment = %c, ?action, ?before, ?after, "local access: door not seen opening and the parcel sensor unchanged; nothing reported, the code stays valid");
        }
        let Some(la) = self.take_unseen(c) else {
            return;
        };
        self.access.by_sensor += 1;
        self.late.remove(&c);
        if let Some(d) = self.doors.get_mut(&c) {
            d.cause = DoorCause::LocalAccess;
        }
        tracing::info!(cabinet = %ctx.cabinet(), compartment = %c, ?action, "local access: door opened and shut between two polls (the parcel sensor changed); reported as done");
        let door = |open: bool, parcel: Option<bool>| {
            UplinkBody::Door(Door {
                compartment: c,
                open,
                cause: DoorCause::LocalAccess,
                parcel,
            })
        };
        // one write (the main loop commits what is staged at the end of this step)
        up.stage(ctx, door(true, None), Vec::new());
        self.local_opened(ctx, up, c, la);
        up.stage(ctx, door(false, after), Vec::new());
    }
}

#[cfg(test)]
mod tests {
    use super::explained;
    use locker_schemas::AccessAction::{Collect, Deposit, Pickup};

    #[test]
    fn only_the_change_the_access_makes_counts() {
        assert!(explained(Pickup, Some(true), Some(false)));
        assert!(explained(Collect, Some(true), Some(false)));
        assert!(explained(Deposit, Some(false), Some(true)));
        for (before, after) in [
            (Some(true), Some(true)),
            (Some(false), Some(false)),
            (None, Some(false)),
            (Some(true), None),
            (Some(false), Some(true)),
        ] {
            assert!(!explained(Pickup, before, after), "{before:?} -> {after:?}");
        }
        assert!(!explained(Deposit, Some(true), Some(false)));
        assert!(!explained(Deposit, None, Some(true)));
    }
}
