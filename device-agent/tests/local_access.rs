//! Invariant 7, the cabinet side of the parcel workflow, all OFFLINE (no gateway, MQTT off) on
//! a real Modbus lock-board simulator: credential sets in parts, pickup, courier sign-in,
//! deposit of a known parcel, the next size up, a chosen size for an unknown parcel,
//! collection, drop-off, and the keypad lock after wrong codes (surviving a restart).
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use locker_agent::config::SizeName;
use locker_agent::creds::secret_hash;
use locker_agent::{Access, AgentConfig, AgentHandle, Key, ManualClock, Refusal, Storage};
use locker_schemas::{
    AccessAction, AlarmKind, CabinetId, CompartmentId, CredKind, Credential, Credentials,
    DoorCause, DownlinkBody, LocalAccess, ScanSource, Size, Uplink, UplinkBody,
};
use support::*;

const CAB: &str = "CAB-LOCAL";

fn cred(kind: CredKind, code: &str, c: Option<u16>, reference: &str, carrier: &str) -> Credential {
    Credential {
        kind,
        secret_hash: if code.is_empty() {
            Vec::new()
        } else {
            secret_hash(code, &CabinetId::new(CAB).unwrap()).to_vec()
        },
        compartment: c.map(CompartmentId),
        reference: reference.into(),
        expires_at: locker_schemas::now_millis() + 3_600_000,
        carrier: carrier.into(),
    }
}

fn whole(version: u64, entries: Vec<Credential>) -> DownlinkBody {
    DownlinkBody::Credentials(Credentials {
        version,
        entries,
        part: 0,
        parts: 1,
    })
}

fn badge(reference: &str, carrier: &str) -> Credential {
    cred(
        CredKind::Deposit,
        &format!("BADGE-{reference}"),
        None,
        reference,
        carrier,
    )
}

/// One board of 16: 1-4 S, 5-8 M, 9-12 L, 13-16 XL.
struct Cabinet {
    _d: tempfile::TempDir,
    b: SimBoard,
    st: Storage,
    cfg: AgentConfig,
    clock: ManualClock,
    h: AgentHandle,
}

async fn cabinet(tune: impl FnOnce(&mut AgentConfig)) -> Cabinet {
    let (d, dir) = tempdir();
    let b = board(1).await;
    let st = storage(&dir);
    let mut cfg = config(CAB, &dir, &[&b]);
    cfg.lock_boards[0].sizes = [SizeName::S, SizeName::M, SizeName::L, SizeName::Xl]
        .iter()
        .flat_map(|s| [*s; 4])
        .collect();
    tune(&mut cfg);
    let clock = ManualClock::new(locker_schemas::now_millis());
    let h = start_with_clock(cfg.clone(), &st, Arc::new(clock.clone())).await;
    ready(&h, 1).await;
    assert!(!h.status().mqtt_connected, "offline");
    Cabinet {
        _d: d,
        b,
        st,
        cfg,
        clock,
        h,
    }
}

impl Cabinet {
    async fn restart(self) -> Self {
        let Cabinet {
            _d,
            b,
            st,
            cfg,
            clock,
            h,
        } = self;
        h.shutdown().await;
        let h = start_with_clock(cfg.clone(), &st, Arc::new(clock.clone())).await;
        ready(&h, 1).await;
        Cabinet {
            _d,
            b,
            st,
            cfg,
            clock,
            h,
        }
    }

    async fn scan(&self, source: ScanSource, v: &str) -> Access {
        self.h.scan(source, v).await.unwrap().access
    }

    async fn key(&self, k: Key) -> Access {
        self.h.key(k).await.unwrap().access
    }

    async fn sign_in(&self, reference: &str) {
        let r = self
            .scan(ScanSource::Rfid, &format!("BADGE-{reference}"))
            .await;
        assert_eq!(r, Access::SignedIn(reference.into()));
    }

    async fn wait_open(&self, c: u16) {
        eventually(5, &format!("door {c} open"), || async {
            self.h.status().open_doors == vec![CompartmentId(c)]
        })
        .await;
    }

    async fn close(&self, c: u16) {
        self.b.sim.close_door(usize::from(c - 1)).unwrap();
        eventually(5, "doors closed", || async {
            self.h.status().open_doors.is_empty()
        })
        .await;
    }

    async fn accesses(&self) -> Vec<LocalAccess> {
        accesses(&self.h.outbox().await.unwrap())
    }
}

fn accesses(ob: &[Uplink]) -> Vec<LocalAccess> {
    ob.iter()
        .filter_map(|u| match &u.body {
            UplinkBody::Access(a) => Some(a.clone()),
            _ => None,
        })
        .collect()
}

