//! Shared subscriptions (`$share/{group}/{filter}`) for integrators, kept by the edge rather
//! than rumqttd (whose groups lose the in-flight messages of a member that leaves, and whose
//! router panics when the last member of a persistent group leaves with messages in flight).
//!
//! One actor ([`run_group`]) owns each group: a group is the integrator identity, the group
//! name and the filter, so two integrators' groups of the same name never share messages. It
//! holds one router link subscribed to the filter at QoS 1 and hands each message to one
//! member, round robin among members with room (at most [`WINDOW`] unacknowledged each).
//! A member acknowledges a delivery once its client has (QoS 1) or once it took it (QoS 0);
//! the group acknowledges the router in the router's order. A member that leaves gives its
//! unacknowledged deliveries back: they go to the other members first (with the DUP flag), so
//! nothing delivered to the group is lost while it has members. A group without members lingers
//! for [`LINGER`] (a member reconnecting finds its messages), then closes its link.
//!
//! Sessions reach a group through a [`Membership`] (dropping it leaves) and receive deliveries
//! on their own bounded channel.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttd::protocol::{
    Filter as SubscribeFilter, Packet, PubAck, PubAckReason, Publish, PublishProperties, QoS,
    RetainForwardRule, Subscribe,
};
use rumqttd::Notification;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::SharedMetrics;
use super::wire::router_pkid;
use crate::broker::{Link, LinkFactory};

/// Most deliveries one member holds unacknowledged.
pub(crate) const WINDOW: usize = 32;
/// How long a group without members keeps its link and its undelivered messages.
pub(crate) const LINGER: Duration = Duration::from_secs(30);
/// Commands waiting for one group.
const COMMANDS: usize = 256;

/// What identifies a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct GroupKey {
    pub integrator: String,
    pub group: String,
    pub filter: String,
}

/// A message handed to one member.
pub(crate) struct Delivery {
    pub group: GroupRef,
    pub seq: u64,
    pub publish: Publish,
    pub props: Option<PublishProperties>,
    /// Sent to this member's client at QoS 1 (else QoS 0).
    pub qos1: bool,
    /// Delivered before to a member that left without acknowledging it.
    pub dup: bool,
}

/// A member's way back to its group (to acknowledge).
#[derive(Clone)]
pub(crate) struct GroupRef {
    tx: mpsc::Sender<Cmd>,
    member: u64,
}

impl GroupRef {
    /// Acknowledges delivery `seq` (never waits: a full queue hands it to a task).
    pub fn ack(&self, seq: u64) {
        send(
            &self.tx,
            Cmd::Ack {
                member: self.member,
                seq,
            },
        );
    }
}

/// Membership of one session in one group; dropping it leaves the group.
pub(crate) struct Membership {
    group: GroupRef,
}

impl Drop for Membership {
    fn drop(&mut self) {
        send(
            &self.group.tx,
            Cmd::Leave {
                member: self.group.member,
            },
        );
    }
}

enum Cmd {
    Join {
        member: u64,
        qos1: bool,
        tx: mpsc::Sender<Delivery>,
        group: GroupRef,
    },
    Leave {
        member: u64,
    },
    Ack {
        member: u64,
        seq: u64,
    },
}

/// Sends without waiting; a full queue hands the command to a task (never lost while the
/// group runs).
fn send(tx: &mpsc::Sender<Cmd>, cmd: Cmd) {
    if let Err(mpsc::error::TrySendError::Full(cmd)) = tx.try_send(cmd) {
        let tx = tx.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tx.send(cmd).await;
            });
        }
    }
}

/// A running group: its id and its command queue.
type Running = (u64, mpsc::Sender<Cmd>);

/// The edge's groups, by key (cheap to clone).
#[derive(Clone)]
pub(crate) struct Groups {
    table: Arc<Mutex<HashMap<GroupKey, Running>>>,
    links: LinkFactory,
    metrics: SharedMetrics,
    next_id: Arc<AtomicU64>,
    cancel: CancellationToken,
}

impl Groups {
    pub fn new(links: LinkFactory, metrics: SharedMetrics, cancel: CancellationToken) -> Self {
        Self {
            table: Arc::default(),
            links,
            metrics,
            next_id: Arc::new(AtomicU64::new(1)),
            cancel,
        }
    }

