//! The agent's main loop: the one task that owns the agent's parts ([`Uplink`], [`Doors`],
//! [`Executor`]), its shared [`Ctx`], the hardware and request channels, the status sender and
//! the exit flag. It reacts to requests from the handle, hardware events, MQTT events and its
//! own timers by calling the part concerned, lending it the other parts it needs (each part
//! keeps its state private), and routes what the doors report about commands' doors to the
//! executor. It also assembles the status from the parts.

use std::sync::Arc;
use std::time::Duration;

use locker_schemas::{codec, Command, DownlinkBody, Hello, Network, Topic, UplinkBody};
use rumqttc::Publish;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ctx::Ctx;
use super::doors::{Doors, JobEvent};
use super::exec::{self, Executor};
use super::types::{
    AgentDeps, AgentError, AgentStatus, Counters, ExecOutcome, ExitReason, Request, ScanSender,
};
use super::uplink::Uplink;
use crate::config::AgentConfig;
use crate::creds::CredCache;
use crate::hw::{self, IoEvent};
use crate::outbox::Outbox;
use crate::session::MqttEvent;

pub(super) struct Core {
    ctx: Ctx,
    uplink: Uplink,
    doors: Doors,
    exec: Executor,
    io_rx: mpsc::Receiver<IoEvent>,
    io_task: JoinHandle<()>,
    scanner_task: Option<JoinHandle<()>>,
    req_rx: mpsc::Receiver<Request>,
    bad_downlinks: u64,
    status_tx: watch::Sender<AgentStatus>,
    exit: Option<ExitReason>,
}

impl Core {
    pub async fn open(
        config: AgentConfig,
        deps: AgentDeps,
        req_rx: mpsc::Receiver<Request>,
        scans: ScanSender,
    ) -> Result<(Core, watch::Receiver<AgentStatus>), AgentError> {
        let cabinet = config.cabinet()?;
        let clock_floor = config.clock.floor_millis()?;
        let cfg = Arc::new(config);
        let (outbox, loaded) = Outbox::open(&deps.storage, &cabinet, cfg.outbox.clone()).await?;
        let cfg = exec::with_stored_settings(cfg, &loaded.config_overrides);
        let ctx = Ctx::new(cfg, cabinet, deps.clock.clone(), clock_floor);
        let (io_ev_tx, io_rx) = mpsc::channel(64);
        let (io_tx, io_task) =
            hw::spawn_with_stats(ctx.cfg(), &deps.modbus, &deps.line_stats, io_ev_tx);
        let doors = Doors::new(&ctx, io_tx, CredCache::new(loaded.creds), loaded.lock_until);
        let alarms = loaded.alarms.into_iter().collect();
        let uplink = Uplink::start(&ctx, outbox, alarms, deps.tls.clone()).await?;
        let scanner_task = crate::scanner::spawn(&ctx.cfg().scanner, scans);

        let store = uplink.store();
        let status = AgentStatus {
            cabinet: ctx.cabinet().clone(),
            boot: store.boot(),
            running: true,
            mqtt_connected: false,
            outbox_depth: store.depth(),
            last_acked_seq: store.acked(),
            next_seq: store.next_seq(),
            alarms: Vec::new(),
            boards_offline: Vec::new(),
            open_doors: Vec::new(),
            known_doors: 0,
            creds_version: 0,
            power_save: false,
            counters: Counters::default(),
        };
        let (status_tx, status_rx) = watch::channel(status);
        let mut core = Core {
            ctx,
            uplink,
            doors,
            exec: Executor::new(loaded.remembered),
            io_rx,
            io_task,
            scanner_task,
            req_rx,
            bad_downlinks: 0,
            status_tx,
            exit: None,
        };
        for id in loaded.interrupted {
            tracing::warn!(cabinet = %core.ctx.cabinet(), command = %id, "command interrupted by restart; reporting it rejected");
            core.exec
                .finish(
                    &core.ctx,
                    &mut core.uplink,
                    id,
                    locker_schemas::Outcome::Rejected,
                    "interrupted by restart".into(),
                )
                .await;
        }
        core.publish_status();
        Ok((core, status_rx))
    }

