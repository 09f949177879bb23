//! The uplink part of the agent: it owns the sled outbox (and through it the cabinet's storage
//! tree), the go-back-N window, a small read-ahead of stored events, the MQTT client with its
//! event-loop task and event receiver, the "request queue full" back-off, and the set of active
//! alarms (raised and cleared as durable Alarm events).
//!
//! Storing events, publishing them in seq order within the window, applying the gateway's acks
//! and raising alarms all go through [`Uplink`]'s methods; the other parts get it lent as
//! `&mut Uplink` to emit.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use locker_schemas::{Alarm, Filter, Millis, Topic, UplinkBody};
use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ctx::Ctx;
use super::types::{AgentError, Counters};
use crate::outbox::{nearly_full_mark, Appended, Outbox};
use crate::session::{self, MqttEvent, Window};
use crate::storage::{AlarmKey, StoredEvent, Write};

/// The outbox, the window, the MQTT session and the active alarms.
pub(super) struct Uplink {
    outbox: Outbox,
    window: Window,
    /// A contiguous run of stored events (fresh ones, or a read-ahead of a backlog), so events
    /// are published without a storage read each; at most two windows long.
    recent: VecDeque<StoredEvent>,
    mqtt: Option<AsyncClient>,
    mqtt_task: Option<JoinHandle<()>>,
    mqtt_rx: Option<mpsc::Receiver<MqttEvent>>,
    publish_blocked: Option<Instant>,
    /// Events staged to be stored with the next emit (one atomic write, one flush), or at the
    /// end of the main loop's step at the latest.
    staged: Vec<(Millis, UplinkBody, Vec<Write>)>,
    alarms: HashMap<AlarmKey, String>,
    rewinds: u64,
    published: u64,
    connects: u64,
    storage_errors: u64,
}

