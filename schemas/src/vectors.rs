//! Canonical example messages: one per message kind (and per command action), each with its
//! topic and the `schemas/locker.cddl` rules it matches ([`examples`]). They are written to
//! `schemas/vectors/` by `cargo run -p locker-schemas --features gen --bin locker-vectors`
//! (see [`write_all`], behind the `gen` feature), checked against the CDDL in the test run, and
//! used by the codec tests and the fuzz corpus.

use crate::codec::{self, DecodeError};
use crate::downlink::*;
use crate::ids::{CabinetId, CommandId, CompartmentId};
use crate::stream::{AlertEvent, ParcelEvent, Presence, StreamMessage};
use crate::topics::{DownKind, StreamKind, Topic, UpKind};
use crate::uplink::*;

#[cfg(feature = "gen")]
mod files;
#[cfg(feature = "gen")]
pub use files::{
    diagnostic, render, write_all, Change, FilesError, Report, INDEX_FILE, MANAGED_EXTENSIONS,
};

const TS: u64 = 1_790_000_000_000;

fn cabinet() -> CabinetId {
    CabinetId::new("CAB-000123").unwrap_or_else(|_| unreachable!("a valid literal id"))
}

fn command_id() -> CommandId {
    CommandId::from_bytes([
        0x01, 0x9a, 0x0b, 0x6c, 0x2e, 0x00, 0x7f, 0x3c, 0x41, 0x99, 0x20, 0x5e, 0x11, 0xa2, 0x07,
        0x3d,
    ])
}

fn up(seq: u64, body: UplinkBody) -> Uplink {
    Uplink {
        cabinet: cabinet(),
        boot: 7,
        seq,
        ts: TS + seq * 1000,
        body,
    }
}

/// Door events (the size test uses these): an opening with each kind of cause, then the close
/// of the command's opening with the parcel sensor reading a parcel inside.
pub fn door_examples() -> Vec<Uplink> {
    [
        (true, DoorCause::Command(command_id()), None),
        (true, DoorCause::LocalAccess, None),
        (true, DoorCause::Unknown, None),
        (false, DoorCause::Command(command_id()), Some(true)),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (open, cause, parcel))| {
        up(
            4_000_000 + i as u64,
            UplinkBody::Door(Door {
                compartment: CompartmentId(48),
                open,
                cause,
                parcel,
            }),
        )
    })
    .collect()
}

/// Every example uplink, named.
pub fn uplinks() -> Vec<(&'static str, Uplink)> {
    let sizes = [Size::S, Size::S, Size::M, Size::L, Size::Xl];
    vec![
        (
            "up-hello",
            up(
                1,
                UplinkBody::Hello(Hello {
                    firmware: "locker-agent 0.1.0".into(),
                    hardware: "LB-16 x2, EPEver Tracer".into(),
                    compartments: sizes
                        .iter()
                        .enumerate()
                        .map(|(i, s)| CompartmentInfo {
                            id: CompartmentId(i as u16 + 1),
                            size: *s,
                        })
                        .collect(),
                    network: NetworkKind::Cellular,
                    creds_version: 12,
                }),
            ),
        ),
        ("up-door", door_examples().remove(0)),
        ("up-door-closed-parcel", door_examples().remove(3)),
        (
            "up-scan",
            up(
                3,
                UplinkBody::Scan(Scan {
                    source: ScanSource::Qr,
                    value: "PK-7H2K9Q".into(),
                }),
            ),
        ),
        (
            "up-alarm",
            up(
                4,
                UplinkBody::Alarm(Alarm {
                    kind: AlarmKind::LockBoardOffline,
                    active: true,
                    compartment: None,
                    board: Some(2),
                    detail: "no answer for 3 polls".into(),
                }),
            ),
        ),
        (
            "up-power",
            up(
                5,
                UplinkBody::Power(Power {
                    battery_mv: 12_840,
                    soc_pct: 81,
                    pv_w: 46,
                    load_w: 9,
                    charging: ChargeState::Boost,
                    temp_dc: 215,
                }),
            ),
        ),
        (
            "up-network",
            up(
                6,
                UplinkBody::Network(Network {
                    kind: NetworkKind::Cellular,
                    signal_dbm: Some(-87),
                }),
            ),
        ),
        (
            "up-result",
            up(
                7,
                UplinkBody::Result(CommandResult {
                    command: command_id(),
                    outcome: Outcome::Opened,
                    detail: String::new(),
                }),
            ),
        ),
        (
            "up-result-unsupported",
            up(
                9,
                UplinkBody::Result(CommandResult {
                    command: command_id(),
                    outcome: Outcome::Unsupported,
                    detail: "credential sync from the gateway is not available yet".into(),
                }),
            ),
        ),
        (
            "up-access",
            up(
                8,
                UplinkBody::Access(LocalAccess {
                    compartment: CompartmentId(3),
                    action: AccessAction::Pickup,
                    reference: "ORD-2024-00042".into(),
                    source: ScanSource::Keypad,
                    actor: String::new(),
                }),
            ),
        ),
    ]
}