fn access(
    c: u16,
    action: AccessAction,
    reference: &str,
    source: ScanSource,
    actor: &str,
) -> LocalAccess {
    LocalAccess {
        compartment: CompartmentId(c),
        action,
        reference: reference.into(),
        source,
        actor: actor.into(),
    }
}

#[tokio::test]
async fn offline_pickup_once_from_the_cache_which_survives_a_restart() {
    let k = cabinet(|_| {}).await;
    let mut expired = cred(CredKind::Pickup, "999999", Some(6), "ORD-OLD", "");
    expired.expires_at = 1_000;
    let set = vec![
        cred(CredKind::Pickup, "123456", Some(5), "ORD-5", ""),
        expired,
    ];
    k.h.downlink(whole(7, set)).await.unwrap();
    assert_eq!(k.h.status().creds_version, 7);

    assert_eq!(
        k.scan(ScanSource::Keypad, "123456").await,
        Access::Pickup(CompartmentId(5))
    );
    k.wait_open(5).await;
    assert_eq!(k.b.sim.pulse_count(4).unwrap(), 1);
    let ob = k.h.outbox().await.unwrap();
    let kinds: Vec<_> = ob.iter().map(|u| u.body.kind().as_str()).collect();
    assert_eq!(
        kinds,
        vec!["scan", "door", "access"],
        "reported once the door opened"
    );
    assert_eq!(doors(&ob), vec![door(5, true, DoorCause::LocalAccess)]);
    assert_eq!(
        accesses(&ob),
        vec![access(
            5,
            AccessAction::Pickup,
            "ORD-5",
            ScanSource::Keypad,
            ""
        )]
    );
    k.close(5).await;

    // Used up; expired and unknown codes are wrong codes.
    for code in ["123456", "999999", "000000"] {
        let r = k.h.scan(ScanSource::Keypad, code).await.unwrap();
        assert_eq!(r.access, Access::Refused(Refusal::WrongCode), "{code}");
        assert!(r.seq.is_some());
    }
    assert_eq!(k.b.sim.total_pulses(), 1);
    assert_eq!(k.h.status().counters.wrong_codes, 3);

    let k = k.restart().await;
    assert_eq!(k.h.status().creds_version, 7);
    assert_eq!(
        k.scan(ScanSource::Keypad, "123456").await,
        Access::Refused(Refusal::WrongCode)
    );
    assert_eq!(k.b.sim.total_pulses(), 1);
}

#[tokio::test]
async fn a_set_in_three_parts_is_applied_only_complete_even_interleaved() {
    let k = cabinet(|c| c.access.max_wrong_codes = 20).await;
    let part = |version, part, code: &str, c| {
        DownlinkBody::Credentials(Credentials {
            version,
            entries: vec![cred(
                CredKind::Pickup,
                code,
                Some(c),
                &format!("ORD-{code}"),
                "",
            )],
            part,
            parts: 3,
        })
    };
    k.h.downlink(whole(
        1,
        vec![cred(CredKind::Pickup, "111", Some(1), "ORD-111", "")],
    ))
    .await
    .unwrap();
    // Two of three parts of version 2: nothing changes.
    k.h.downlink(part(2, 0, "200", 2)).await.unwrap();
    k.h.downlink(part(2, 2, "222", 3)).await.unwrap();
    assert_eq!(k.h.status().creds_version, 1);
    assert_eq!(
        k.scan(ScanSource::Keypad, "200").await,
        Access::Refused(Refusal::WrongCode),
        "never half a set"
    );
    // Version 3 starts: version 2 is discarded, its late part ignored.
    k.h.downlink(part(3, 1, "311", 4)).await.unwrap();
    k.h.downlink(part(2, 1, "211", 5)).await.unwrap();
    k.h.downlink(part(3, 0, "300", 6)).await.unwrap();
    assert_eq!(k.h.status().creds_version, 1);
    // Malformed parts are refused and counted.
    for (p, n) in [(0u16, 0u16), (3, 3)] {
        let bad = DownlinkBody::Credentials(Credentials {
            version: 3,
            entries: Vec::new(),
            part: p,
            parts: n,
        });
        k.h.downlink(bad).await.unwrap();
    }
    assert_eq!(k.h.status().counters.bad_cred_parts, 2);
    assert_eq!(k.h.status().creds_version, 1);
    k.h.downlink(part(3, 2, "322", 7)).await.unwrap();
    assert_eq!(k.h.status().creds_version, 3);

    assert_eq!(
        k.scan(ScanSource::Keypad, "111").await,
        Access::Refused(Refusal::WrongCode),
        "the old set is gone"
    );
    for code in ["200", "222", "211"] {
        assert_eq!(
            k.scan(ScanSource::Keypad, code).await,
            Access::Refused(Refusal::WrongCode),
            "{code} of version 2"
        );
    }
    assert_eq!(
        k.scan(ScanSource::Keypad, "322").await,
        Access::Pickup(CompartmentId(7))
    );
    k.wait_open(7).await;
}

