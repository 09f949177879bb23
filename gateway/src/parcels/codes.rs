//! Codes and credential sets: recipient PINs (unique among the live codes of a cabinet) and QR
//! tokens, drop-off codes for returns, and each cabinet's credential set built from its orders,
//! the couriers allowed at its site and its free compartments, split into parts that each fit
//! a downlink.

use std::collections::HashSet;

use locker_schemas::codec::encode_downlink;
use locker_schemas::{
    secret_hash, CabinetId, CredKind, Credential, Credentials, Downlink, DownlinkBody, Millis,
};
use rand::Rng;

use super::alloc::CabinetSlots;
use super::model::{Courier, Order, OrderKind, OrderState};

/// The largest encoded part of a credential set, bytes (well under the 64 KiB payload limit,
/// so a part also fits a cabinet's MQTT maximum packet on a poor link).
pub const MAX_PART_BYTES: usize = 16 * 1024;

/// How long a courier's sign-in credential stays valid in a cabinet's cache without a refresh.
pub const COURIER_VALIDITY_MS: u64 = 7 * 24 * 3_600_000;

/// A new PIN of `len` digits whose hash at `cabinet` is not among `live`.
pub fn new_pin(len: u8, cabinet: &CabinetId, live: &HashSet<[u8; 32]>) -> (String, [u8; 32]) {
    let len = len.clamp(6, 8) as usize;
    let mut rng = rand::thread_rng();
    loop {
        let pin: String = (0..len)
            .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
            .collect();
        let h = secret_hash(&pin, cabinet);
        if !live.contains(&h) {
            return (pin, h);
        }
    }
}

/// A new QR token (128 random bits, hex) and its hash at `cabinet`.
pub fn new_qr(cabinet: &CabinetId) -> (String, [u8; 32]) {
    let bytes: [u8; 16] = rand::thread_rng().gen();
    let token = format!("QR-{}", hex::encode(bytes));
    let h = secret_hash(&token, cabinet);
    (token, h)
}

/// The credentials of one cabinet: what its orders need, its site's couriers, its spares.
pub fn build_set<'a>(
    cabinet: &CabinetId,
    orders: impl Iterator<Item = &'a Order>,
    couriers: impl Iterator<Item = &'a Courier>,
    slots: Option<&CabinetSlots>,
    now: Millis,
) -> Vec<Credential> {
    let mut out = Vec::new();
    let far = now.saturating_add(COURIER_VALIDITY_MS);
    for o in orders {
        let (Some(c), Some(k)) = (o.compartment, o.cabinet.as_ref()) else {
            continue;
        };
        if k != cabinet {
            continue;
        }
        let reference = o.id.to_string();
        let carrier = o.carrier.to_string();
        let mut push = |kind, hash: Vec<u8>, carrier: String, expires_at| {
            out.push(Credential {
                kind,
                secret_hash: hash,
                compartment: Some(c),
                reference: reference.clone(),
                expires_at,
                carrier,
            })
        };
        match (o.kind, o.state) {
            (OrderKind::Delivery, OrderState::Reserved) => push(
                CredKind::Parcel,
                secret_hash(&o.tracking, cabinet).to_vec(),
                carrier,
                o.reserved_until.unwrap_or(far),
            ),
            (OrderKind::Return, OrderState::Reserved) => {
                if let Some(h) = o.pin_hash {
                    push(
                        CredKind::DropOff,
                        h.to_vec(),
                        String::new(),
                        o.reserved_until.unwrap_or(far),
                    );
                }
            }
            (OrderKind::Delivery, OrderState::Ready) => {
                let until = o.pickup_deadline.unwrap_or(far);
                for h in [o.pin_hash, o.qr_hash].into_iter().flatten() {
                    push(CredKind::Pickup, h.to_vec(), String::new(), until);
                }
            }
            (_, OrderState::Expired | OrderState::ReturnRequested)
            | (OrderKind::Return, OrderState::Deposited) => {
                push(CredKind::Collect, Vec::new(), carrier, far)
            }
            _ => {}
        }
    }
    for courier in couriers.filter(|c| c.active) {
        for code in [&courier.badge, &courier.pin].into_iter().flatten() {
            out.push(Credential {
                kind: CredKind::Deposit,
                secret_hash: secret_hash(code, cabinet).to_vec(),
                compartment: None,
                reference: courier.id.to_string(),
                expires_at: far,
                carrier: courier.carrier.to_string(),
            });
        }
    }
    if let Some(slots) = slots {
        for (c, s) in &slots.slots {
            if s.holder.is_none() && s.out_of_service.is_none() {
                out.push(Credential {
                    kind: CredKind::Spare,
                    secret_hash: Vec::new(),
                    compartment: Some(*c),
                    reference: String::new(),
                    expires_at: far,
                    carrier: s
                        .partition
                        .as_ref()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                });
            }
        }
    }
    out
}

fn encoded_len(set: &Credentials) -> usize {
    encode_downlink(&Downlink {
        body: DownlinkBody::Credentials(set.clone()),
    })
    .map_or(usize::MAX, |b| b.len())
}

