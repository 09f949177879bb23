//! The hardware task: ONE task per agent owns every Modbus link of the cabinet (lock boards and
//! charge controller), polls door sensors (at most `sensor_poll_ms` apart, faster while a fired
//! lock is being confirmed), debounces them, tracks boards going offline and back, reads the
//! charger, reads a board's parcel sensors once when its doors close (the close carries the
//! reading), and carries out lock pulses and parcel reads asked by the main loop.
//!
//! It reports to the main loop through a bounded channel ([`IoEvent`]) and takes requests
//! through another ([`IoRequest`]); the main loop never waits on it inline.
//!
//! A board or charger is reached over Modbus TCP ([`link`]) or as a unit on an RS-485 line
//! (Modbus RTU, [`serial`]: one task per line, shared by the units on it). The boards (and the
//! charger) due for a poll are polled concurrently, each with its own requests in order, so a
//! board that does not answer delays no other board's poll beyond its turn on a shared line.

pub mod board;
pub mod charger;
pub mod link;
pub mod rtu;
pub mod serial;

use std::time::Duration;

use locker_schemas::CompartmentId;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{AgentConfig, TimingConfig};
pub use board::{Board, Debouncer};
pub use charger::Charger;
pub use link::{ConnectFuture, Link, LinkError, ModbusConnector, ModbusStream};
pub use serial::{LineSnapshot, LineStats, SerialLine};

/// A request from the main loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoRequest {
    /// Fire this compartment's lock once.
    Pulse { compartment: CompartmentId },
    /// Read the parcel sensors of every online board.
    ReadParcels { token: u64 },
}

/// What the hardware task reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoEvent {
    /// First successful read of a board: the doors' states (not changes).
    Snapshot {
        unit: u8,
        doors: Vec<(CompartmentId, bool)>,
    },
    /// A debounced door change. A close carries the compartment's parcel sensor, read once
    /// right after the close was seen (`None`: an opening, a board without parcel sensors, or
    /// a read that failed within the Modbus timeout).
    Door {
        compartment: CompartmentId,
        open: bool,
        parcel: Option<bool>,
    },
    /// A board failed `offline_after_failures` polls in a row.
    BoardOffline { unit: u8, detail: String },
    /// An offline board answered again.
    BoardOnline { unit: u8 },
    /// A pulse was written (`Ok`) or failed; `maybe_fired` when the request may have reached
    /// the board (a lost reply): the door must then be watched, and the lock never fired again.
    Pulsed {
        compartment: CompartmentId,
        result: Result<(), String>,
        maybe_fired: bool,
    },
    /// Parcel sensors of the boards that answered.
    Parcels {
        token: u64,
        present: Vec<(CompartmentId, bool)>,
    },
    /// A good charge-controller read (telemetry and battery status).
    Power(charger::Reading),
    /// The charge controller stopped answering.
    ChargerOffline { detail: String },
}

/// The hardware task's state.
pub struct HwTask {
    boards: Vec<Board>,
    charger: Option<Charger>,
    timing: TimingConfig,
    rx: mpsc::Receiver<IoRequest>,
    tx: mpsc::Sender<IoEvent>,
}

/// Starts the hardware task; returns its request sender.
pub fn spawn(
    cfg: &AgentConfig,
    connector: &ModbusConnector,
    tx: mpsc::Sender<IoEvent>,
) -> (mpsc::Sender<IoRequest>, tokio::task::JoinHandle<()>) {
    spawn_with_stats(cfg, connector, &LineStats::default(), tx)
}