    pub async fn run(mut self) -> ExitReason {
        let mut timer = Box::pin(tokio::time::sleep_until(Instant::now()));
        while self.exit.is_none() {
            let wake = self.next_wakeup();
            timer.as_mut().reset(wake);
            tokio::select! {
                req = self.req_rx.recv() => match req {
                    Some(r) => self.on_request(r).await,
                    None => self.exit = Some(ExitReason::Shutdown),
                },
                ev = self.io_rx.recv() => match ev {
                    Some(ev) => self.on_io(ev).await,
                    None => self.exit = Some(ExitReason::Failed("hardware task ended".into())),
                },
                ev = self.uplink.recv() => match ev {
                    Some(ev) => self.on_mqtt(ev).await,
                    None => {
                        tracing::error!(cabinet = %self.ctx.cabinet(), "mqtt session task ended");
                        self.uplink.session_ended();
                    }
                },
                _ = &mut timer => self.on_tick().await,
            }
            self.after_change().await;
        }
        self.stop().await
    }

    fn next_wakeup(&self) -> Instant {
        let t = Instant::now() + Duration::from_secs(3_600);
        let t = self.uplink.next_wakeup(t);
        self.doors.next_wakeup(&self.ctx, &self.uplink, t)
    }

    async fn on_tick(&mut self) {
        let now = Instant::now();
        self.uplink.on_tick(&self.ctx, now);
        let jobs = self.doors.check_deadlines(&self.ctx, now);
        self.on_job_events(jobs).await;
        self.doors
            .check_left_open(&self.ctx, &mut self.uplink, now)
            .await;
        self.doors.check_lock(&self.ctx, &mut self.uplink).await;
    }

    async fn on_io(&mut self, ev: IoEvent) {
        let jobs = self.doors.on_io(&self.ctx, &mut self.uplink, ev).await;
        self.on_job_events(jobs).await;
    }

    /// Hands what happened to commands' doors to the executor.
    async fn on_job_events(&mut self, jobs: Vec<JobEvent>) {
        for ev in jobs {
            self.exec
                .on_job_event(&self.ctx, &mut self.doors, &mut self.uplink, ev)
                .await;
        }
        self.answer_waiters();
    }

    async fn on_command(
        &mut self,
        cmd: Command,
        received: Instant,
        waiter: Option<oneshot::Sender<ExecOutcome>>,
    ) {
        let exit = self
            .exec
            .on_command(
                &mut self.ctx,
                &mut self.doors,
                &mut self.uplink,
                cmd,
                received,
                waiter,
            )
            .await;
        self.answer_waiters();
        if exit.is_some() {
            self.exit = exit;
        }
    }

    /// Sends the executor's and the scanners' due answers, once the status shows their effect.
    fn answer_waiters(&mut self) {
        let replies = self.exec.take_replies();
        let scans = self.doors.take_scan_replies();
        if replies.is_empty() && scans.is_empty() {
            return;
        }
        self.publish_status();
        for (w, outcome) in replies {
            let _ = w.send(outcome);
        }
        for (w, r) in scans {
            let _ = w.send(Ok(r));
        }
    }

    async fn on_request(&mut self, r: Request) {
        match r {
            Request::Execute { cmd, reply } => {
                self.on_command(cmd, Instant::now(), Some(reply)).await;
            }
            Request::Scan {
                source,
                value,
                reply,
            } => {
                self.doors
                    .on_scan(&self.ctx, &mut self.uplink, source, value, reply)
                    .await;
                self.answer_waiters();
            }
            Request::Key { key, reply } => {
                self.doors.check_lock(&self.ctx, &mut self.uplink).await;
                self.doors.on_key(&self.ctx, key, reply);
                self.answer_waiters();
            }
            Request::Outbox { reply } => {
                let r = self
                    .uplink
                    .store()
                    .snapshot()
                    .await
                    .map_err(|e| e.to_string());
                let _ = reply.send(r);
            }
            Request::Downlink { body, reply } => {
                self.handle_downlink(body, Instant::now()).await;
                self.publish_status();
                let _ = reply.send(());
            }
            Request::Shutdown => self.exit = Some(ExitReason::Shutdown),
        }
    }

    async fn on_mqtt(&mut self, ev: MqttEvent) {
        match ev {
            MqttEvent::Connected { session_present } => {
                tracing::info!(cabinet = %self.ctx.cabinet(), session_present, "connected to the gateway");
                self.uplink.on_connected(&self.ctx);
                let cfg = self.ctx.cfg().clone();
                let hello = UplinkBody::Hello(Hello {
                    firmware: env!("CARGO_PKG_VERSION").into(),
                    hardware: cfg.hardware.clone(),
                    compartments: self.doors.compartments().to_vec(),
                    network: cfg.network.kind.into(),
                    creds_version: self.doors.creds_version(),
                });
                self.uplink.emit(&self.ctx, hello, Vec::new()).await;
                if let Some(dbm) = cfg.network.signal_dbm {
                    let n = UplinkBody::Network(Network {
                        kind: cfg.network.kind.into(),
                        signal_dbm: Some(dbm),
                    });
                    self.uplink.emit(&self.ctx, n, Vec::new()).await;
                }
            }
            MqttEvent::Disconnected { error } => {
                tracing::info!(cabinet = %self.ctx.cabinet(), %error, "disconnected from the gateway");
                self.uplink.on_disconnected();
            }
            MqttEvent::Message(p, received) => {
                self.on_downlink(&p, received).await;
                self.uplink.ack_delivery(&p);
            }
        }
    }

