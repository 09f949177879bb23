//! End-to-end tests of the fleet PKI on real files in temp dirs, checked with rustls' own
//! verifiers (ring provider) and, when installed, with the `openssl` command-line tool.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use locker_broker_config::pki::{
    identity_from_cert_der, revoked_serials, verify_crl_signature, InitOptions, IssuedCert, Pki,
    PkiError, Role,
};
use locker_schemas::CabinetId;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

fn cab(id: &str) -> CabinetId {
    CabinetId::new(id).expect("valid cabinet id")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(pki: &Pki) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(pki.ca_cert_der().to_vec()))
        .expect("CA is a valid trust anchor");
    Arc::new(roots)
}

fn der_of_pem(path: &Path, label: &str) -> Vec<u8> {
    let text = std::fs::read(path).expect("read PEM");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).expect("PEM");
    assert_eq!(pem.label, label, "{}", path.display());
    pem.contents
}

/// A client verifier like the gateway's edge builds: fleet CA, plus `crl.pem` if `with_crl`.
fn client_verifier(pki: &Pki, with_crl: bool) -> Arc<dyn ClientCertVerifier> {
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots(pki), provider());
    if with_crl {
        let crl = der_of_pem(&pki.paths().crl(), "X509 CRL");
        builder = builder.with_crls([CertificateRevocationListDer::from(crl)]);
    }
    builder.build().expect("verifier builds")
}

fn verify_client(
    verifier: &dyn ClientCertVerifier,
    cert: &IssuedCert,
) -> Result<(), rustls::Error> {
    verifier
        .verify_client_cert(
            &CertificateDer::from(cert.cert_der.clone()),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn init_issue_list_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let mut pki = Pki::init(&dir, &[]).unwrap();
    assert!(pki.list().is_empty());
    for p in [
        pki.paths().ca_cert(),
        pki.paths().ca_key(),
        pki.paths().server_cert(),
        pki.paths().server_key(),
        pki.paths().crl(),
        pki.paths().index(),
    ] {
        assert!(p.is_file(), "{} exists after init", p.display());
    }
    assert!(revoked_serials(&std::fs::read(pki.paths().crl()).unwrap())
        .unwrap()
        .is_empty());

    let a = pki.issue_cabinet(&cab("CAB-0001")).unwrap();
    let b = pki.issue_integrator("acme-erp").unwrap();
    assert_eq!(a.cert_path, dir.join("cabinets/CAB-0001.pem"));
    assert_eq!(a.key_path, dir.join("cabinets/CAB-0001.key"));
    assert_eq!(b.cert_path, dir.join("integrators/acme-erp.pem"));
    assert_eq!(std::fs::read_to_string(&a.cert_path).unwrap(), a.cert_pem);
    assert_eq!(std::fs::read_to_string(&b.key_path).unwrap(), b.key_pem);
    assert_eq!(a.record.serial.len(), 32, "16-byte serial");
    assert_ne!(a.record.serial, b.record.serial);
    let days = (a.record.not_after - a.record.not_before).whole_days();
    assert!(
        (729..=731).contains(&days),
        "default leaf validity ~2y, got {days}d"
    );

    let listed = pki.list();
    assert_eq!(listed, vec![a.record.clone(), b.record.clone()]);
    assert_eq!(listed[0].role, Role::Cabinet);
    assert_eq!(listed[1].role, Role::Integrator);

    // A fresh handle (another process) sees the same index.
    let reopened = Pki::open(&dir).unwrap();
    assert_eq!(reopened.list(), listed);
    assert_eq!(reopened.ca_cert_der(), pki.ca_cert_der());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pki.paths().index()).unwrap()).unwrap();
    assert_eq!(json["certs"][0]["identity"], "CAB-0001");
    assert_eq!(json["certs"][0]["role"], "cabinet");
    assert_eq!(json["certs"][0]["serial"], a.record.serial.as_str());
    assert!(json["certs"][0]["revoked_at"].is_null());

    // Validity is configurable and never outlives the CA.
    pki.set_leaf_validity(time::Duration::days(30)).unwrap();
    let short = pki.issue_cabinet(&cab("CAB-0002")).unwrap();
    assert!((short.record.not_after - short.record.not_before).whole_days() <= 31);
    pki.set_leaf_validity(time::Duration::days(365 * 50))
        .unwrap();
    let long = pki.issue_cabinet(&cab("CAB-0003")).unwrap();
    assert_eq!(long.record.not_after, pki.ca_not_after());
}