/// Every example downlink, named (one per command action).
pub fn downlinks() -> Vec<(&'static str, Downlink)> {
    let cmd = |action| {
        DownlinkBody::Command(Command {
            id: command_id(),
            issued_at: TS,
            expires_at: TS + 60_000,
            ttl_ms: 60_000,
            action,
        })
    };
    let actions = [
        (
            "down-cmd-unlock",
            Action::UnlockCompartment(CompartmentId(3)),
        ),
        ("down-cmd-unlock-all", Action::UnlockAll),
        (
            "down-cmd-set-config",
            Action::SetConfig(vec![("timing.door_left_open_s".into(), "120".into())]),
        ),
        ("down-cmd-power-save", Action::PowerSave(true)),
        ("down-cmd-reboot", Action::Reboot),
        ("down-cmd-sync-credentials", Action::SyncCredentials),
    ];
    let mut out: Vec<(&'static str, Downlink)> = actions
        .into_iter()
        .map(|(n, a)| (n, Downlink { body: cmd(a) }))
        .collect();
    out.push((
        "down-ack",
        Downlink {
            body: DownlinkBody::Ack(Ack { seq: 4_000_002 }),
        },
    ));
    out.push((
        "down-creds",
        Downlink {
            body: DownlinkBody::Credentials(Credentials {
                version: 13,
                entries: vec![
                    Credential {
                        kind: CredKind::Pickup,
                        secret_hash: vec![0xab; 32],
                        compartment: Some(CompartmentId(3)),
                        reference: "ORD-2024-00042".into(),
                        expires_at: TS + 72 * 3_600_000,
                        carrier: String::new(),
                    },
                    Credential {
                        kind: CredKind::Deposit,
                        secret_hash: vec![0xcd; 32],
                        compartment: None,
                        reference: "courier:dhl-0007".into(),
                        expires_at: TS + 24 * 3_600_000,
                        carrier: "dhl".into(),
                    },
                    Credential {
                        kind: CredKind::Parcel,
                        secret_hash: vec![0xef; 32],
                        compartment: Some(CompartmentId(7)),
                        reference: "ORD-2024-00043".into(),
                        expires_at: TS + 24 * 3_600_000,
                        carrier: "dhl".into(),
                    },
                ],
                part: 0,
                parts: 1,
            }),
        },
    ));
    out
}

/// Every example integrator stream message, named.
pub fn streams() -> Vec<(&'static str, StreamMessage)> {
    vec![
        (
            "gw-presence",
            StreamMessage::Presence(Presence {
                online: true,
                ts: TS,
            }),
        ),
        (
            "gw-alert",
            StreamMessage::Alert(AlertEvent {
                rule: "door_left_open".into(),
                active: true,
                ts: TS,
                detail: "compartment 3 open for 300 s".into(),
                id: "ALR-01JC0000000000000000000000".into(),
                severity: "warning".into(),
                subject: "compartment 3".into(),
                started: TS - 300_000,
            }),
        ),
        (
            "gw-parcel",
            StreamMessage::Parcel(ParcelEvent {
                order: "ORD-2024-00042".into(),
                state: "deposited".into(),
                ts: TS,
                compartment: Some(CompartmentId(3)),
                cause: "local_access".into(),
                actor: "courier:dhl-0007".into(),
                exception: None,
                carrier: "dhl".into(),
            }),
        ),
    ]
}

/// One example message with what an integrator needs to check it against the CDDL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The file stem in `schemas/vectors/` (`up-door`, `down-cmd-unlock`, `gw-presence`, ...).
    pub name: &'static str,
    /// The topic the message is published on.
    pub topic: Topic,
    /// The CDDL rule of its family: `uplink`, `downlink` or `stream-message`.
    pub family_rule: &'static str,
    /// The CDDL rule of this kind of message, for example `uplink-door`.
    pub message_rule: &'static str,
    /// The CDDL rule of the body alone (the envelope's last element), for example `door`.
    pub body_rule: &'static str,
    /// For commands, the CDDL rule of the action (the body's last element).
    pub action_rule: Option<&'static str>,
    /// The encoded message.
    pub bytes: Vec<u8>,
}

