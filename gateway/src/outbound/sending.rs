//! The outbound actor's sending side: which delivery goes now (round robin over targets,
//! each up to its concurrency, all up to `max_in_flight`), where it goes ([`Route`]: a
//! webhook, a carrier's tracking endpoint, a notification provider), and what its answer does
//! to the queue (delivered, retried later, dead-lettered, a subscription disabled on `410`).

use std::collections::BTreeMap;
use std::time::Duration;

use locker_schemas::{now_millis, Millis};

use super::actor::Outbound;
use super::deliver::{Http, Request, Sent};
use super::model::{DeadLetter, Entry, Target};
use super::notify::{Message, Notifier, SendError};
use super::queue::{AfterFailure, RetryPolicy};
use crate::store;

/// What one request needs besides the entry.
pub(super) enum Route {
    Webhook {
        url: String,
        secrets: Vec<String>,
    },
    Carrier {
        url: String,
        content_type: String,
        headers: BTreeMap<String, String>,
        secret: Option<String>,
    },
    Notify(Notifier),
    /// The target's configuration is gone (a carrier table or a provider removed, or
    /// notifications turned off): nothing is sent, the entry becomes a dead letter.
    Unroutable,
}

/// A finished request.
pub(super) struct Done {
    target: Target,
    seq: u64,
    /// The entry as read from the store (`Ok(None)`: gone, deleted with its subscription).
    entry: Result<Option<Entry>, String>,
    sent: Sent,
}

impl Outbound {
    /// Starts what may go: round robin over targets, each up to its concurrency, all up to
    /// `max_in_flight`.
    pub(super) fn dispatch(&mut self) {
        let now = now_millis();
        let per = self.cfg.concurrency_per_endpoint.max(1);
        let max = self.cfg.max_in_flight.max(1);
        let keys: Vec<Target> = self.targets.keys().cloned().collect();
        loop {
            let mut progress = false;
            for t in &keys {
                if self.running.len() >= max {
                    return;
                }
                let route = match self.route(t) {
                    Some(Ok(r)) => r,
                    Some(Err(())) => continue, // paused (a disabled subscription)
                    // its configuration is gone: what waits is read and dead-lettered whole
                    None => Route::Unroutable,
                };
                let Some(ts) = self.targets.get_mut(t) else {
                    continue;
                };
                let Some(seq) = ts.queue.take(now, per) else {
                    continue;
                };
                if ts.queue.meta(seq).is_some_and(|m| m.attempts > 1) {
                    self.metrics.retried.with_label_values(&[&t.label()]).inc();
                }
                progress = true;
                let (st, http, target) = (self.store.clone(), self.http.clone(), t.clone());
                self.running.spawn(async move {
                    let tt = target.clone();
                    let entry = store::blocking(move || st.entry(&tt, seq))
                        .await
                        .map_err(|e| e.to_string());
                    let sent = match &entry {
                        Ok(Some(e)) => send(&http, &route, e).await,
                        Ok(None) => Sent::Delivered {
                            status: 0,
                            took: Duration::ZERO,
                        },
                        Err(e) => Sent::Retry {
                            reason: format!("outbox read failed: {e}"),
                            retry_after: None,
                            took: Duration::ZERO,
                        },
                    };
                    Done {
                        target,
                        seq,
                        entry,
                        sent,
                    }
                });
            }
            if !progress {
                break;
            }
        }
    }

    /// Where a target's requests go: `Some(Err)` while it is paused, `None` when it no
    /// longer exists.
    fn route(&self, t: &Target) -> Option<Result<Route, ()>> {
        match t {
            Target::Webhook(id) => {
                let s = self.subs.get(id)?;
                if !s.enabled {
                    return Some(Err(()));
                }
                let now = now_millis();
                Some(Ok(Route::Webhook {
                    url: s.url.clone(),
                    secrets: s.signing(now).into_iter().map(str::to_owned).collect(),
                }))
            }
            Target::Carrier(c) => {
                let cfg = self.cfg.carriers.get(c)?;
                Some(Ok(Route::Carrier {
                    url: cfg.url.clone(),
                    content_type: cfg.content_type.clone(),
                    headers: cfg.headers.clone(),
                    secret: cfg.secret.clone(),
                }))
            }
            Target::Notify(p) => {
                let n = self.notifier.as_ref()?;
                if !n.has_provider(p) {
                    return None;
                }
                Some(Ok(Route::Notify(n.clone())))
            }
        }
    }

