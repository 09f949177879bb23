//! The outbound actor's answers to the API: subscriptions created, listed, changed, deleted
//! and their secrets rotated, within the caller's scope; dead letters listed and replayed; a
//! ping queued. Subscriptions are scoped like their owner's token: an operator sees every one,
//! a carrier or site manager only the ones it created, and its events never go beyond its scope.

use locker_schemas::now_millis;

use super::actor::Outbound;
use super::model::{self, DeadLetter, Event, Owner, Secret, Subscription, Target};
use super::sign;
use super::{Msg, NewSubscription, OutboundError, SubscriptionPatch, SubscriptionView};
use crate::parcels::{Caller, Scope};
use crate::store;

/// How long a rotated-out secret keeps signing at most (7 days).
const MAX_KEEP_OLD_S: u64 = 7 * 86_400;

fn owner_of(c: &Caller) -> Owner {
    match &c.scope {
        Scope::Operator => Owner::Operator {
            client: c.client.clone(),
        },
        Scope::Carrier { carrier } => Owner::Carrier {
            client: c.client.clone(),
            carrier: carrier.clone(),
        },
        Scope::SiteManager { sites } => Owner::SiteManager {
            client: c.client.clone(),
            sites: sites.iter().cloned().collect(),
        },
    }
}

/// Whether the caller may see and change a subscription.
fn may_manage(c: &Caller, s: &Subscription) -> bool {
    matches!(c.scope, Scope::Operator) || s.owner.client() == c.client
}

impl Outbound {
    pub(super) async fn on_msg(&mut self, m: Msg) {
        match m {
            Msg::Presence {
                cabinet,
                online,
                at,
            } => self.presence(cabinet, online, at),
            Msg::Create(n, c, r) => {
                let v = self.create(n, &c);
                let _ = r.send(self.durable(v).await);
            }
            Msg::List(c, r) => {
                let v = self
                    .subs
                    .values()
                    .filter(|s| may_manage(&c, s))
                    .map(|s| self.view(s, None))
                    .collect();
                let _ = r.send(Ok(v));
            }
            Msg::Get(id, c, r) => {
                let _ = r.send(self.find(&id, &c).map(|s| self.view(s, None)));
            }
            Msg::Update(id, p, c, r) => {
                let v = self.update(&id, p, &c);
                let _ = r.send(self.durable(v).await);
            }
            Msg::Delete(id, c, r) => {
                let v = self.delete(&id, &c);
                let _ = r.send(self.durable(v).await);
            }
            Msg::Rotate(id, keep, c, r) => {
                let v = self.rotate(&id, keep, &c);
                let _ = r.send(self.durable(v).await);
            }
            Msg::Dead(id, after, limit, c, r) => {
                let _ = r.send(self.dead_letters(&id, after, limit, &c).await);
            }
            Msg::Replay(id, seqs, c, r) => {
                let v = self.replay(&id, seqs, &c).await;
                let _ = r.send(self.durable(v).await);
            }
            Msg::Ping(id, c, r) => {
                let v = self.ping(&id, &c);
                let _ = r.send(self.durable(v).await);
            }
            Msg::Targets(r) => {
                let v = self
                    .targets
                    .keys()
                    .map(|t| (t.label(), self.health(t)))
                    .collect();
                let _ = r.send(Ok(v));
            }
        }
    }

    /// A change is answered only once it is on disk (a `201` with its secret never names a
    /// subscription a crash right after forgets); a failed write undoes it in memory too.
    async fn durable<T>(&mut self, r: Result<T, OutboundError>) -> Result<T, OutboundError> {
        let v = r?;
        if self.commit().await {
            Ok(v)
        } else {
            Err(OutboundError::Storage(
                "the outbox could not be written; nothing was changed".into(),
            ))
        }
    }

    fn view(&self, s: &Subscription, secret: Option<String>) -> SubscriptionView {
        SubscriptionView {
            sub: s.into(),
            health: self.health(&Target::Webhook(s.id.clone())),
            secret,
        }
    }

    fn find(&self, id: &str, c: &Caller) -> Result<&Subscription, OutboundError> {
        match self.subs.get(id) {
            Some(s) if may_manage(c, s) => Ok(s),
            // another owner's subscription is not found, as an unknown one
            _ => Err(OutboundError::NotFound(format!("webhook {id}"))),
        }
    }