#[test]
fn keys_are_0600_and_certificates_0644() {
    let tmp = tempfile::tempdir().unwrap();
    let mut pki = Pki::init(tmp.path(), &[]).unwrap();
    let c = pki.issue_cabinet(&cab("CAB-1")).unwrap();
    let i = pki.issue_integrator("crm").unwrap();
    let p = pki.paths();
    for key in [
        p.ca_key(),
        p.server_key(),
        c.key_path.clone(),
        i.key_path.clone(),
    ] {
        assert_eq!(mode(&key), 0o600, "{}", key.display());
    }
    for public in [
        p.ca_cert(),
        p.server_cert(),
        p.crl(),
        p.index(),
        c.cert_path.clone(),
        i.cert_path.clone(),
    ] {
        assert_eq!(mode(&public), 0o644, "{}", public.display());
    }
    // No temp files are left behind by the atomic writes.
    for dir in [p.dir().to_path_buf(), p.role_dir(Role::Cabinet)] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !name.contains(".tmp"),
                "leftover {name} in {}",
                dir.display()
            );
        }
    }
}

#[test]
fn cabinet_cert_chains_to_the_ca_and_carries_cn_ou_o() {
    let tmp = tempfile::tempdir().unwrap();
    let mut pki = Pki::init(tmp.path(), &[]).unwrap();
    let cert = pki.issue_cabinet(&cab("site_3.bank-2")).unwrap();

    verify_client(client_verifier(&pki, false).as_ref(), &cert).expect("chains to the fleet CA");
    verify_client(client_verifier(&pki, true).as_ref(), &cert).expect("not revoked");

    let (role, identity, serial) = identity_from_cert_der(&cert.cert_der).unwrap();
    assert_eq!(role, Role::Cabinet);
    assert_eq!(identity, "site_3.bank-2");
    assert_eq!(serial, cert.record.serial);

    let (_, x509) = X509Certificate::from_der(&cert.cert_der).unwrap();
    let subject = x509.subject();
    let one = |it: Vec<&str>| -> String {
        assert_eq!(it.len(), 1);
        it[0].to_owned()
    };
    assert_eq!(
        one(subject
            .iter_common_name()
            .map(|a| a.as_str().unwrap())
            .collect()),
        "site_3.bank-2"
    );
    assert_eq!(
        one(subject
            .iter_organizational_unit()
            .map(|a| a.as_str().unwrap())
            .collect()),
        "cabinet"
    );
    assert_eq!(
        one(subject
            .iter_organization()
            .map(|a| a.as_str().unwrap())
            .collect()),
        "Locker Hub fleet"
    );
    let eku = x509.extended_key_usage().unwrap().expect("has EKU").value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(!x509.is_ca());

    let integrator = pki.issue_integrator("acme").unwrap();
    verify_client(client_verifier(&pki, true).as_ref(), &integrator).unwrap();
    let (role, identity, _) = identity_from_cert_der(&integrator.cert_der).unwrap();
    assert_eq!((role, identity.as_str()), (Role::Integrator, "acme"));
}

