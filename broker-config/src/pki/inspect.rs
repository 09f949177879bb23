//! Pure certificate and CRL inspection: the identity a fleet client certificate carries, the
//! serials a CRL revokes, and the canonical serial-number text used everywhere in Locker Hub.
//!
//! None of these functions touch the file system or check a chain of trust: the gateway first
//! lets rustls verify the chain (against `ca.pem`, with `crl.pem`), then calls
//! [`identity_from_cert_der`] on the verified end-entity certificate.

use std::collections::HashSet;

use locker_schemas::CabinetId;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::x509::X509Name;

use super::{PkiError, Role, FLEET_ORGANIZATION};

/// The canonical text form of a certificate serial number: lowercase hex of the big-endian
/// magnitude, without separators and without leading zero bytes (`"00"` for zero).
///
/// DER encodes a positive serial whose top bit is set with an extra leading `0x00`; this
/// strips it, so the same serial reads the same from a certificate, a CRL and `index.json`.
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let digits = &raw[start..];
    if digits.is_empty() {
        return "00".to_owned();
    }
    let mut s = String::with_capacity(digits.len() * 2);
    for b in digits {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    s
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Reads the Locker Hub identity out of a DER client certificate.
///
/// Returns `(role, identity, serial_hex)`: the role from the subject's single
/// `OU` (`cabinet` or `integrator`), the identity from its single `CN` (validated with the
/// [`CabinetId`] rules, so it is always a safe MQTT client id and topic level), and the serial
/// in [`serial_hex`] form. The subject must also carry exactly one `O = Locker Hub fleet`.
///
/// Any other shape (missing, repeated or non-UTF-8 attributes, an unknown `OU` such as the
/// server certificate's `server`, trailing bytes after the certificate) is an error: the
/// gateway refuses the connection rather than guess.
///
/// This does **not** verify the signature, validity period or revocation; verify the chain
/// with rustls first.
pub fn identity_from_cert_der(der: &[u8]) -> Result<(Role, String, String), PkiError> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::CertParse(format!("not a DER X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::CertParse(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    let subject = cert.subject();
    let org = single_attr(subject, "O", |n| n.iter_organization())?;
    if org != FLEET_ORGANIZATION {
        return Err(PkiError::NotFleetCert(format!(
            "subject O is {org:?}, expected {FLEET_ORGANIZATION:?}"
        )));
    }
    let ou = single_attr(subject, "OU", |n| n.iter_organizational_unit())?;
    let role = ou
        .parse::<Role>()
        .map_err(|_| PkiError::NotFleetCert(format!("subject OU {ou:?} is not a client role")))?;
    let cn = single_attr(subject, "CN", |n| n.iter_common_name())?;
    CabinetId::validate(cn).map_err(|e| {
        PkiError::NotFleetCert(format!("subject CN {cn:?} is not a valid identity: {e}"))
    })?;
    Ok((role, cn.to_owned(), serial_hex(cert.raw_serial())))
}

/// Returns the one value of a subject attribute, refusing absent, repeated or non-text values.
fn single_attr<'a, I>(
    name: &'a X509Name<'a>,
    label: &str,
    iter: impl FnOnce(&'a X509Name<'a>) -> I,
) -> Result<&'a str, PkiError>
where
    I: Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
{
    let mut values = iter(name);
    let first = values
        .next()
        .ok_or_else(|| PkiError::NotFleetCert(format!("subject has no {label}")))?;
    if values.next().is_some() {
        return Err(PkiError::NotFleetCert(format!(
            "subject has more than one {label}"
        )));
    }
    first
        .as_str()
        .map_err(|e| PkiError::NotFleetCert(format!("subject {label} is not text: {e}")))
}

/// The serials (in [`serial_hex`] form) revoked by a CRL given as PEM (`X509 CRL` block) or DER.
///
/// This parses only; it does not check who signed the CRL (rustls does when the CRL is given to
/// its client verifier; see also [`verify_crl_signature`]).
pub fn revoked_serials(crl_pem_or_der: &[u8]) -> Result<HashSet<String>, PkiError> {
    with_crl(crl_pem_or_der, |crl| {
        Ok(crl
            .iter_revoked_certificates()
            .map(|r| serial_hex(r.raw_serial()))
            .collect())
    })
}

/// Checks that a CRL (PEM or DER) is signed by the CA certificate `ca_cert_der`.
pub fn verify_crl_signature(crl_pem_or_der: &[u8], ca_cert_der: &[u8]) -> Result<(), PkiError> {
    let (_, ca) = X509Certificate::from_der(ca_cert_der)
        .map_err(|e| PkiError::CertParse(format!("CA certificate: {e}")))?;
    with_crl(crl_pem_or_der, |crl| {
        if crl.issuer() != ca.subject() {
            return Err(PkiError::CrlParse(format!(
                "CRL issuer {} is not the CA {}",
                crl.issuer(),
                ca.subject()
            )));
        }
        crl.verify_signature(ca.public_key())
            .map_err(|e| PkiError::CrlParse(format!("CRL signature does not verify: {e}")))
    })
}

/// The CRL number of a CRL (PEM or DER), if it carries one that fits in a `u64`.
pub fn crl_number(crl_pem_or_der: &[u8]) -> Result<Option<u64>, PkiError> {
    with_crl(crl_pem_or_der, |crl| {
        Ok(crl.crl_number().and_then(|n| {
            let digits = n.to_bytes_be();
            if digits.len() > 8 {
                return None;
            }
            Some(
                digits
                    .iter()
                    .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
            )
        }))
    })
}

fn with_crl<T>(
    input: &[u8],
    f: impl FnOnce(&CertificateRevocationList<'_>) -> Result<T, PkiError>,
) -> Result<T, PkiError> {
    let der = pem_or_der(input, "X509 CRL").map_err(PkiError::CrlParse)?;
    let (rest, crl) = CertificateRevocationList::from_der(&der)
        .map_err(|e| PkiError::CrlParse(format!("not a DER X.509 CRL: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::CrlParse(format!(
            "{} trailing bytes after the CRL",
            rest.len()
        )));
    }
    f(&crl)
}

/// Returns the DER inside the first PEM block of `label`, or `input` itself if it is not PEM.
pub(crate) fn pem_or_der(input: &[u8], label: &str) -> Result<Vec<u8>, String> {
    let trimmed = input.trim_ascii_start();
    if !trimmed.starts_with(b"-----BEGIN") {
        return Ok(input.to_vec());
    }
    for block in x509_parser::pem::Pem::iter_from_buffer(trimmed) {
        let block = block.map_err(|e| format!("bad PEM: {e}"))?;
        if block.label == label {
            return Ok(block.contents);
        }
    }
    Err(format!("no PEM block labelled {label:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_hex_is_canonical() {
        assert_eq!(serial_hex(&[0x00, 0x8f, 0x01]), "8f01");
        assert_eq!(serial_hex(&[0x7f, 0x00]), "7f00");
        assert_eq!(serial_hex(&[]), "00");
        assert_eq!(serial_hex(&[0, 0]), "00");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(identity_from_cert_der(b"").is_err());
        assert!(identity_from_cert_der(&[0x30, 0x82, 0xff]).is_err());
        assert!(
            revoked_serials(b"-----BEGIN X509 CRL-----\nzz\n-----END X509 CRL-----\n").is_err()
        );
        assert!(revoked_serials(&[1, 2, 3]).is_err());
    }
}