#[tokio::test]
async fn a_courier_deposits_a_known_parcel_offline_and_over_the_tcp_scanner() {
    let k = cabinet(|_| {}).await;
    let set = vec![
        badge("COURIER-1", "DHL"),
        cred(CredKind::Parcel, "PKG-5", Some(5), "ORD-5", "DHL"),
        cred(CredKind::Parcel, "PKG-6", Some(6), "ORD-6", "DHL"),
    ];
    k.h.downlink(whole(1, set)).await.unwrap();

    k.sign_in("COURIER-1").await;
    assert_eq!(
        k.scan(ScanSource::Barcode, "PKG-5").await,
        Access::DepositInto(CompartmentId(5))
    );
    k.wait_open(5).await;
    assert_eq!(k.b.sim.pulse_count(4).unwrap(), 1);
    assert_eq!(
        k.accesses().await,
        vec![access(
            5,
            AccessAction::Deposit,
            "ORD-5",
            ScanSource::Barcode,
            "COURIER-1"
        )]
    );
    k.b.sim.put_parcel(4).unwrap();
    k.close(5).await;
    // The parcel credential is spent: the same barcode is now an unknown parcel.
    assert_eq!(
        k.scan(ScanSource::Barcode, "PKG-5").await,
        Access::ParcelNoted
    );

    // The same over a TCP scanner client, with key lines.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(locker_agent::scanner::serve_tcp(l, k.h.scanner()));
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut s = tokio::io::BufReader::new(s);
    assert_eq!(say(&mut s, "key:logout").await, "ok - logout");
    let r = say(&mut s, "bar:PKG-6").await;
    assert!(r == "err no courier signed in", "{r}");
    let r = say(&mut s, "rfid:BADGE-COURIER-1").await;
    assert!(
        r.starts_with("ok ") && r.ends_with(" courier COURIER-1"),
        "{r}"
    );
    let r = say(&mut s, "bar:PKG-6").await;
    assert!(r.starts_with("ok ") && r.ends_with(" deposit 6"), "{r}");
    assert_eq!(
        say(&mut s, "key:open-all").await,
        "err empty, too long or unknown key"
    );
    k.wait_open(6).await;
    assert_eq!(k.b.sim.pulse_count(5).unwrap(), 1);
    assert_eq!(k.b.sim.total_pulses(), 2);
    assert_eq!(k.h.status().counters.local_accesses, 2);
}

#[tokio::test]
async fn parcels_open_nothing_without_a_courier_of_their_carrier() {
    let k = cabinet(|c| c.access.courier_session_s = 60).await;
    let set = vec![
        badge("UPS-1", "UPS"),
        badge("DHL-1", "DHL"),
        cred(CredKind::Parcel, "PKG-5", Some(5), "ORD-5", "DHL"),
    ];
    k.h.downlink(whole(1, set)).await.unwrap();

    assert_eq!(
        k.scan(ScanSource::Barcode, "PKG-5").await,
        Access::Refused(Refusal::NoCourier)
    );
    k.sign_in("UPS-1").await;
    assert_eq!(
        k.scan(ScanSource::Barcode, "PKG-5").await,
        Access::Refused(Refusal::WrongCarrier)
    );
    // A new badge replaces the session; then it times out.
    k.sign_in("DHL-1").await;
    k.clock.advance(60_000);
    assert_eq!(
        k.scan(ScanSource::Barcode, "PKG-5").await,
        Access::Refused(Refusal::NoCourier),
        "the session ended"
    );
    assert_eq!(
        k.key(Key::Bigger).await,
        Access::Refused(Refusal::NoCourier)
    );
    assert_eq!(k.b.sim.total_pulses(), 0);
    let c = k.h.status().counters;
    assert_eq!(c.refused_accesses, 4);
    assert_eq!(c.wrong_codes, 0, "a refused parcel is not a wrong code");
    assert!(k.accesses().await.is_empty());
}