    fn bad_downlink(&mut self, what: &str) {
        self.bad_downlinks += 1;
        if self.bad_downlinks.is_power_of_two() {
            tracing::warn!(cabinet = %self.ctx.cabinet(), count = self.bad_downlinks, "bad downlink: {what}");
        }
    }

    async fn on_downlink(&mut self, p: &Publish, received: Instant) {
        let kind = match p.topic.parse::<Topic>() {
            Ok(Topic::Down(cab, kind)) if &cab == self.ctx.cabinet() => kind,
            Ok(_) => return self.bad_downlink("topic of another cabinet or direction"),
            Err(_) => return self.bad_downlink("unparsable topic"),
        };
        let d = match codec::decode_downlink(&p.payload) {
            Ok(d) => d,
            Err(e) => return self.bad_downlink(e.label()),
        };
        if d.body.kind() != kind {
            return self.bad_downlink("body kind differs from topic kind");
        }
        self.handle_downlink(d.body, received).await;
    }

    /// Acts on a downlink (from MQTT or injected through the handle).
    async fn handle_downlink(&mut self, body: DownlinkBody, received: Instant) {
        match body {
            DownlinkBody::Ack(a) => self.uplink.on_ack(a.seq).await,
            DownlinkBody::Command(c) => self.on_command(c, received, None).await,
            DownlinkBody::Credentials(c) => {
                self.doors
                    .on_credentials(&self.ctx, &mut self.uplink, c)
                    .await
            }
        }
    }

    /// After every event: the outbox alarm, publishing, the status, due answers.
    async fn after_change(&mut self) {
        self.uplink.after_change(&self.ctx).await;
        self.publish_status();
        self.answer_waiters();
    }

    /// The status, assembled from the parts; sent to watchers if it changed.
    fn publish_status(&self) {
        let mut counters = Counters::default();
        self.uplink.fill(&mut counters);
        self.doors.fill(&mut counters);
        self.exec.fill(&mut counters);
        counters.bad_downlinks = self.bad_downlinks;
        let store = self.uplink.store();
        let s = AgentStatus {
            cabinet: self.ctx.cabinet().clone(),
            boot: store.boot(),
            running: self.exit.is_none(),
            mqtt_connected: self.uplink.connected(),
            outbox_depth: store.depth(),
            last_acked_seq: store.acked(),
            next_seq: store.next_seq(),
            alarms: self.uplink.alarms(),
            boards_offline: self.doors.boards_offline(),
            open_doors: self.doors.open_doors(),
            known_doors: self.doors.known_doors(),
            creds_version: self.doors.creds_version(),
            power_save: self.doors.power_save(),
            counters,
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

    /// On a clean stop, lets unlocks already fired finish (door confirmed or jammed, bounded
    /// by `unlock_confirm_ms`), so a restart never leaves a fired lock without its true
    /// outcome. (After `kill -9` such a command is reported `rejected`, "interrupted by
    /// restart".)
    async fn drain_jobs(&mut self) {
        let confirm_ms = self.ctx.cfg().timing.unlock_confirm_ms;
        let deadline = Instant::now() + Duration::from_millis(confirm_ms.saturating_add(500));
        while self.exec.has_jobs() && Instant::now() < deadline {
            let wake = self.next_wakeup().min(deadline);
            tokio::select! {
                ev = self.io_rx.recv() => match ev {
                    Some(ev) => self.on_io(ev).await,
                    None => break,
                },
                _ = tokio::time::sleep_until(wake) => self.on_tick().await,
            }
            self.after_change().await;
        }
    }

    async fn stop(mut self) -> ExitReason {
        let exit = self.exit.clone().unwrap_or(ExitReason::Shutdown);
        tracing::info!(cabinet = %self.ctx.cabinet(), ?exit, "agent stopping");
        self.drain_jobs().await;
        self.uplink.commit(&self.ctx).await;
        self.uplink.disconnect().await;
        if let Some(t) = self.scanner_task.take() {
            t.abort();
        }
        self.io_task.abort();
        self.uplink.flush().await;
        self.answer_waiters();
        self.exec.drop_waiters();
        self.publish_status();
        self.status_tx.send_modify(|s| s.running = false);
        exit
    }
}