    /// Applies a finished request.
    pub(super) fn finished(&mut self, d: Done) {
        let now = now_millis();
        let label = d.target.label();
        let policy = self.policy();
        let Some(ts) = self.targets.get_mut(&d.target) else {
            return; // deleted meanwhile
        };
        let entry = match d.entry {
            Ok(Some(e)) => e,
            Ok(None) => {
                // gone from the store (deleted with its subscription)
                ts.queue.finish(d.seq, now);
                return;
            }
            Err(reason) => {
                // the store could not be read: try again later, nothing to rewrite
                self.metrics.storage_errors.inc();
                // never given up for this: the entry is still in the store
                let keep = RetryPolicy {
                    max_age_ms: u64::MAX,
                    ..policy
                };
                ts.queue.fail(d.seq, now, &keep, false, 0, &mut self.rng);
                tracing::warn!(target = %label, reason = %reason, "outbox entry not readable; retrying");
                return;
            }
        };
        match d.sent {
            Sent::Delivered { took, .. } => {
                ts.queue.finish(d.seq, now);
                ts.health.delivered += 1;
                ts.health.last_delivered_at = Some(now);
                self.metrics.delivered.with_label_values(&[&label]).inc();
                self.metrics
                    .request
                    .with_label_values(&[&label])
                    .observe(took.as_secs_f64());
                self.metrics
                    .delay
                    .observe(now.saturating_sub(entry.at) as f64 / 1000.0);
                self.batch.done.push((d.target, d.seq));
            }
            Sent::Retry {
                reason,
                retry_after,
                took,
            } => {
                self.metrics
                    .request
                    .with_label_values(&[&label])
                    .observe(took.as_secs_f64());
                let at_least = retry_after.map(|d| d.as_millis() as u64).unwrap_or(0);
                self.failed(d.target, d.seq, entry, reason, at_least, now);
            }
            Sent::Gone { took } => {
                self.metrics
                    .request
                    .with_label_values(&[&label])
                    .observe(took.as_secs_f64());
                if let Target::Webhook(id) = &d.target {
                    if let Some(s) = self.subs.get_mut(id) {
                        s.enabled = false;
                        s.disabled_reason = Some(
                            "the receiver answered 410 Gone: enable it again when it is back"
                                .into(),
                        );
                        tracing::warn!(subscription = %id, url = %s.url, "webhook receiver answered 410 Gone: subscription disabled");
                        self.batch.subscriptions.push(s.clone());
                    }
                }
                self.failed(d.target, d.seq, entry, "HTTP 410 Gone".into(), 0, now);
            }
            Sent::Refused { reason, took } => {
                self.metrics
                    .request
                    .with_label_values(&[&label])
                    .observe(took.as_secs_f64());
                self.metrics.failed.with_label_values(&[&label]).inc();
                if let Some(ts) = self.targets.get_mut(&d.target) {
                    ts.health.failed_attempts += 1;
                    ts.health.last_error = Some(reason.clone());
                    ts.health.last_error_at = Some(now);
                }
                self.dead(&d.target, d.seq, now, entry, reason);
            }
        }
    }

    /// A failed attempt: retry later, or to the dead letters when too old.
    fn failed(
        &mut self,
        target: Target,
        seq: u64,
        mut entry: Entry,
        reason: String,
        at_least_ms: u64,
        now: Millis,
    ) {
        let label = target.label();
        self.metrics.failed.with_label_values(&[&label]).inc();
        let policy = self.policy();
        let Some(ts) = self.targets.get_mut(&target) else {
            return;
        };
        ts.health.failed_attempts += 1;
        ts.health.last_error = Some(reason.clone());
        ts.health.last_error_at = Some(now);
        match ts
            .queue
            .fail(seq, now, &policy, false, at_least_ms, &mut self.rng)
        {
            AfterFailure::Retry(_) => {
                entry.attempts = ts
                    .queue
                    .meta(seq)
                    .map(|m| m.attempts)
                    .unwrap_or(entry.attempts);
                entry.last_error = Some(reason);
                self.batch.queued.push((target, entry));
            }
            AfterFailure::Dead => self.dead(&target, seq, now, entry, reason),
        }
    }

    fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            base_ms: self.cfg.retry_base_ms,
            max_ms: self.cfg.retry_max_ms,
            max_age_ms: self.cfg.max_age_s.saturating_mul(1000),
        }
    }

    /// Puts a new entry straight into the dead letters (its target's queue is full, or it
    /// cannot be sent at all): kept for replay, never lost.
    pub(super) fn dead_on_arrival(&mut self, target: Target, mut e: Entry, reason: String) {
        let now = now_millis();
        let ts = self.targets.entry(target.clone()).or_default();
        ts.next_seq = ts.next_seq.max(1);
        e.seq = ts.next_seq;
        ts.next_seq += 1;
        ts.health.dead_lettered += 1;
        e.last_error = Some(reason.clone());
        self.metrics
            .dead
            .with_label_values(&[&target.label()])
            .inc();
        self.batch.dead.push((
            target,
            DeadLetter {
                entry: e,
                dead_at: now,
                reason,
            },
        ));
    }

    /// Moves an in-flight delivery, as read from the store, to the dead letters.
    fn dead(&mut self, target: &Target, seq: u64, now: Millis, entry: Entry, reason: String) {
        let Some(ts) = self.targets.get_mut(target) else {
            return;
        };
        ts.queue.finish(seq, now);
        ts.health.dead_lettered += 1;
        self.metrics
            .dead
            .with_label_values(&[&target.label()])
            .inc();
        tracing::warn!(target = %target.label(), seq, reason = %reason, "delivery given up: kept as a dead letter");
        self.batch.dead.push((
            target.clone(),
            DeadLetter {
                entry,
                dead_at: now,
                reason,
            },
        ));
    }
}

/// Sends one entry along its route.
async fn send(http: &Http, route: &Route, e: &Entry) -> Sent {
    match route {
        Route::Unroutable => Sent::Refused {
            reason: "the target is no longer configured".into(),
            took: Duration::ZERO,
        },
        Route::Webhook { url, secrets } => {
            let body = serde_json::to_vec(&e.payload).unwrap_or_default();
            http.send(Request {
                url,
                event_id: &e.event_id,
                body,
                content_type: "application/json",
                secrets: secrets.iter().map(String::as_str).collect(),
                headers: &BTreeMap::new(),
            })
            .await
        }
        Route::Carrier {
            url,
            content_type,
            headers,
            secret,
        } => {
            let body = e
                .payload
                .get("body")
                .and_then(|b| b.as_str())
                .unwrap_or_default()
                .as_bytes()
                .to_vec();
            http.send(Request {
                url,
                event_id: &e.event_id,
                body,
                content_type,
                secrets: secret.iter().map(String::as_str).collect(),
                headers,
            })
            .await
        }
        Route::Notify(n) => {
            let started = std::time::Instant::now();
            let m: Message = match serde_json::from_value(e.payload.clone()) {
                Ok(m) => m,
                Err(err) => {
                    return Sent::Refused {
                        reason: format!("stored message unreadable: {err}"),
                        took: Duration::ZERO,
                    }
                }
            };
            match n.send(&m).await {
                Ok(_) => Sent::Delivered {
                    status: 200,
                    took: started.elapsed(),
                },
                Err(SendError::Retryable {
                    reason,
                    retry_after,
                }) => Sent::Retry {
                    reason,
                    retry_after,
                    took: started.elapsed(),
                },
                Err(SendError::Permanent { reason }) => Sent::Refused {
                    reason,
                    took: started.elapsed(),
                },
            }
        }
    }
}