    /// Joins `key`'s group (starting it if needed); deliveries arrive on `tx` at QoS 1 when
    /// `qos1`, else QoS 0.
    pub fn join(&self, key: GroupKey, qos1: bool, tx: mpsc::Sender<Delivery>) -> Membership {
        let member = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let live = table
            .get(&key)
            .filter(|(_, t)| !t.is_closed())
            .map(|(_, t)| t.clone());
        let cmds = match live {
            Some(t) => t,
            None => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let (t, rx) = mpsc::channel(COMMANDS);
                table.insert(key.clone(), (id, t.clone()));
                tokio::spawn(run_group(
                    self.clone(),
                    key,
                    id,
                    rx,
                    self.cancel.child_token(),
                ));
                t
            }
        };
        drop(table);
        let group = GroupRef { tx: cmds, member };
        send(
            &group.tx,
            Cmd::Join {
                member,
                qos1,
                tx,
                group: group.clone(),
            },
        );
        Membership { group }
    }

    /// Forgets group `id` under `key` (it stopped), unless a newer one took the key.
    fn forget(&self, key: &GroupKey, id: u64) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.get(key).is_some_and(|(i, _)| *i == id) {
            table.remove(key);
        }
    }
}

/// A message the group holds.
#[derive(Clone)]
struct Msg {
    seq: u64,
    publish: Publish,
    props: Option<PublishProperties>,
    dup: bool,
}

struct Member {
    id: u64,
    qos1: bool,
    tx: mpsc::Sender<Delivery>,
    group: GroupRef,
    in_flight: usize,
}

/// One group's state, owned by its task.
struct Group {
    groups: Groups,
    members: Vec<Member>,
    /// The next member to try (round robin).
    next: usize,
    /// Messages not yet handed to a member, oldest first.
    pending: VecDeque<Msg>,
    /// Handed out and not acknowledged: seq -> (member, message).
    out: HashMap<u64, (u64, Msg)>,
    /// Every message not yet acknowledged to the router, in the router's order: seq, the
    /// router's packet id, done.
    order: VecDeque<(u64, u16, bool)>,
    next_seq: u64,
}

/// Runs group `id` until it has had no members for [`LINGER`], its link fails, or the edge
/// stops.
async fn run_group(
    groups: Groups,
    key: GroupKey,
    id: u64,
    mut rx: mpsc::Receiver<Cmd>,
    cancel: CancellationToken,
) {
    let client_id = format!("share:{}:{}:{id}", key.integrator, key.group);
    let link = match groups.links.connect(client_id.clone(), true, None).await {
        Ok(link) => link,
        Err(e) => {
            tracing::warn!(group = ?key, error = %e, "edge: shared subscription group has no broker link");
            groups.forget(&key, id);
            return;
        }
    };
    let mut link = link;
    link.trim();
    link.tx.buffer().push_back(Packet::Subscribe(
        Subscribe {
            pkid: 1,
            filters: vec![SubscribeFilter {
                path: key.filter.clone(),
                qos: QoS::AtLeastOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::Never,
            }],
        },
        None,
    ));
    if link.notify().await.is_err() {
        groups.forget(&key, id);
        return;
    }
    groups.metrics.groups.inc();
    let mut g = Group {
        groups: groups.clone(),
        members: Vec::new(),
        next: 0,
        pending: VecDeque::new(),
        out: HashMap::new(),
        order: VecDeque::new(),
        next_seq: 1,
    };
    let mut alone_since = Some(Instant::now());
    loop {
        let linger_until = alone_since.map(|t| t + LINGER);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            cmd = rx.recv() => match cmd {
                Some(cmd) => g.command(cmd),
                None => break,
            },
            n = link.rx.next() => match n {
                Ok(Some(Notification::Forward(f))) => g.arrived(f.publish, f.properties),
                Ok(Some(Notification::Unschedule)) => {
                    if link.rx.wake().await.is_err() {
                        break;
                    }
                }
                Ok(Some(Notification::Disconnect(..))) | Err(_) => {
                    link.router_closed();
                    break;
                }
                Ok(_) => {}
            },
            _ = async {
                match linger_until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                tracing::debug!(group = ?key, "edge: shared subscription group without members closed");
                break;
            }
        }
        g.dispatch();
        if g.ack_router(&link) > 0 && link.notify().await.is_err() {
            link.router_closed();
            break;
        }
        alone_since = match (g.members.is_empty(), alone_since) {
            (true, None) => Some(Instant::now()),
            (true, since) => since,
            (false, _) => None,
        };
    }
    groups.forget(&key, id);
    groups.metrics.groups.dec();
    groups
        .metrics
        .members
        .sub(i64::try_from(g.members.len()).unwrap_or(0));
    link.close(true).await;
}