#[test]
fn server_cert_serves_its_names_and_is_no_client_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let names = vec!["gw.example".to_owned(), "10.1.2.3".to_owned()];
    let pki = Pki::init(tmp.path(), &names).unwrap();
    let server_der = der_of_pem(&pki.paths().server_cert(), "CERTIFICATE");
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(&pki), provider())
        .build()
        .unwrap();
    let check = |name: &str| {
        verifier.verify_server_cert(
            &CertificateDer::from(server_der.clone()),
            &[],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
    };
    check("gw.example").expect("DNS SAN");
    check("10.1.2.3").expect("IP SAN");
    assert!(check("localhost").is_err());

    // Defaults: localhost and 127.0.0.1.
    let tmp2 = tempfile::tempdir().unwrap();
    let pki2 = Pki::init(tmp2.path(), &[]).unwrap();
    let der2 = der_of_pem(&pki2.paths().server_cert(), "CERTIFICATE");
    let v2 = WebPkiServerVerifier::builder_with_provider(roots(&pki2), provider())
        .build()
        .unwrap();
    for name in ["localhost", "127.0.0.1"] {
        v2.verify_server_cert(
            &CertificateDer::from(der2.clone()),
            &[],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    // The server certificate is not a client identity, and rustls refuses it as a client
    // certificate (serverAuth only).
    assert!(matches!(
        identity_from_cert_der(&server_der),
        Err(PkiError::NotFleetCert(_))
    ));
    let as_client = client_verifier(&pki, true).verify_client_cert(
        &CertificateDer::from(server_der),
        &[],
        UnixTime::now(),
    );
    assert!(as_client.is_err());

    assert!(matches!(
        Pki::init(
            tempfile::tempdir().unwrap().path(),
            &["bad name".to_owned()]
        ),
        Err(PkiError::InvalidServerName { .. })
    ));
}

#[test]
fn revoke_updates_the_crl_and_rustls_rejects_only_the_revoked_cert() {
    let tmp = tempfile::tempdir().unwrap();
    let mut pki = Pki::init(tmp.path(), &[]).unwrap();
    let bad = pki.issue_cabinet(&cab("CAB-BAD")).unwrap();
    let bad_again = pki.issue_cabinet(&cab("CAB-BAD")).unwrap();
    let good = pki.issue_cabinet(&cab("CAB-GOOD")).unwrap();
    let crl_before = std::fs::read(pki.paths().crl()).unwrap();

    let mut revoked = pki.revoke("CAB-BAD").unwrap();
    revoked.sort();
    let mut expected = vec![bad.record.serial.clone(), bad_again.record.serial.clone()];
    expected.sort();
    assert_eq!(
        revoked, expected,
        "every certificate of the identity is revoked"
    );
    assert!(pki
        .list()
        .iter()
        .all(|r| r.is_revoked() == (r.identity == "CAB-BAD")));

    let crl_pem = std::fs::read(pki.paths().crl()).unwrap();
    let serials = revoked_serials(&crl_pem).unwrap();
    assert!(serials.contains(&bad.record.serial));
    assert!(serials.contains(&bad_again.record.serial));
    assert!(!serials.contains(&good.record.serial));
    // PEM and DER give the same answer; the CRL is signed by the CA.
    let crl_der = der_of_pem(&pki.paths().crl(), "X509 CRL");
    assert_eq!(revoked_serials(&crl_der).unwrap(), serials);
    verify_crl_signature(&crl_pem, pki.ca_cert_der()).unwrap();
    let other_ca = Pki::init(tempfile::tempdir().unwrap().path(), &[]).unwrap();
    assert!(verify_crl_signature(&crl_pem, other_ca.ca_cert_der()).is_err());

    // CRL numbers strictly increase.
    assert!(crl_number(&crl_pem) > crl_number(&crl_before));

    let verifier = client_verifier(&pki, true);
    for cert in [&bad, &bad_again] {
        let err = verify_client(verifier.as_ref(), cert).expect_err("revoked");
        assert_eq!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::Revoked)
        );
    }
    verify_client(verifier.as_ref(), &good).expect("unrevoked cabinet still accepted");

    // Revoking again changes nothing; a re-issued certificate works again.
    assert!(pki.revoke("CAB-BAD").unwrap().is_empty());
    assert_eq!(std::fs::read(pki.paths().crl()).unwrap(), crl_pem);
    let fresh = pki.issue_cabinet(&cab("CAB-BAD")).unwrap();
    verify_client(client_verifier(&pki, true).as_ref(), &fresh).expect("new cert accepted");
    verify_client(client_verifier(&pki, true).as_ref(), &bad).expect_err("old still revoked");

    assert!(matches!(
        pki.revoke("never-issued"),
        Err(PkiError::UnknownIdentity(_))
    ));
}

fn crl_number(crl: &[u8]) -> u64 {
    let (_, pem) = x509_parser::pem::parse_x509_pem(crl).unwrap();
    let (_, parsed) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&pem.contents).unwrap();
    let n = parsed.crl_number().expect("CRL number present");
    n.to_u64_digits().first().copied().unwrap_or(0)
}