fn uplink_rules(k: UpKind) -> (&'static str, &'static str) {
    let message = match k {
        UpKind::Hello => "uplink-hello",
        UpKind::Door => "uplink-door",
        UpKind::Scan => "uplink-scan",
        UpKind::Alarm => "uplink-alarm",
        UpKind::Power => "uplink-power",
        UpKind::Network => "uplink-network",
        UpKind::Result => "uplink-result",
        UpKind::Access => "uplink-access",
    };
    // Body rules are named after the topic level.
    (message, k.as_str())
}

fn downlink_rules(k: DownKind) -> (&'static str, &'static str) {
    match k {
        DownKind::Cmd => ("downlink-cmd", "command"),
        DownKind::Ack => ("downlink-ack", "ack"),
        DownKind::Creds => ("downlink-creds", "credentials"),
    }
}

fn action_rule(a: &Action) -> &'static str {
    match a {
        Action::UnlockCompartment(_) => "action-unlock",
        Action::UnlockAll => "action-unlock-all",
        Action::SetConfig(_) => "action-set-config",
        Action::PowerSave(_) => "action-power-save",
        Action::Reboot => "action-reboot",
        Action::SyncCredentials => "action-sync-credentials",
    }
}

fn stream_rules(k: StreamKind) -> (&'static str, &'static str) {
    let message = match k {
        StreamKind::Presence => "stream-presence",
        StreamKind::Alert => "stream-alert",
        StreamKind::Parcel => "stream-parcel",
    };
    (message, k.as_str())
}

/// Every example, encoded, with its topic and CDDL rules: uplinks, then downlinks, then
/// integrator streams.
pub fn examples() -> Vec<Example> {
    let mut out = Vec::new();
    for (name, u) in uplinks() {
        let kind = u.body.kind();
        let (message_rule, body_rule) = uplink_rules(kind);
        out.push(Example {
            name,
            topic: Topic::Up(u.cabinet.clone(), kind),
            family_rule: "uplink",
            message_rule,
            body_rule,
            action_rule: None,
            bytes: codec::encode_uplink(&u).unwrap_or_default(),
        });
    }
    for (name, d) in downlinks() {
        let kind = d.body.kind();
        let (message_rule, body_rule) = downlink_rules(kind);
        let action_rule = match &d.body {
            DownlinkBody::Command(c) => Some(action_rule(&c.action)),
            _ => None,
        };
        out.push(Example {
            name,
            topic: Topic::Down(cabinet(), kind),
            family_rule: "downlink",
            message_rule,
            body_rule,
            action_rule,
            bytes: codec::encode_downlink(&d).unwrap_or_default(),
        });
    }
    for (name, m) in streams() {
        let kind = m.kind();
        let (message_rule, body_rule) = stream_rules(kind);
        out.push(Example {
            name,
            topic: Topic::Stream(cabinet(), kind),
            family_rule: "stream-message",
            message_rule,
            body_rule,
            action_rule: None,
            bytes: codec::encode_stream(&m).unwrap_or_default(),
        });
    }
    out
}

/// Every example encoded: `(name, cbor bytes)`.
pub fn all() -> Vec<(String, Vec<u8>)> {
    examples()
        .into_iter()
        .map(|e| (e.name.to_owned(), e.bytes))
        .collect()
}

/// Decodes a vector by the family its name gives (`up-`, `down-`, `gw-`) and encodes it again.
pub fn reencode(name: &str, bytes: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let enc = |r: Result<Vec<u8>, codec::EncodeError>| {
        r.map_err(|e| DecodeError::Malformed(e.to_string()))
    };
    if name.starts_with("up-") {
        enc(codec::encode_uplink(&codec::decode_uplink(bytes)?))
    } else if name.starts_with("down-") {
        enc(codec::encode_downlink(&codec::decode_downlink(bytes)?))
    } else {
        enc(codec::encode_stream(&codec::decode_stream(bytes)?))
    }
}