/// Spares: 3 (S, shared), 6 (M, UPS), 7 (M, DHL), 10 (L, shared).
fn spares() -> Vec<Credential> {
    vec![
        cred(CredKind::Spare, "", Some(3), "", ""),
        cred(CredKind::Spare, "", Some(6), "", "UPS"),
        cred(CredKind::Spare, "", Some(7), "", "DHL"),
        cred(CredKind::Spare, "", Some(9), "", "UPS"),
        cred(CredKind::Spare, "", Some(10), "", ""),
    ]
}

#[tokio::test]
async fn too_small_opens_the_next_size_up() {
    let k = cabinet(|_| {}).await;
    let mut set = spares();
    set.push(badge("DHL-1", "DHL"));
    set.push(cred(CredKind::Parcel, "PKG-2", Some(2), "ORD-2", "DHL"));
    k.h.downlink(whole(1, set)).await.unwrap();
    assert_eq!(
        k.key(Key::Bigger).await,
        Access::Refused(Refusal::NoCourier)
    );
    k.sign_in("DHL-1").await;
    assert_eq!(k.key(Key::Bigger).await, Access::Refused(Refusal::NoParcel));

    // The reserved S compartment 2 holds something: refused, but `bigger` still works.
    k.b.sim.put_parcel(1).unwrap();
    assert_eq!(
        k.scan(ScanSource::Barcode, "PKG-2").await,
        Access::Refused(Refusal::Full)
    );
    // The smallest larger spare usable by DHL: 7 (M); 3 is not larger, 6 is UPS's.
    assert_eq!(
        k.key(Key::Bigger).await,
        Access::DepositInto(CompartmentId(7))
    );
    k.wait_open(7).await;
    assert_eq!(k.b.sim.pulse_count(6).unwrap(), 1);
    assert_eq!(k.b.sim.total_pulses(), 1);
    assert_eq!(
        k.accesses().await,
        vec![access(
            7,
            AccessAction::Deposit,
            "ORD-2",
            ScanSource::Barcode,
            "DHL-1"
        )]
    );
    k.b.sim.put_parcel(6).unwrap();
    k.close(7).await;
    // The spare and the parcel credential are used up.
    assert_eq!(
        k.scan(ScanSource::Barcode, "PKG-2").await,
        Access::ParcelNoted
    );
    assert_eq!(
        k.key(Key::Size(Size::M)).await,
        Access::Refused(Refusal::NoSpare)
    );
}

#[tokio::test]
async fn an_unknown_parcel_goes_into_a_spare_of_the_size_picked() {
    let k = cabinet(|_| {}).await;
    let mut set = spares();
    set.push(badge("DHL-1", "DHL"));
    k.h.downlink(whole(1, set)).await.unwrap();
    k.sign_in("DHL-1").await;
    assert_eq!(
        k.key(Key::Size(Size::L)).await,
        Access::Refused(Refusal::NoParcel),
        "no barcode scanned yet"
    );
    assert_eq!(
        k.scan(ScanSource::Barcode, "TRK-9").await,
        Access::ParcelNoted
    );
    assert_eq!(
        k.key(Key::Size(Size::Xl)).await,
        Access::Refused(Refusal::NoSpare)
    );
    // 9 is an L spare of UPS: 10 (shared) is used.
    assert_eq!(
        k.key(Key::Size(Size::L)).await,
        Access::DepositInto(CompartmentId(10))
    );
    k.wait_open(10).await;
    assert_eq!(k.b.sim.pulse_count(9).unwrap(), 1);
    assert_eq!(
        k.accesses().await,
        vec![access(
            10,
            AccessAction::Deposit,
            "tracking:TRK-9",
            ScanSource::Barcode,
            "DHL-1"
        )]
    );
    assert_eq!(k.b.sim.total_pulses(), 1);
}

#[tokio::test]
async fn collect_opens_the_carriers_parcels_one_by_one() {
    let k = cabinet(|_| {}).await;
    let set = vec![
        badge("DHL-1", "DHL"),
        cred(CredKind::Collect, "", Some(12), "ORD-12", "DHL"),
        cred(CredKind::Collect, "", Some(8), "ORD-8", "UPS"),
        cred(CredKind::Collect, "", Some(4), "ORD-4", "DHL"),
    ];
    k.h.downlink(whole(1, set)).await.unwrap();
    assert_eq!(
        k.key(Key::Collect).await,
        Access::Refused(Refusal::NoCourier)
    );
    k.sign_in("DHL-1").await;
    for c in [4, 12] {
        assert_eq!(k.key(Key::Collect).await, Access::Collect(CompartmentId(c)));
        k.wait_open(c).await;
        k.close(c).await;
    }
    assert_eq!(
        k.key(Key::Collect).await,
        Access::Refused(Refusal::NothingToCollect)
    );
    assert_eq!(
        k.accesses().await,
        vec![
            access(
                4,
                AccessAction::Collect,
                "ORD-4",
                ScanSource::Keypad,
                "DHL-1"
            ),
            access(
                12,
                AccessAction::Collect,
                "ORD-12",
                ScanSource::Keypad,
                "DHL-1"
            ),
        ]
    );
    assert_eq!(k.b.sim.total_pulses(), 2);
    assert_eq!(k.key(Key::Logout).await, Access::SignedOut);
    assert_eq!(
        k.key(Key::Collect).await,
        Access::Refused(Refusal::NoCourier)
    );
}

