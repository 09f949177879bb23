//! How one stored event changes a cabinet's snapshot, within bounds: compartments only from
//! the layout the cabinet declares in its hello (at most [`Limits::max_compartments`]), at
//! most [`Limits::max_alarms`] active alarms per cabinet, and free text (alarm detail,
//! firmware, hardware) cut to [`Limits::max_text_bytes`] on a character boundary. Whatever
//! is refused or cut is reported as [`Rejected`] reasons for the fleet to count and log.
//!
//! Pure and synchronous: O(size of the event and of the cabinet's bounded snapshot).

use locker_schemas::{Millis, Uplink, UplinkBody};

use crate::json::{AlarmName, ChargingName, NetworkName, SizeName};
use crate::model::{AlarmView, CabinetSnapshot, CompartmentView, NetworkView, PowerView};

/// The bounds of one cabinet's snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Compartments kept from a declared layout (the rest are refused).
    pub max_compartments: usize,
    /// Active alarms kept per cabinet; a new one beyond this is refused until others clear.
    pub max_alarms: usize,
    /// Bytes of free text kept (alarm detail, firmware, hardware).
    pub max_text_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_compartments: 1024,
            max_alarms: 64,
            max_text_bytes: 256,
        }
    }
}

/// Why part of an event was not taken into the snapshot (the `reason` label of
/// `locker_fleet_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejected {
    /// A door event or alarm for a compartment the cabinet did not declare.
    UnknownCompartment,
    /// A hello declaring more compartments than the cap (the rest are dropped).
    TooManyCompartments,
    /// A new alarm while the cabinet already has the most it may have.
    TooManyAlarms,
    /// Free text longer than the cap (kept, cut).
    TextTruncated,
}

impl Rejected {
    /// Every reason (to pre-register the metric's series).
    pub const ALL: [Rejected; 4] = [
        Rejected::UnknownCompartment,
        Rejected::TooManyCompartments,
        Rejected::TooManyAlarms,
        Rejected::TextTruncated,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::UnknownCompartment => "unknown_compartment",
            Rejected::TooManyCompartments => "too_many_compartments",
            Rejected::TooManyAlarms => "too_many_alarms",
            Rejected::TextTruncated => "text_truncated",
        }
    }

    /// A bit for "already logged for this cabinet".
    pub(super) fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// `s` cut to at most `max` bytes on a character boundary; whether it was cut.
pub fn truncate(s: &str, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s.to_owned(), false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (s[..end].to_owned(), true)
}

