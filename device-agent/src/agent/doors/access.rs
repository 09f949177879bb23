//! Local access (invariant 7), a part of the doors: it owns the credential cache, the deposits
//! waiting for a parcel-sensor read (by token) and the scan counters. A scan or keypad entry
//! becomes a Scan event, then, if a cached credential matches, a pickup (the credential's
//! compartment is fired, and the credential is spent once the door opens) or a deposit (the
//! smallest empty closed compartment is fired).

use std::collections::HashMap;

use locker_schemas::UplinkBody;
use locker_schemas::{AccessAction, CompartmentId, CredKind, Credentials, Scan, ScanSource};

use super::{Cause, Doors};
use crate::agent::ctx::Ctx;
use crate::agent::types::{Access as ScanAccess, Counters, ScanReply};
use crate::agent::uplink::Uplink;
use crate::creds::{secret_hash, CredCache};
use crate::hw::IoRequest;
use crate::storage::{Durability, Write};

/// A local pickup or deposit in progress.
#[derive(Debug, Clone)]
pub(crate) struct LocalAccess {
    pub action: AccessAction,
    pub reference: String,
    pub source: ScanSource,
    pub hash: Vec<u8>,
}

/// The credential cache and local accesses in progress.
pub(super) struct LocalState {
    creds: CredCache,
    deposits: HashMap<u64, LocalAccess>,
    next_token: u64,
    scans: u64,
    local_accesses: u64,
}

impl LocalState {
    pub fn new(creds: CredCache) -> Self {
        Self {
            creds,
            deposits: HashMap::new(),
            next_token: 0,
            scans: 0,
            local_accesses: 0,
        }
    }

    pub fn counted_access(&mut self) {
        self.local_accesses += 1;
    }

    pub fn fill(&self, c: &mut Counters) {
        c.scans = self.scans;
        c.local_accesses = self.local_accesses;
    }

    /// A pickup's door opened: its credential is spent.
    pub async fn picked_up(&mut self, up: &mut Uplink, la: &LocalAccess) {
        if self.creds.remove(&la.hash) {
            self.persist_creds(up).await;
        }
    }

    async fn persist_creds(&mut self, up: &mut Uplink) {
        let Some(set) = self.creds.set().cloned() else {
            return;
        };
        let w: Write = match crate::storage::creds_write(&set) {
            Ok(w) => w,
            Err(e) => return tracing::error!(error = %e, "credentials not stored"),
        };
        if let Err(e) = up
            .store()
            .with_tree(Durability::Group, move |t| crate::storage::write(t, &[w]))
            .await
        {
            up.storage_error();
            tracing::error!(error = %e, "credentials not stored");
        }
    }
}

impl Doors {
    /// The version of the cached credential set.
    pub fn creds_version(&self) -> u64 {
        self.access.creds.version()
    }

    /// A credential set from the gateway: stored (flushed), then it replaces the cache.
    pub async fn on_credentials(&mut self, ctx: &Ctx, up: &mut Uplink, c: Credentials) {
        let creds = &mut self.access.creds;
        if c.version < creds.version() {
            tracing::warn!(
                held = creds.version(),
                got = c.version,
                "older credential set received; replacing anyway (the gateway is the authority)"
            );
        }
        let w = match crate::storage::creds_write(&c) {
            Ok(w) => w,
            Err(e) => return tracing::error!(error = %e, "credentials not stored"),
        };
        match up
            .store()
            .with_tree(Durability::Flush, move |t| crate::storage::write(t, &[w]))
            .await
        {
            Ok(()) => {
                tracing::info!(cabinet = %ctx.cabinet(), version = c.version, entries = c.entries.len(), "credential cache replaced");
                creds.replace(c);
            }
            Err(e) => {
                up.storage_error();
                tracing::error!(error = %e, "credentials not stored");
            }
        }
    }

    /// A scan or keypad entry: a Scan event, then local access if a cached credential matches.
    pub async fn on_scan(
        &mut self,
        ctx: &Ctx,
        up: &mut Uplink,
        source: ScanSource,
        value: String,
    ) -> Result<ScanReply, String> {
        self.access.scans += 1;
        let hash = secret_hash(&value, ctx.cabinet());
        let seq = up
            .emit(ctx, UplinkBody::Scan(Scan { source, value }), Vec::new())
            .await;
        let now = ctx.clock_sane().then(|| ctx.now_millis());
        let Some(cred) = self.access.creds.find(&hash, now).cloned() else {
            return Ok(ScanReply {
                seq,
                access: ScanAccess::None,
            });
        };
        let la = LocalAccess {
            action: match cred.kind {
                CredKind::Pickup => AccessAction::Pickup,
                CredKind::Deposit => AccessAction::Deposit,
                // not handled by this agent yet: no access
                _ => {
                    return Ok(ScanReply {
                        seq,
                        access: ScanAccess::None,
                    })
                }
            },
            reference: cred.reference.clone(),
            source,
            hash: hash.to_vec(),
        };
        let access = match (cred.kind, cred.compartment) {
            (CredKind::Pickup, Some(c)) => {
                if self.fire_local(ctx, c, la) {
                    ScanAccess::Pickup(c)
                } else {
                    ScanAccess::None
                }
            }
            (CredKind::Pickup, None) => ScanAccess::None,
            (_, _) => {
                // a deposit (the other kinds returned above)
                self.access.next_token += 1;
                let token = self.access.next_token;
                match self.io_tx.try_send(IoRequest::ReadParcels { token }) {
                    Ok(()) => {
                        self.access.deposits.insert(token, la);
                        ScanAccess::Deposit
                    }
                    Err(_) => ScanAccess::None,
                }
            }
        };
        Ok(ScanReply { seq, access })
    }

    /// Fires a compartment's lock for a local access; false if it cannot be fired now.
    fn fire_local(&mut self, ctx: &Ctx, c: CompartmentId, la: LocalAccess) -> bool {
        let closed = self.doors.get(&c).is_some_and(|d| d.open != Some(true));
        if !closed || self.pending.contains_key(&c) {
            tracing::info!(cabinet = %ctx.cabinet(), compartment = %c, "local access: compartment open or busy");
            return false;
        }
        self.fire(c, Cause::Local(la)).is_ok()
    }

    /// The parcel sensors were read for a deposit: fire the smallest empty closed compartment.
    pub(super) fn deposit_with(
        &mut self,
        ctx: &Ctx,
        token: u64,
        present: Vec<(CompartmentId, bool)>,
    ) {
        let Some(la) = self.access.deposits.remove(&token) else {
            return;
        };
        let size_of =
            |c: CompartmentId| self.compartments.iter().find(|i| i.id == c).map(|i| i.size);
        let choice = present
            .iter()
            .filter(|(c, parcel)| {
                !parcel
                    && self.doors.get(c).is_some_and(|d| d.open == Some(false))
                    && !self.pending.contains_key(c)
            })
            .map(|(c, _)| (size_of(*c), *c))
            .min()
            .map(|(_, c)| c);
        match choice {
            Some(c) => {
                if !self.fire_local(ctx, c, la) {
                    tracing::warn!(cabinet = %ctx.cabinet(), "deposit: lock could not be fired");
                }
            }
            None => tracing::warn!(cabinet = %ctx.cabinet(), "deposit: no empty compartment"),
        }
    }
}