impl Group {
    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Join {
                member,
                qos1,
                tx,
                group,
            } => {
                self.groups.metrics.members.inc();
                self.members.push(Member {
                    id: member,
                    qos1,
                    tx,
                    group,
                    in_flight: 0,
                });
            }
            Cmd::Leave { member } => self.leave(member),
            Cmd::Ack { member, seq } => {
                // Only the member that holds it (a late ack from one that left is ignored:
                // the message went to another).
                if self.out.get(&seq).is_some_and(|(m, _)| *m == member) {
                    self.out.remove(&seq);
                    if let Some(m) = self.members.iter_mut().find(|m| m.id == member) {
                        m.in_flight = m.in_flight.saturating_sub(1);
                    }
                    if let Some(e) = self.order.iter_mut().find(|e| e.0 == seq) {
                        e.2 = true;
                    }
                }
            }
        }
    }

    /// A member left: what it had unacknowledged goes back to the front of the queue.
    fn leave(&mut self, member: u64) {
        let Some(at) = self.members.iter().position(|m| m.id == member) else {
            return;
        };
        self.members.remove(at);
        self.groups.metrics.members.dec();
        let mut back: Vec<Msg> = self
            .out
            .iter()
            .filter(|(_, (m, _))| *m == member)
            .map(|(_, (_, msg))| msg.clone())
            .collect();
        for msg in &back {
            self.out.remove(&msg.seq);
        }
        back.sort_by_key(|m| std::cmp::Reverse(m.seq));
        for mut msg in back {
            msg.dup = true;
            self.groups.metrics.redelivered.inc();
            self.pending.push_front(msg);
        }
    }

    /// A message from the router.
    fn arrived(&mut self, publish: Publish, props: Option<PublishProperties>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let pkid = router_pkid(&publish);
        self.order
            .push_back((seq, pkid.unwrap_or(0), pkid.is_none()));
        self.pending.push_back(Msg {
            seq,
            publish,
            props,
            dup: false,
        });
    }

    /// Hands pending messages to members with room, round robin.
    fn dispatch(&mut self) {
        while let Some(msg) = self.pending.pop_front() {
            let n = self.members.len();
            let mut handed = None;
            let mut gone = Vec::new();
            for i in 0..n {
                let at = (self.next + i) % n;
                let m = &mut self.members[at];
                if m.in_flight >= WINDOW {
                    continue;
                }
                let d = Delivery {
                    group: m.group.clone(),
                    seq: msg.seq,
                    publish: msg.publish.clone(),
                    props: msg.props.clone(),
                    qos1: m.qos1,
                    dup: msg.dup,
                };
                match m.tx.try_send(d) {
                    Ok(()) => {
                        m.in_flight += 1;
                        handed = Some((at, m.id));
                        break;
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => gone.push(m.id),
                }
            }
            match handed {
                Some((at, member)) => {
                    self.next = at + 1;
                    self.groups.metrics.delivered.inc();
                    self.out.insert(msg.seq, (member, msg));
                    for id in gone {
                        self.leave(id);
                    }
                }
                None => {
                    self.pending.push_front(msg);
                    for id in gone {
                        self.leave(id);
                    }
                    return;
                }
            }
        }
    }

    /// Acknowledges to the router, in its order, every message done at the front; returns
    /// how many.
    fn ack_router(&mut self, link: &Link) -> usize {
        let mut n = 0;
        while let Some(&(_, pkid, true)) = self.order.front() {
            self.order.pop_front();
            if pkid != 0 {
                link.tx.buffer().push_back(Packet::PubAck(
                    PubAck {
                        pkid,
                        reason: PubAckReason::Success,
                    },
                    None,
                ));
                n += 1;
            }
        }
        n
    }
}