/// Folds one stored event into `snap`; reports what was refused or cut through `reject`.
pub fn apply(
    snap: &mut CabinetSnapshot,
    u: &Uplink,
    now: Millis,
    limits: &Limits,
    reject: &mut impl FnMut(Rejected),
) {
    snap.last_seen = now;
    snap.boot = u.boot;
    // committed events arrive in the order ingest accepted them, so the last one is the
    // cabinet's position in its current storage life (a wiped cabinet starts again at 1)
    snap.last_seq = u.seq;
    let mut text = |s: &str| {
        let (t, cut) = truncate(s, limits.max_text_bytes);
        if cut {
            reject(Rejected::TextTruncated);
        }
        t
    };
    match &u.body {
        UplinkBody::Hello(h) => {
            snap.firmware = text(&h.firmware);
            snap.hardware = text(&h.hardware);
            let old = std::mem::take(&mut snap.compartments);
            let mut layout: Vec<CompartmentView> = Vec::new();
            let mut too_many = false;
            let mut seen = std::collections::HashSet::new();
            for c in &h.compartments {
                if !seen.insert(c.id) {
                    continue;
                }
                if layout.len() >= limits.max_compartments {
                    too_many = true;
                    break;
                }
                layout.push(CompartmentView {
                    id: c.id,
                    size: SizeName::from(c.size),
                    open: old.iter().find(|o| o.id == c.id).and_then(|o| o.open),
                });
            }
            if too_many {
                reject(Rejected::TooManyCompartments);
            }
            snap.compartments = layout;
            // alarms of compartments the new layout no longer has are gone with them
            let declared = &snap.compartments;
            snap.alarms.retain(|a| {
                a.compartment
                    .is_none_or(|c| declared.iter().any(|d| d.id == c))
            });
            snap.network = Some(NetworkView {
                kind: NetworkName::from(h.network),
                signal_dbm: snap.network.as_ref().and_then(|n| n.signal_dbm),
            });
        }
        UplinkBody::Door(d) => match snap.compartments.iter_mut().find(|c| c.id == d.compartment) {
            Some(c) => c.open = Some(d.open),
            None => reject(Rejected::UnknownCompartment),
        },
        UplinkBody::Power(p) => {
            snap.power = Some(PowerView {
                battery_mv: p.battery_mv,
                soc_pct: p.soc_pct,
                pv_w: p.pv_w,
                load_w: p.load_w,
                charging: ChargingName::from(p.charging),
                temp_c: f64::from(p.temp_dc) / 10.0,
                at: u.ts,
            })
        }
        UplinkBody::Network(n) => {
            snap.network = Some(NetworkView {
                kind: NetworkName::from(n.kind),
                signal_dbm: n.signal_dbm,
            })
        }
        UplinkBody::Alarm(a) => {
            if let Some(c) = a.compartment {
                if !snap.compartments.iter().any(|d| d.id == c) {
                    reject(Rejected::UnknownCompartment);
                    return;
                }
            }
            let kind = AlarmName::from(a.kind);
            let same = |x: &AlarmView| {
                x.kind == kind && x.compartment == a.compartment && x.board == a.board
            };
            let existing = snap.alarms.iter().position(same);
            match (a.active, existing) {
                (false, Some(i)) => {
                    snap.alarms.remove(i);
                }
                (false, None) => {}
                (true, Some(i)) => snap.alarms[i].detail = text(&a.detail),
                (true, None) if snap.alarms.len() >= limits.max_alarms => {
                    reject(Rejected::TooManyAlarms)
                }
                (true, None) => snap.alarms.push(AlarmView {
                    kind,
                    compartment: a.compartment,
                    board: a.board,
                    detail: text(&a.detail),
                    since: u.ts,
                }),
            }
        }
        UplinkBody::Scan(_) | UplinkBody::Result(_) | UplinkBody::Access(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use locker_schemas::{
        Alarm, AlarmKind, CabinetId, CompartmentId, CompartmentInfo, Hello, NetworkKind, Size,
    };

    use super::*;

    fn up(seq: u64, body: UplinkBody) -> Uplink {
        Uplink {
            cabinet: CabinetId::new("CAB-1").expect("id"),
            boot: 1,
            seq,
            ts: 0,
            body,
        }
    }

    #[test]
    fn the_last_seq_follows_a_new_storage_life() {
        let mut snap = CabinetSnapshot::new(CabinetId::new("CAB-1").expect("id"));
        let limits = Limits::default();
        let network = |seq| {
            up(
                seq,
                UplinkBody::Network(locker_schemas::Network {
                    kind: NetworkKind::Lan,
                    signal_dbm: None,
                }),
            )
        };
        apply(&mut snap, &network(500), 0, &limits, &mut |_| {});
        assert_eq!(snap.last_seq, 500);
        // the cabinet's storage was wiped: ingest accepted seq 1 of its new life
        apply(&mut snap, &network(1), 0, &limits, &mut |_| {});
        assert_eq!(snap.last_seq, 1);
    }

    #[test]
    fn a_declared_layout_is_deduplicated_and_capped_and_alarms_need_declared_compartments() {
        let mut snap = CabinetSnapshot::new(CabinetId::new("CAB-1").expect("id"));
        let mut seen = Vec::new();
        let limits = Limits::default();
        // every id twice, 2,000 distinct
        let compartments = (0..4_000u16)
            .map(|i| CompartmentInfo {
                id: CompartmentId(i / 2),
                size: Size::L,
            })
            .collect();
        let hello = UplinkBody::Hello(Hello {
            firmware: "f".into(),
            hardware: "h".into(),
            compartments,
            network: NetworkKind::Wifi,
            creds_version: 0,
        });
        apply(&mut snap, &up(1, hello), 0, &limits, &mut |r| seen.push(r));
        assert_eq!(snap.compartments.len(), limits.max_compartments);
        assert_eq!(snap.compartments[1].id, CompartmentId(1));
        assert_eq!(seen, vec![Rejected::TooManyCompartments]);

        seen.clear();
        let alarm = |c: u16| {
            UplinkBody::Alarm(Alarm {
                kind: AlarmKind::ForcedOpen,
                active: true,
                compartment: Some(CompartmentId(c)),
                board: None,
                detail: String::new(),
            })
        };
        apply(&mut snap, &up(2, alarm(5_000)), 0, &limits, &mut |r| {
            seen.push(r)
        });
        apply(&mut snap, &up(3, alarm(5)), 0, &limits, &mut |r| {
            seen.push(r)
        });
        assert_eq!(seen, vec![Rejected::UnknownCompartment]);
        assert_eq!(snap.alarms.len(), 1);
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        // "é" is two bytes: a cut at 3 bytes keeps one "é" and stops before the second
        assert_eq!(truncate("éé", 3), ("é".to_owned(), true));
        assert_eq!(truncate("abc", 3), ("abc".to_owned(), false));
        assert_eq!(truncate("€", 2), (String::new(), true));
    }
}