#[test]
fn invalid_identities_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let mut pki = Pki::init(tmp.path(), &[]).unwrap();
    for bad in [
        "",
        "a/b",
        "a+",
        "#",
        "a b",
        "ä",
        "x\u{0}",
        &"x".repeat(65),
        "../x",
    ] {
        assert!(CabinetId::new(bad).is_err(), "{bad:?}");
        assert!(
            matches!(
                pki.issue_integrator(bad),
                Err(PkiError::InvalidIdentity { .. })
            ),
            "{bad:?} as integrator"
        );
        assert!(
            matches!(pki.revoke(bad), Err(PkiError::InvalidIdentity { .. })),
            "{bad:?} revoke"
        );
    }
    assert!(pki.list().is_empty());

    // One namespace for cabinets and integrators.
    pki.issue_cabinet(&cab("shared")).unwrap();
    assert!(matches!(
        pki.issue_integrator("shared"),
        Err(PkiError::IdentityTaken {
            existing: Role::Cabinet,
            ..
        })
    ));
    pki.issue_integrator("erp").unwrap();
    assert!(matches!(
        pki.issue_cabinet(&cab("erp")),
        Err(PkiError::IdentityTaken {
            existing: Role::Integrator,
            ..
        })
    ));

    // identity_from_cert_der refuses certificates without the fleet subject shape.
    let foreign = rcgen::generate_simple_self_signed(vec!["x.example".to_owned()]).unwrap();
    assert!(matches!(
        identity_from_cert_der(foreign.cert.der()),
        Err(PkiError::NotFleetCert(_))
    ));
    assert!(matches!(
        identity_from_cert_der(b"not a cert"),
        Err(PkiError::CertParse(_))
    ));
}

#[test]
fn reinit_is_refused_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let mut pki = Pki::init(tmp.path(), &[]).unwrap();
    let old = pki.issue_cabinet(&cab("CAB-1")).unwrap();
    let ca_before = std::fs::read(pki.paths().ca_cert()).unwrap();

    let err = Pki::init(tmp.path(), &[]).expect_err("refused");
    assert!(matches!(err, PkiError::AlreadyInitialized { .. }), "{err}");
    assert!(err.to_string().contains("ca.pem"), "{err}");
    assert_eq!(std::fs::read(pki.paths().ca_cert()).unwrap(), ca_before);
    assert_eq!(Pki::open(tmp.path()).unwrap().list().len(), 1);

    let forced = Pki::init_with(
        tmp.path(),
        &[],
        &InitOptions {
            force: true,
            ..InitOptions::default()
        },
    )
    .unwrap();
    assert_ne!(std::fs::read(forced.paths().ca_cert()).unwrap(), ca_before);
    assert!(forced.list().is_empty());
    assert!(
        !old.cert_path.exists(),
        "old CA's certificates are discarded"
    );
    assert!(
        verify_client(client_verifier(&forced, false).as_ref(), &old).is_err(),
        "old certificates do not chain to the new CA"
    );

    assert!(matches!(
        Pki::open(tempfile::tempdir().unwrap().path()),
        Err(PkiError::NotInitialized { .. })
    ));
}

#[test]
fn open_repairs_a_crl_left_behind_by_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let mut pki = Pki::init(tmp.path(), &[]).unwrap();
    let c = pki.issue_cabinet(&cab("CAB-1")).unwrap();
    pki.revoke("CAB-1").unwrap();
    let number = crl_number(&std::fs::read(pki.paths().crl()).unwrap());
    // Simulate a crash between the index write and the CRL write: the CRL is gone.
    std::fs::remove_file(pki.paths().crl()).unwrap();
    let reopened = Pki::open(tmp.path()).unwrap();
    let crl = std::fs::read(reopened.paths().crl()).unwrap();
    assert!(crl_number(&crl) > number);
    assert!(revoked_serials(&crl).unwrap().contains(&c.record.serial));

    // A CRL signed by another CA (an interrupted `init --force`) is replaced too.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::init(other_dir.path(), &[]).unwrap();
    std::fs::copy(other.paths().crl(), reopened.paths().crl()).unwrap();
    let reopened = Pki::open(tmp.path()).unwrap();
    let crl = std::fs::read(reopened.paths().crl()).unwrap();
    verify_crl_signature(&crl, reopened.ca_cert_der()).expect("re-signed by our CA");
    assert!(revoked_serials(&crl).unwrap().contains(&c.record.serial));
}