    /// The target a dead-letter route names: a subscription id (its owner or an operator), or
    /// `carrier:<id>` / `notify:<provider>` (operators).
    fn target_for(&self, label: &str, c: &Caller) -> Result<Target, OutboundError> {
        match Target::parse(label) {
            Some(Target::Webhook(id)) => {
                self.find(&id, c)?;
                Ok(Target::Webhook(id))
            }
            Some(t) if matches!(c.scope, Scope::Operator) && self.targets.contains_key(&t) => Ok(t),
            _ => Err(OutboundError::NotFound(format!("target {label}"))),
        }
    }

    /// Checks a URL, the event patterns and the filters against the owner's scope.
    fn validate(
        &self,
        url: &str,
        events: &[String],
        sites: &[locker_schemas::SiteId],
        carriers: &[locker_schemas::CarrierId],
        owner: &Owner,
    ) -> Result<(), OutboundError> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| OutboundError::Invalid(format!("url: {e}")))?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.cfg.allow_http => {}
            "http" => {
                return Err(OutboundError::Invalid(
                    "url: webhooks go to https:// endpoints (webhooks.allow_http allows http:// for tests and local receivers)".into(),
                ))
            }
            other => {
                return Err(OutboundError::Invalid(format!(
                    "url: scheme {other} is not http(s)"
                )))
            }
        }
        if events.is_empty() {
            return Err(OutboundError::Invalid(
                "events: name at least one event type (or \"*\")".into(),
            ));
        }
        if let Some(bad) = events.iter().find(|p| !model::valid_pattern(p)) {
            return Err(OutboundError::Invalid(format!(
                "events: {bad:?} names no event type; known: {}",
                model::EVENT_TYPES.join(", ")
            )));
        }
        match owner {
            Owner::SiteManager { sites: own, .. } => {
                if let Some(s) = sites.iter().find(|s| !own.contains(s)) {
                    return Err(OutboundError::Forbidden(format!(
                        "sites: {s} is not one of this token's sites"
                    )));
                }
            }
            Owner::Carrier { carrier, .. } => {
                if let Some(c) = carriers.iter().find(|c| *c != carrier) {
                    return Err(OutboundError::Forbidden(format!(
                        "carriers: {c} is not this token's carrier"
                    )));
                }
            }
            Owner::Operator { .. } => {}
        }
        Ok(())
    }

    fn create(
        &mut self,
        n: NewSubscription,
        c: &Caller,
    ) -> Result<SubscriptionView, OutboundError> {
        if self.subs.len() >= self.cfg.max_subscriptions {
            return Err(OutboundError::Invalid(format!(
                "at most {} subscriptions (webhooks.max_subscriptions)",
                self.cfg.max_subscriptions
            )));
        }
        let owner = owner_of(c);
        self.validate(&n.url, &n.events, &n.sites, &n.carriers, &owner)?;
        let secret = match n.secret {
            Some(s) => {
                sign::key_of(&s).map_err(|e| OutboundError::Invalid(format!("secret: {e}")))?;
                s
            }
            None => sign::new_secret(),
        };
        let s = Subscription {
            id: format!("WH-{}", ulid::Ulid::new()),
            url: n.url,
            events: n.events,
            sites: n.sites,
            carriers: n.carriers,
            description: n.description.chars().take(500).collect(),
            owner,
            secrets: vec![Secret {
                secret: secret.clone(),
                expires: None,
            }],
            enabled: true,
            created_at: now_millis(),
            disabled_reason: None,
        };
        tracing::info!(subscription = %s.id, url = %s.url, owner = %c.client, "webhook subscription created");
        self.batch.subscriptions.push(s.clone());
        let view = self.view(&s, Some(secret));
        self.subs.insert(s.id.clone(), s);
        Ok(view)
    }

    fn update(
        &mut self,
        id: &str,
        p: SubscriptionPatch,
        c: &Caller,
    ) -> Result<SubscriptionView, OutboundError> {
        let mut s = self.find(id, c)?.clone();
        if let Some(u) = p.url {
            s.url = u;
        }
        if let Some(e) = p.events {
            s.events = e;
        }
        if let Some(x) = p.sites {
            s.sites = x;
        }
        if let Some(x) = p.carriers {
            s.carriers = x;
        }
        if let Some(d) = p.description {
            s.description = d.chars().take(500).collect();
        }
        if let Some(e) = p.enabled {
            s.enabled = e;
            if e {
                s.disabled_reason = None;
            }
        }
        self.validate(&s.url, &s.events, &s.sites, &s.carriers, &s.owner)?;
        self.batch.subscriptions.push(s.clone());
        let view = self.view(&s, None);
        self.subs.insert(s.id.clone(), s);
        Ok(view)
    }

    fn delete(&mut self, id: &str, c: &Caller) -> Result<(), OutboundError> {
        self.find(id, c)?;
        self.subs.remove(id);
        let t = Target::Webhook(id.to_owned());
        self.targets.remove(&t);
        self.metrics.forget(&t.label());
        self.batch.queued.retain(|(x, _)| x != &t);
        self.batch.removed.push(id.to_owned());
        tracing::info!(subscription = %id, by = %c.client, "webhook subscription deleted");
        Ok(())
    }

    fn rotate(
        &mut self,
        id: &str,
        keep_old_s: u64,
        c: &Caller,
    ) -> Result<SubscriptionView, OutboundError> {
        let mut s = self.find(id, c)?.clone();
        let now = now_millis();
        let keep = keep_old_s.min(MAX_KEEP_OLD_S);
        let secret = sign::new_secret();
        let mut secrets = vec![Secret {
            secret: secret.clone(),
            expires: None,
        }];
        if let Some(cur) = s.secrets.first() {
            if keep > 0 {
                secrets.push(Secret {
                    secret: cur.secret.clone(),
                    expires: Some(now + keep * 1000),
                });
            }
        }
        s.secrets = secrets;
        self.batch.subscriptions.push(s.clone());
        let view = self.view(&s, Some(secret));
        self.subs.insert(s.id.clone(), s);
        Ok(view)
    }

    async fn dead_letters(
        &mut self,
        id: &str,
        after: u64,
        limit: usize,
        c: &Caller,
    ) -> Result<Vec<DeadLetter>, OutboundError> {
        let t = self.target_for(id, c)?;
        let st = self.store.clone();
        let limit = limit.clamp(1, 1_000);
        store::blocking(move || st.dead(&t, after, limit))
            .await
            .map_err(|e| OutboundError::Storage(e.to_string()))
    }

    async fn replay(
        &mut self,
        id: &str,
        seqs: Option<Vec<u64>>,
        c: &Caller,
    ) -> Result<usize, OutboundError> {
        let t = self.target_for(id, c)?;
        let (st, tt) = (self.store.clone(), t.clone());
        let dead = store::blocking(move || st.dead(&tt, 0, 100_000))
            .await
            .map_err(|e| OutboundError::Storage(e.to_string()))?;
        let now = now_millis();
        let mut n = 0;
        for d in dead {
            if seqs.as_ref().is_some_and(|s| !s.contains(&d.entry.seq)) {
                continue;
            }
            // the same batch takes it out of the dead letters and queues it again
            self.batch.undead.push((t.clone(), d.entry.seq));
            let mut e = d.entry;
            e.attempts = 0;
            e.last_error = None;
            e.queued_at = now;
            self.enqueue(t.clone(), e);
            n += 1;
        }
        tracing::info!(subscription = %id, replayed = n, by = %c.client, "dead letters queued again");
        Ok(n)
    }

    fn ping(&mut self, id: &str, c: &Caller) -> Result<String, OutboundError> {
        self.find(id, c)?;
        let now = now_millis();
        let e = Event {
            id: format!("evt_ping_{}", ulid::Ulid::new()),
            kind: "webhook.ping".into(),
            at: now,
            timestamp: super::events::utc(now),
            cabinet: None,
            site: None,
            carrier: None,
            data: serde_json::json!({"subscription": id}),
        };
        let payload = serde_json::to_value(&e).unwrap_or_default();
        let entry = self.entry(e.id.clone(), e.kind, "ping".into(), now, payload);
        self.enqueue(Target::Webhook(id.to_owned()), entry);
        Ok(e.id)
    }
}