/// [`spawn`], counting the serial lines' traffic in `stats`.
pub fn spawn_with_stats(
    cfg: &AgentConfig,
    connector: &ModbusConnector,
    stats: &LineStats,
    tx: mpsc::Sender<IoEvent>,
) -> (mpsc::Sender<IoRequest>, tokio::task::JoinHandle<()>) {
    let (req_tx, rx) = mpsc::channel(16);
    // One task per line that some unit uses (validated: every `serial` names a line).
    let mut lines: Vec<(String, SerialLine)> = Vec::new();
    let mut line_of = |name: &str| -> Option<SerialLine> {
        if let Some((_, l)) = lines.iter().find(|(n, _)| n == name) {
            return Some(l.clone());
        }
        let port = cfg.serial_ports.iter().find(|p| p.name == name)?;
        let line = SerialLine::spawn(port.clone(), stats.clone());
        lines.push((name.to_owned(), line.clone()));
        Some(line)
    };
    let boards = cfg
        .lock_boards
        .iter()
        .map(|b| match b.serial.as_deref().and_then(&mut line_of) {
            Some(line) => Board::with_link(b.clone(), Link::serial(line, b.unit)),
            None => Board::new(b.clone(), &cfg.timing, connector.clone()),
        })
        .collect();
    let charger = cfg
        .charger
        .as_ref()
        .map(|c| match c.serial.as_deref().and_then(&mut line_of) {
            Some(line) => Charger::with_link(c.clone(), Link::serial(line, c.unit)),
            None => Charger::new(c.clone(), &cfg.timing, connector.clone()),
        });
    let task = HwTask {
        boards,
        charger,
        timing: cfg.timing.clone(),
        rx,
        tx,
    };
    (req_tx, tokio::spawn(task.run()))
}

impl HwTask {
    fn next_due(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3_600);
        self.boards
            .iter()
            .map(|b| b.next_poll)
            .chain(self.charger.iter().map(|c| c.next_poll))
            .min()
            .unwrap_or(far)
    }

    async fn run(mut self) {
        let mut out = Vec::new();
        loop {
            let due = self.next_due();
            tokio::select! {
                biased;
                req = self.rx.recv() => match req {
                    Some(r) => self.handle(r, &mut out).await,
                    None => return,
                },
                _ = tokio::time::sleep_until(due) => self.poll_due(&mut out).await,
            }
            for ev in out.drain(..) {
                if self.tx.send(ev).await.is_err() {
                    return;
                }
            }
        }
    }

    async fn poll_due(&mut self, out: &mut Vec<IoEvent>) {
        let now = Instant::now();
        let timing = &self.timing;
        let boards = self
            .boards
            .iter_mut()
            .filter(|b| b.next_poll <= now)
            .map(|b| async move {
                let mut events = Vec::new();
                b.poll(timing, &mut events).await;
                events
            });
        let charger = async {
            match &mut self.charger {
                Some(c) if c.next_poll <= now => match c.poll(timing).await {
                    Ok(p) => Some(IoEvent::Power(p)),
                    Err(Some(detail)) => Some(IoEvent::ChargerOffline { detail }),
                    Err(None) => None,
                },
                _ => None,
            }
        };
        let (boards, charger) = tokio::join!(futures::future::join_all(boards), charger);
        out.extend(boards.into_iter().flatten());
        out.extend(charger);
    }

    async fn handle(&mut self, req: IoRequest, out: &mut Vec<IoEvent>) {
        match req {
            IoRequest::Pulse { compartment } => {
                let (result, maybe_fired) = match self
                    .boards
                    .iter_mut()
                    .find(|b| b.lock_of(compartment).is_some())
                {
                    None => (
                        Err(format!("no lock board has compartment {compartment}")),
                        false,
                    ),
                    Some(b) if b.offline() => (
                        Err(format!("lock board unit {} is offline", b.cfg.unit)),
                        false,
                    ),
                    Some(b) => match b.pulse(compartment, &self.timing).await {
                        Ok(()) => (Ok(()), true),
                        Err(e) => {
                            let maybe = !matches!(e, LinkError::Exception(_));
                            (Err(format!("lock board unit {}: {e}", b.cfg.unit)), maybe)
                        }
                    },
                };
                out.push(IoEvent::Pulsed {
                    compartment,
                    result,
                    maybe_fired,
                });
            }
            IoRequest::ReadParcels { token } => {
                let mut present = Vec::new();
                for b in self.boards.iter_mut().filter(|b| !b.offline()) {
                    match b.parcels().await {
                        Ok(p) => present.extend(p),
                        Err(e) => {
                            tracing::warn!(unit = b.cfg.unit, error = %e, "parcel sensors unreadable")
                        }
                    }
                }
                out.push(IoEvent::Parcels { token, present });
            }
        }
    }
}