#[tokio::test]
async fn a_drop_off_code_opens_its_compartment_without_a_courier() {
    let k = cabinet(|_| {}).await;
    let set = vec![cred(CredKind::DropOff, "RET-1", Some(3), "RET-ORD", "")];
    k.h.downlink(whole(1, set)).await.unwrap();
    assert_eq!(
        k.scan(ScanSource::Qr, "RET-1").await,
        Access::DepositInto(CompartmentId(3))
    );
    k.wait_open(3).await;
    assert_eq!(k.b.sim.pulse_count(2).unwrap(), 1);
    assert_eq!(
        k.accesses().await,
        vec![access(
            3,
            AccessAction::Deposit,
            "RET-ORD",
            ScanSource::Qr,
            ""
        )]
    );
}

fn lock_alarms(ob: &[Uplink]) -> Vec<(bool, String)> {
    ob.iter()
        .filter_map(|u| match &u.body {
            UplinkBody::Alarm(a) if a.kind == AlarmKind::KeypadLocked => {
                Some((a.active, a.detail.clone()))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn wrong_codes_lock_the_keypad_even_across_a_restart() {
    let k = cabinet(|c| {
        c.access.max_wrong_codes = 3;
        c.access.wrong_code_window_s = 60;
        c.access.lockout_s = 120;
    })
    .await;
    let set = vec![
        cred(CredKind::Pickup, "123456", Some(5), "ORD-5", ""),
        badge("DHL-1", "DHL"),
    ];
    k.h.downlink(whole(1, set)).await.unwrap();

    // Two wrong codes, then the window passes: no lock.
    for code in ["1", "2"] {
        k.scan(ScanSource::Keypad, code).await;
    }
    k.clock.advance(60_000);
    for code in ["3", "4"] {
        k.scan(ScanSource::Qr, code).await;
    }
    assert!(k.h.status().alarms.is_empty());
    assert_eq!(
        k.scan(ScanSource::Rfid, "BADGE-NOBODY").await,
        Access::Refused(Refusal::WrongCode)
    );
    let detail = "3 wrong codes in 60 s; locked for 120 s";
    let st = k.h.status();
    assert_eq!(st.alarms.len(), 1);
    assert_eq!(
        (st.alarms[0].kind, st.alarms[0].detail.as_str()),
        (AlarmKind::KeypadLocked, detail)
    );
    assert_eq!((st.counters.wrong_codes, st.counters.lockouts), (5, 1));

    // Locked: even the right code is refused; a courier's badge still signs in.
    assert_eq!(
        k.scan(ScanSource::Keypad, "123456").await,
        Access::Refused(Refusal::Locked)
    );
    k.sign_in("DHL-1").await;
    assert_eq!(k.b.sim.total_pulses(), 0);

    // A restart does not lift the lock.
    k.clock.advance(60_000);
    let k = k.restart().await;
    assert_eq!(k.h.status().alarms.len(), 1);
    assert_eq!(
        k.scan(ScanSource::Keypad, "123456").await,
        Access::Refused(Refusal::Locked)
    );
    // Its end does.
    k.clock.advance(60_000);
    assert_eq!(
        k.scan(ScanSource::Keypad, "123456").await,
        Access::Pickup(CompartmentId(5))
    );
    k.wait_open(5).await;
    assert!(k.h.status().alarms.is_empty());
    let ob = k.h.outbox().await.unwrap();
    assert_eq!(
        lock_alarms(&ob),
        vec![
            (true, detail.to_owned()),
            (false, "keypad unlocked".to_owned())
        ],
        "raised once, cleared once"
    );
    assert_eq!(k.b.sim.total_pulses(), 1);
}

async fn say(s: &mut tokio::io::BufReader<tokio::net::TcpStream>, line: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    s.get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_line(&mut out).await.unwrap();
    out.trim_end().to_owned()
}
