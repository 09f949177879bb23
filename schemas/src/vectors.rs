//! Canonical example messages: one per message kind (and per command action). They are written
//! to `schemas/vectors/` by `cargo run -p locker-schemas --bin locker-vectors`, checked against
//! the CDDL in the test run, and used by the codec tests and the fuzz corpus.

use crate::codec::{self, DecodeError};
use crate::downlink::*;
use crate::ids::{CabinetId, CommandId, CompartmentId};
use crate::stream::{AlertEvent, ParcelEvent, Presence, StreamMessage};
use crate::uplink::*;

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

/// Door events with each kind of cause (the size test uses these).
pub fn door_examples() -> Vec<Uplink> {
    [
        DoorCause::Command(command_id()),
        DoorCause::LocalAccess,
        DoorCause::Unknown,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, cause)| {
        up(
            4_000_000 + i as u64,
            UplinkBody::Door(Door {
                compartment: CompartmentId(48),
                open: true,
                cause,
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
            "up-access",
            up(
                8,
                UplinkBody::Access(LocalAccess {
                    compartment: CompartmentId(3),
                    action: AccessAction::Pickup,
                    reference: "ORD-2024-00042".into(),
                    source: ScanSource::Keypad,
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
            Action::SetConfig(vec![("door_left_open_s".into(), "120".into())]),
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
                    },
                    Credential {
                        kind: CredKind::Deposit,
                        secret_hash: vec![0xcd; 32],
                        compartment: None,
                        reference: "carrier:dhl".into(),
                        expires_at: TS + 24 * 3_600_000,
                    },
                ],
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
            }),
        ),
        (
            "gw-parcel",
            StreamMessage::Parcel(ParcelEvent {
                order: "ORD-2024-00042".into(),
                state: "deposited".into(),
                ts: TS,
            }),
        ),
    ]
}

/// Every example encoded: `(name, cbor bytes)`.
pub fn all() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (n, u) in uplinks() {
        out.push((n.to_owned(), codec::encode_uplink(&u).unwrap_or_default()));
    }
    for (n, d) in downlinks() {
        out.push((n.to_owned(), codec::encode_downlink(&d).unwrap_or_default()));
    }
    for (n, s) in streams() {
        out.push((n.to_owned(), codec::encode_stream(&s).unwrap_or_default()));
    }
    out
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