/// Splits a set into as few parts as keep each encoded part within `max_bytes`.
pub fn split(version: u64, entries: Vec<Credential>, max_bytes: usize) -> Vec<Credentials> {
    let whole = Credentials {
        version,
        entries,
        part: 0,
        parts: 1,
    };
    if encoded_len(&whole) <= max_bytes {
        return vec![whole];
    }
    let entries = whole.entries;
    let envelope = encoded_len(&Credentials {
        version,
        entries: Vec::new(),
        part: u16::MAX,
        parts: u16::MAX,
    }) + 8; // the array header grows with the entry count
    let empty = encoded_len(&Credentials {
        version,
        entries: Vec::new(),
        part: 0,
        parts: 1,
    });
    let mut parts: Vec<Vec<Credential>> = vec![Vec::new()];
    let mut size = envelope;
    for e in entries {
        let one = encoded_len(&Credentials {
            version,
            entries: vec![e.clone()],
            part: 0,
            parts: 1,
        })
        .saturating_sub(empty);
        if size + one > max_bytes && parts.last().is_some_and(|p| !p.is_empty()) {
            parts.push(Vec::new());
            size = envelope;
        }
        size += one;
        if let Some(p) = parts.last_mut() {
            p.push(e);
        }
    }
    let n = u16::try_from(parts.len()).unwrap_or(u16::MAX);
    parts
        .into_iter()
        .enumerate()
        .map(|(i, entries)| Credentials {
            version,
            entries,
            part: u16::try_from(i).unwrap_or(u16::MAX),
            parts: n,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use locker_schemas::{CarrierId, CompartmentId, CourierId, OrderId, SiteId};

    use crate::json::SizeName;
    use crate::parcels::model::Recipient;

    #[test]
    fn pins_are_unique_among_the_live_codes_of_a_cabinet() {
        let cab = CabinetId::new("CAB-1").expect("id");
        let mut live = HashSet::new();
        for _ in 0..2_000 {
            let (pin, h) = new_pin(6, &cab, &live);
            assert_eq!(pin.len(), 6);
            assert!(pin.chars().all(|c| c.is_ascii_digit()));
            assert!(live.insert(h), "duplicate live PIN");
        }
        let (qr, h) = new_qr(&cab);
        assert_eq!(h, secret_hash(&qr, &cab));
    }

    /// The largest cabinet: 96 compartments all holding a ready parcel (PIN and QR each) and
    /// 200 courier badges with PINs. Every part fits, and together they are the whole set.
    #[test]
    fn the_largest_cabinet_set_is_sent_in_parts_that_each_fit() {
        let cab = CabinetId::new("CAB-BIG-0001").expect("id");
        let site = SiteId::new("big").expect("site");
        let carrier = CarrierId::new("dhl").expect("c");
        let orders: Vec<Order> = (1..=96u16)
            .map(|c| Order {
                id: OrderId::generate(),
                kind: OrderKind::Delivery,
                carrier: carrier.clone(),
                site: site.clone(),
                cabinet: Some(cab.clone()),
                requested_cabinet: None,
                compartment: Some(CompartmentId(c)),
                size: SizeName::M,
                tracking: format!("JJD000{c:010}"),
                reference: None,
                recipient: Recipient::default(),
                state: OrderState::Ready,
                exception: None,
                created_at: 0,
                created_by: "t".into(),
                updated_at: 0,
                reserved_until: None,
                pickup_deadline: Some(1_000),
                pickup_window_h: 72,
                pickup_window_min: None,
                reminded: false,
                pin_hash: Some([1; 32]),
                qr_hash: Some([2; 32]),
                idempotency_key: None,
                pending_unlock: None,
                history: Vec::new(),
            })
            .collect();
        let couriers: Vec<Courier> = (0..200)
            .map(|i| Courier {
                id: CourierId::new(format!("dhl-courier-{i:04}")).expect("id"),
                carrier: carrier.clone(),
                name: String::new(),
                badge: Some(format!("BADGE-{i:08}")),
                pin: Some(format!("{i:08}")),
                active: true,
            })
            .collect();
        let set = build_set(&cab, orders.iter(), couriers.iter(), None, 0);
        assert_eq!(set.len(), 96 * 2 + 200 * 2);
        let parts = split(9, set.clone(), MAX_PART_BYTES);
        assert!(parts.len() > 1, "{} parts", parts.len());
        println!(
            "largest cabinet: {} parts of at most {MAX_PART_BYTES} bytes",
            parts.len()
        );
        let mut back = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(
                (p.part as usize, p.parts as usize, p.version),
                (i, parts.len(), 9)
            );
            let len = encoded_len(p);
            assert!(len <= MAX_PART_BYTES, "part {i}: {len} bytes");
            back.extend(p.entries.clone());
        }
        assert_eq!(back, set);
        // a small set is one part
        assert_eq!(split(1, set[..3].to_vec(), MAX_PART_BYTES).len(), 1);
    }
}