impl Uplink {
    /// Takes over the opened outbox and the stored alarms, and starts the MQTT session (if
    /// enabled).
    pub async fn start(
        ctx: &Ctx,
        outbox: Outbox,
        alarms: HashMap<AlarmKey, String>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, AgentError> {
        let cfg = ctx.cfg();
        let window = Window::new(
            outbox.acked(),
            outbox.last_seq(),
            cfg.mqtt.window,
            Duration::from_millis(cfg.mqtt.ack_timeout_ms),
            Instant::now(),
        );
        let (mqtt, mqtt_task, mqtt_rx) = if cfg.mqtt.enabled {
            let tls = match (tls, cfg.mqtt.tls) {
                (Some(t), true) => Some(t),
                (None, true) => {
                    let m = cfg.mqtt.clone();
                    Some(
                        tokio::task::spawn_blocking(move || {
                            session::client_config_from_files(
                                &m.ca_cert,
                                &m.client_cert,
                                &m.client_key,
                            )
                        })
                        .await
                        .map_err(|e| AgentError::Refused(format!("TLS loader: {e}")))??,
                    )
                }
                (_, false) => None,
            };
            let opts = session::mqtt::options(&cfg.mqtt, ctx.cabinet(), tls);
            let (ev_tx, ev_rx) = mpsc::channel(64);
            let (client, task) = session::mqtt::spawn(opts, &cfg.mqtt, ev_tx);
            (Some(client), Some(task), Some(ev_rx))
        } else {
            (None, None, None)
        };
        Ok(Self {
            outbox,
            window,
            recent: VecDeque::new(),
            mqtt,
            mqtt_task,
            mqtt_rx,
            publish_blocked: None,
            staged: Vec::new(),
            alarms,
            rewinds: 0,
            published: 0,
            connects: 0,
            storage_errors: 0,
        })
    }

    /// The outbox, for the parts' own storage reads and writes in the cabinet's tree.
    pub fn store(&self) -> &Outbox {
        &self.outbox
    }

    /// Counts a storage error of another part's write through [`Uplink::store`].
    pub fn storage_error(&mut self) {
        self.storage_errors += 1;
    }

    /// The next MQTT session event; never resolves while there is no session.
    pub async fn recv(&mut self) -> Option<MqttEvent> {
        match &mut self.mqtt_rx {
            Some(r) => r.recv().await,
            None => std::future::pending().await,
        }
    }

    /// The MQTT session task ended: no more events from it.
    pub fn session_ended(&mut self) {
        self.mqtt_rx = None;
        self.window.on_disconnect();
    }

    /// Connected: subscribe to the cabinet's downlinks and open the window.
    pub fn on_connected(&mut self, ctx: &Ctx) {
        self.connects += 1;
        if let Some(c) = &self.mqtt {
            let f = Filter::cabinet_downlinks(ctx.cabinet());
            if let Err(e) = c.try_subscribe(f.as_str(), QoS::AtLeastOnce) {
                tracing::error!(error = %e, "could not queue the subscription");
            }
        }
        self.window.on_connect(Instant::now());
        self.publish_blocked = None;
    }

    pub fn on_disconnected(&mut self) {
        self.window.on_disconnect();
    }

    /// Acknowledges a received downlink to the broker.
    pub fn ack_delivery(&self, p: &Publish) {
        if let Some(c) = &self.mqtt {
            let _ = c.try_ack(p);
        }
    }

    /// The earliest of the window's ack deadline and the publish back-off, if before `t`.
    pub fn next_wakeup(&self, mut t: Instant) -> Instant {
        if let Some(d) = self.window.deadline() {
            t = t.min(d);
        }
        if let Some(b) = self.publish_blocked {
            t = t.min(b);
        }
        t
    }

    /// Timers: resend after an ack timeout, end the publish back-off.
    pub fn on_tick(&mut self, ctx: &Ctx, now: Instant) {
        if self.window.on_tick(now) {
            self.rewinds += 1;
            tracing::debug!(cabinet = %ctx.cabinet(), from = self.window.next_send(), "no ack progress: resending from the first unacknowledged event");
        }
        if self.publish_blocked.is_some_and(|b| b <= now) {
            self.publish_blocked = None;
        }
    }

    pub async fn on_ack(&mut self, seq: u64) {
        match self.outbox.ack(seq).await {
            Ok(true) => {
                self.window.on_ack(seq, Instant::now());
                while self.recent.front().is_some_and(|e| e.seq <= seq) {
                    self.recent.pop_front();
                }
            }
            // Counted by the outbox (see `fill`).
            Ok(false) => {}
            Err(e) => {
                self.storage_errors += 1;
                tracing::error!(error = %e, "ack not applied");
            }
        }
    }

    /// Stores an event (and its side writes), together with the events staged before it, in
    /// one write, and publishes what the window allows; returns its seq if stored. When it
    /// returns, the event is as durable as its kind asks (flushed for critical events).
    pub async fn emit(&mut self, ctx: &Ctx, body: UplinkBody, extra: Vec<Write>) -> Option<u64> {
        self.stage(ctx, body, extra);
        self.commit(ctx).await
    }

    /// Stages an event to be stored with the next [`Uplink::emit`] or [`Uplink::commit`] (the
    /// main loop commits at the end of every step): a door opening then shares the flush of
    /// the Result that follows it. Nothing is published before it is stored.
    pub fn stage(&mut self, ctx: &Ctx, body: UplinkBody, extra: Vec<Write>) {
        self.staged.push((ctx.now_millis(), body, extra));
    }

    /// Stores the staged events in one write and publishes what the window allows; returns
    /// the seq of the last one if it was stored.
    pub async fn commit(&mut self, ctx: &Ctx) -> Option<u64> {
        if self.staged.is_empty() {
            return None;
        }
        let items = std::mem::take(&mut self.staged);
        match self.outbox.append_many(items).await {
            Ok(appended) => {
                let mut last = None;
                for a in appended {
                    // Shed and dropped events are counted by the outbox (see `fill`).
                    last = match a {
                        Appended::Stored(ev) => {
                            let seq = ev.seq;
                            self.window.on_stored(seq);
                            if self.recent.back().is_none_or(|b| b.seq + 1 == seq) {
                                self.recent.push_back(ev);
                            }
                            Some(seq)
                        }
                        Appended::Shed | Appended::Dropped => None,
                    };
                }
                while self.recent.len() > 2 * usize::from(ctx.cfg().mqtt.window) {
                    self.recent.pop_front();
                }
                self.pump(ctx).await;
                last
            }
            Err(e) => {
                self.storage_errors += 1;
                tracing::error!(cabinet = %ctx.cabinet(), error = %e, "event not stored");
                None
            }
        }
    }

    /// Publishes what the window allows.
    pub async fn pump(&mut self, ctx: &Ctx) {
        if self.publish_blocked.is_some() {
            return;
        }
        let Some(client) = self.mqtt.clone() else {
            return;
        };
        while let Some(range) = self.window.to_send() {
            let (from, to) = (*range.start(), *range.end());
            let n = (to - from + 1) as usize;
            let cached = self.recent.front().is_some_and(|f| {
                f.seq <= from && from - f.seq + (n as u64) <= self.recent.len() as u64
            });
            if !cached {
                // Read ahead a whole window of the backlog at once.
                let ahead = n.max(usize::from(ctx.cfg().mqtt.window));
                match self.outbox.read(from, ahead).await {
                    Ok(v) => self.recent = v.into(),
                    Err(e) => {
                        self.storage_errors += 1;
                        tracing::error!(error = %e, "outbox unreadable");
                        return;
                    }
                }
            }
            let start = (from - self.recent.front().map_or(from, |f| f.seq)) as usize;
            let events: Vec<StoredEvent> =
                self.recent.iter().skip(start).take(n).cloned().collect();
            if events.first().map(|e| e.seq) != Some(from) {
                tracing::error!(cabinet = %ctx.cabinet(), from, "outbox does not hold the next event to send");
                return;
            }
            for ev in events {
                let topic = Topic::Up(ctx.cabinet().clone(), ev.kind).to_string();
                match client.try_publish(topic, QoS::AtLeastOnce, false, ev.payload) {
                    Ok(()) => {
                        self.window.mark_sent(ev.seq, Instant::now());
                        self.published += 1;
                    }
                    Err(_) => {
                        // The request queue is full: try again shortly.
                        self.publish_blocked = Some(Instant::now() + Duration::from_millis(20));
                        return;
                    }
                }
            }
        }
    }

    /// Whether an alarm is active.
    pub fn alarm_active(&self, key: &AlarmKey) -> bool {
        self.alarms.contains_key(key)
    }

    /// Raises or clears an alarm (once per key).
    pub async fn set_alarm(&mut self, ctx: &Ctx, key: AlarmKey, active: bool, detail: String) {
        if self.alarms.contains_key(&key) == active {
            return;
        }
        let k = crate::storage::alarm_key(&key);
        let w = if active {
            Write::Put(k, detail.clone().into_bytes())
        } else {
            Write::Del(k)
        };
        let body = UplinkBody::Alarm(Alarm {
            kind: key.kind,
            active,
            compartment: key.compartment,
            board: key.board,
            detail: detail.clone(),
        });
        if active {
            tracing::warn!(cabinet = %ctx.cabinet(), kind = ?key.kind, compartment = ?key.compartment, board = ?key.board, %detail, "alarm raised");
            self.alarms.insert(key, detail);
        } else {
            tracing::info!(cabinet = %ctx.cabinet(), kind = ?key.kind, compartment = ?key.compartment, board = ?key.board, "alarm cleared");
            self.alarms.remove(&key);
        }
        self.emit(ctx, body, vec![w]).await;
    }

    /// After every change: what is staged is stored, the OutboxNearlyFull alarm (with
    /// hysteresis), then publish.
    pub async fn after_change(&mut self, ctx: &Ctx) {
        self.commit(ctx).await;
        let depth = self.outbox.depth();
        let mark = nearly_full_mark(self.outbox.limits());
        let key = AlarmKey {
            kind: locker_schemas::AlarmKind::OutboxNearlyFull,
            compartment: None,
            board: None,
        };
        if depth >= mark {
            let detail = format!(
                "outbox holds {depth} events (limit {})",
                self.outbox.limits().max_events
            );
            self.set_alarm(ctx, key, true, detail).await;
        } else if depth < mark / 2 {
            self.set_alarm(ctx, key, false, format!("outbox holds {depth} events"))
                .await;
        }
        self.pump(ctx).await;
    }

    /// Active alarms, in a stable order.
    pub fn alarms(&self) -> Vec<Alarm> {
        let mut alarms: Vec<Alarm> = self
            .alarms
            .iter()
            .map(|(k, d)| Alarm {
                kind: k.kind,
                active: true,
                compartment: k.compartment,
                board: k.board,
                detail: d.clone(),
            })
            .collect();
        alarms.sort_by_key(|a| (a.kind as u8, a.compartment, a.board));
        alarms
    }

    pub fn connected(&self) -> bool {
        self.window.connected()
    }

    /// Fills the uplink's part of the status counters (storage errors add up across parts).
    pub fn fill(&self, c: &mut Counters) {
        c.rewinds = self.rewinds;
        c.published = self.published;
        c.connects = self.connects;
        c.shed_events = self.outbox.shed;
        c.dropped_critical = self.outbox.dropped;
        c.stray_acks = self.outbox.stray_acks;
        c.flushed_writes = self.outbox.flushed_writes();
        c.storage_errors += self.storage_errors;
    }

    /// Disconnects, waiting a little for the session task to end.
    pub async fn disconnect(&mut self) {
        if let Some(c) = self.mqtt.take() {
            let _ = c.try_disconnect();
        }
        if let Some(mut t) = self.mqtt_task.take() {
            if tokio::time::timeout(Duration::from_secs(2), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
    }

    /// Flushes the storage (on a clean stop).
    pub async fn flush(&self) {
        if let Err(e) = self.outbox.storage().flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
    }
}
