//! The uplink side of the main loop: storing events through the outbox, publishing them in seq
//! order within the go-back-N window (from a small read-ahead buffer), applying the gateway's
//! acks, raising and clearing alarms, and publishing the agent's status.

use std::time::Duration;

use locker_schemas::{Alarm, Topic, UplinkBody};
use rumqttc::QoS;
use tokio::time::Instant;

use super::core::Core;
use super::AgentStatus;
use crate::outbox::{nearly_full_mark, Appended};
use crate::storage::{AlarmKey, StoredEvent, Write};

impl Core {
    pub(super) async fn on_ack(&mut self, seq: u64) {
        match self.outbox.ack(seq).await {
            Ok(true) => {
                self.window.on_ack(seq, Instant::now());
                while self.recent.front().is_some_and(|e| e.seq <= seq) {
                    self.recent.pop_front();
                }
            }
            Ok(false) => self.counters.stray_acks = self.outbox.stray_acks,
            Err(e) => {
                self.counters.storage_errors += 1;
                tracing::error!(error = %e, "ack not applied");
            }
        }
    }

    /// Stores an event (and its side writes) and publishes what the window allows; returns its
    /// seq if stored.
    pub async fn emit(&mut self, body: UplinkBody, extra: Vec<Write>) -> Option<u64> {
        let ts = self.now_millis();
        match self.outbox.append(ts, body, extra).await {
            Ok(Appended::Stored(ev)) => {
                let seq = ev.seq;
                self.window.on_stored(seq);
                if self.recent.back().is_none_or(|b| b.seq + 1 == seq) {
                    self.recent.push_back(ev);
                }
                while self.recent.len() > 2 * usize::from(self.cfg.mqtt.window) {
                    self.recent.pop_front();
                }
                self.pump().await;
                Some(seq)
            }
            Ok(Appended::Shed) => {
                self.counters.shed_events += 1;
                None
            }
            Ok(Appended::Dropped) => {
                self.counters.dropped_critical += 1;
                None
            }
            Err(e) => {
                self.counters.storage_errors += 1;
                tracing::error!(cabinet = %self.cabinet, error = %e, "event not stored");
                None
            }
        }
    }

    /// Publishes what the window allows.
    pub async fn pump(&mut self) {
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
                let ahead = n.max(usize::from(self.cfg.mqtt.window));
                match self.outbox.read(from, ahead).await {
                    Ok(v) => self.recent = v.into(),
                    Err(e) => {
                        self.counters.storage_errors += 1;
                        tracing::error!(error = %e, "outbox unreadable");
                        return;
                    }
                }
            }
            let start = (from - self.recent.front().map_or(from, |f| f.seq)) as usize;
            let events: Vec<StoredEvent> =
                self.recent.iter().skip(start).take(n).cloned().collect();
            if events.first().map(|e| e.seq) != Some(from) {
                tracing::error!(cabinet = %self.cabinet, from, "outbox does not hold the next event to send");
                return;
            }
            for ev in events {
                let topic = Topic::Up(self.cabinet.clone(), ev.kind).to_string();
                match client.try_publish(topic, QoS::AtLeastOnce, false, ev.payload) {
                    Ok(()) => {
                        self.window.mark_sent(ev.seq, Instant::now());
                        self.counters.published += 1;
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

    /// Raises or clears an alarm (once per key).
    pub async fn set_alarm(&mut self, key: AlarmKey, active: bool, detail: String) {
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
            tracing::warn!(cabinet = %self.cabinet, kind = ?key.kind, compartment = ?key.compartment, board = ?key.board, %detail, "alarm raised");
            self.alarms.insert(key, detail);
        } else {
            tracing::info!(cabinet = %self.cabinet, kind = ?key.kind, compartment = ?key.compartment, board = ?key.board, "alarm cleared");
            self.alarms.remove(&key);
        }
        self.emit(body, vec![w]).await;
    }

    pub(super) async fn after_change(&mut self) {
        let depth = self.outbox.depth();
        let mark = nearly_full_mark(self.outbox.limits());
        let key = AlarmKey {
            kind: locker_schemas::AlarmKind::OutboxNearlyFull,
            compartment: None,
            board: None,
        };
        if depth >= mark {
            self.set_alarm(
                key,
                true,
                format!(
                    "outbox holds {depth} events (limit {})",
                    self.outbox.limits().max_events
                ),
            )
            .await;
        } else if depth < mark / 2 {
            self.set_alarm(key, false, format!("outbox holds {depth} events"))
                .await;
        }
        self.pump().await;
        self.publish_status();
    }

    pub fn publish_status(&mut self) {
        self.counters.shed_events = self.outbox.shed;
        self.counters.dropped_critical = self.outbox.dropped;
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
        let s = AgentStatus {
            cabinet: self.cabinet.clone(),
            boot: self.outbox.boot(),
            running: self.exit.is_none(),
            mqtt_connected: self.window.connected(),
            outbox_depth: self.outbox.depth(),
            last_acked_seq: self.outbox.acked(),
            next_seq: self.outbox.next_seq(),
            alarms,
            boards_offline: self.boards_offline.clone(),
            open_doors: self
                .doors
                .iter()
                .filter(|(_, d)| d.open == Some(true))
                .map(|(c, _)| *c)
                .collect(),
            known_doors: self.doors.values().filter(|d| d.open.is_some()).count(),
            creds_version: self.creds.version(),
            power_save: self.power_save,
            counters: self.counters.clone(),
        };
        self.status_tx.send_if_modified(|old| {
            if *old == s {
                false
            } else {
                *old = s;
                true
            }
        });
    }
}
