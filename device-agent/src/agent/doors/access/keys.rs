//! The keys a signed-in courier presses (`bigger`, a size, `collect`, `logout`): which spare or
//! collection compartment each opens, chosen from the cached Spare and Collect credentials of
//! the courier's carrier (spares with no carrier are shared) and the configured sizes.

use locker_schemas::{AccessAction, CompartmentId, CredKind, ScanSource, Size};

use super::{session_ms, Candidate, LocalAccess, Reply};
use crate::agent::ctx::Ctx;
use crate::agent::doors::Doors;
use crate::agent::types::{Access, Key, Refusal};

impl Doors {
    /// A key pressed at the cabinet; the answer is queued like a scan's.
    pub fn on_key(&mut self, ctx: &Ctx, key: Key, reply: Reply) {
        let now = ctx.now_millis();
        let judge = ctx.clock_sane().then_some(now);
        let ttl = session_ms(ctx);
        if key == Key::Logout {
            let access = match self.access.session.take() {
                Some(_) => Access::SignedOut,
                None => Access::Refused(Refusal::NoCourier),
            };
            return self.access.answer(reply, None, access);
        }
        let Some(s) = self.access.courier(now) else {
            return self
                .access
                .answer(reply, None, Access::Refused(Refusal::NoCourier));
        };
        s.touch(now, ttl);
        let s = s.clone();
        match key {
            Key::Bigger => {
                let Some((parcel, source)) = s.parcel.clone() else {
                    return self
                        .access
                        .answer(reply, None, Access::Refused(Refusal::NoParcel));
                };
                let reserved = parcel.compartment.and_then(|c| self.size_of(c));
                let mut cands =
                    self.spares(&s.carrier, judge, |size| reserved.is_none_or(|r| size > r));
                for k in &mut cands {
                    k.spent.push(parcel.clone());
                }
                let la = LocalAccess {
                    action: AccessAction::Deposit,
                    reference: parcel.reference.clone(),
                    source,
                    actor: s.courier.clone(),
                    spent: Vec::new(),
                    before: None,
                };
                self.read_then_fire(cands, la, reply, None, Refusal::NoSpare);
            }
            Key::Size(want) => {
                let Some((barcode, source)) = s.unknown.clone() else {
                    return self
                        .access
                        .answer(reply, None, Access::Refused(Refusal::NoParcel));
                };
                let cands = self.spares(&s.carrier, judge, |size| size == want);
                let la = LocalAccess {
                    action: AccessAction::Deposit,
                    reference: format!("tracking:{barcode}"),
                    source,
                    actor: s.courier.clone(),
                    spent: Vec::new(),
                    before: None,
                };
                self.read_then_fire(cands, la, reply, None, Refusal::NoSpare);
            }
            Key::Collect => {
                let next = self
                    .access
                    .creds
                    .of_kind(CredKind::Collect, &s.carrier, judge)
                    .into_iter()
                    .filter(|c| c.carrier == s.carrier)
                    .find_map(|cred| {
                        let c = cred.compartment?;
                        (self.doors.get(&c).is_some_and(|d| d.open != Some(true))
                            && !self.pending.contains_key(&c))
                        .then(|| (c, cred.clone()))
                    });
                let Some((c, cred)) = next else {
                    return self.access.answer(
                        reply,
                        None,
                        Access::Refused(Refusal::NothingToCollect),
                    );
                };
                let la = LocalAccess {
                    action: AccessAction::Collect,
                    reference: cred.reference.clone(),
                    source: ScanSource::Keypad,
                    actor: s.courier.clone(),
                    spent: vec![cred.clone()],
                    before: None,
                };
                let cand = vec![Candidate {
                    compartment: c,
                    spent: vec![cred],
                }];
                self.read_then_fire(cand, la, reply, None, Refusal::Busy);
            }
            Key::Logout => {}
        }
    }

    /// The usable Spare compartments of `carrier` (or shared) whose size passes `size_ok`,
    /// smallest first, then by number.
    fn spares(
        &self,
        carrier: &str,
        judge: Option<u64>,
        size_ok: impl Fn(Size) -> bool,
    ) -> Vec<Candidate> {
        let mut v: Vec<(Size, CompartmentId, Candidate)> = self
            .access
            .creds
            .of_kind(CredKind::Spare, carrier, judge)
            .into_iter()
            .filter_map(|cred| {
                let c = cred.compartment?;
                let size = self.size_of(c)?;
                (size_ok(size) && self.usable(c)).then(|| {
                    let k = Candidate {
                        compartment: c,
                        spent: vec![cred.clone()],
                    };
                    (size, c, k)
                })
            })
            .collect();
        v.sort_by_key(|(size, c, _)| (*size, *c));
        v.into_iter().map(|(_, _, k)| k).collect()
    }

    /// The configured size of a compartment.
    fn size_of(&self, c: CompartmentId) -> Option<Size> {
        self.compartments.iter().find(|i| i.id == c).map(|i| i.size)
    }
}