#[test]
fn handles_share_the_index_and_batches_issue_many() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Pki::init(tmp.path(), &[]).unwrap();
    let mut b = Pki::open(tmp.path()).unwrap();
    a.issue_cabinet(&cab("A")).unwrap();
    b.issue_cabinet(&cab("B")).unwrap();
    a.issue_cabinet(&cab("C")).unwrap();
    let ids: Vec<CabinetId> = (0..100).map(|i| cab(&format!("CAB-{i:04}"))).collect();
    // A throwaway PKI may skip fsync; files are still written atomically and completely.
    b.set_fsync(false);
    let batch = b.issue_cabinets(&ids).unwrap();
    assert_eq!(batch.len(), 100);
    a.reload().unwrap();
    assert_eq!(a.list().len(), 103, "no handle lost another's update");
    assert_eq!(a.list(), b.list());
    let verifier = client_verifier(&a, true);
    for cert in batch.iter().step_by(17) {
        verify_client(verifier.as_ref(), cert).unwrap();
        assert_eq!(
            std::fs::read(&cert.cert_path).unwrap(),
            cert.cert_pem.as_bytes()
        );
        assert_eq!(mode(&cert.key_path), 0o600);
    }
    let dup = [cab("DUP"), cab("DUP")];
    assert!(matches!(
        b.issue_cabinets(&dup),
        Err(PkiError::DuplicateIdentity(_))
    ));
}

/// Interop with a stock tool: `openssl verify` accepts the chain and, with the CRL, refuses the
/// revoked certificate; `openssl crl` reads the CRL.
#[test]
fn openssl_accepts_the_chain_and_the_crl() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl is not installed: skipping the interop check");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut pki = Pki::init(tmp.path(), &[]).unwrap();
    let good = pki.issue_cabinet(&cab("CAB-OK")).unwrap();
    let bad = pki.issue_cabinet(&cab("CAB-X")).unwrap();
    let integ = pki.issue_integrator("acme").unwrap();
    pki.revoke("CAB-X").unwrap();
    let p = pki.paths();

    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let ca = p.ca_cert().to_string_lossy().into_owned();
    let crl = p.crl().to_string_lossy().into_owned();
    for cert in [
        &good.cert_path,
        &bad.cert_path,
        &integ.cert_path,
        &p.server_cert(),
    ] {
        let (ok, text) = run(&["verify", "-CAfile", &ca, &cert.to_string_lossy()]);
        assert!(ok, "openssl verify {}: {text}", cert.display());
    }
    let (ok, text) = run(&[
        "verify",
        "-crl_check",
        "-CAfile",
        &ca,
        "-CRLfile",
        &crl,
        &good.cert_path.to_string_lossy(),
    ]);
    assert!(ok, "unrevoked cert with CRL: {text}");
    let (ok, text) = run(&[
        "verify",
        "-crl_check",
        "-CAfile",
        &ca,
        "-CRLfile",
        &crl,
        &bad.cert_path.to_string_lossy(),
    ]);
    assert!(
        !ok && text.contains("revoked"),
        "revoked cert with CRL: {text}"
    );

    let (ok, text) = run(&["crl", "-in", &crl, "-noout", "-text"]);
    assert!(ok, "openssl crl: {text}");
    assert!(
        text.to_uppercase()
            .contains(&bad.record.serial.to_uppercase()),
        "serial {} in {text}",
        bad.record.serial
    );
    assert!(text.contains("X509v3 CRL Number"), "{text}");
    let (ok, _) = run(&["crl", "-in", &crl, "-noout", "-CAfile", &ca, "-verify"]);
    assert!(ok, "CRL signature verifies with openssl");

    let (ok, text) = run(&[
        "x509",
        "-in",
        &good.cert_path.to_string_lossy(),
        "-noout",
        "-subject",
    ]);
    assert!(ok);
    assert!(
        text.contains("CN=CAB-OK") || text.contains("CN = CAB-OK"),
        "{text}"
    );
    assert!(
        text.contains("OU=cabinet") || text.contains("OU = cabinet"),
        "{text}"
    );
    assert!(
        text.contains("O=Locker Hub fleet") || text.contains("O = Locker Hub fleet"),
        "{text}"
    );
    let (ok, _) = run(&["pkey", "-in", &good.key_path.to_string_lossy(), "-noout"]);
    assert!(ok, "openssl reads the key");
}
