//! Building blocks of certificates and CRLs that need no CA key: the fleet subject, random
//! serials, server-name SANs, validity checks, and the current time in X.509 precision.

use std::collections::HashSet;
use std::fs;
use std::net::IpAddr;
use std::path::Path;

use rand::RngCore;
use rcgen::{DistinguishedName, DnType, SanType, SerialNumber};
use time::{Duration, OffsetDateTime};

use super::inspect::serial_hex;
use super::store::{io_err, PkiPaths};
use super::{PkiError, FLEET_ORGANIZATION};

/// Server names used when `init` gets none.
pub(crate) const DEFAULT_SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];
/// Longest accepted validity for anything (100 years).
const MAX_VALIDITY: Duration = Duration::days(36_525);

/// The current time, whole seconds (what X.509 can encode).
pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc().truncate_to_second()
}

pub(crate) fn check_validity(what: &str, validity: Duration) -> Result<(), PkiError> {
    if validity <= Duration::ZERO || validity > MAX_VALIDITY {
        return Err(PkiError::InvalidValidity(format!(
            "{what} validity must be between 1 second and 100 years, got {validity}"
        )));
    }
    Ok(())
}

/// A subject with `CN`, optional `OU`, and the fleet `O`.
pub(crate) fn subject(cn: &str, unit: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(unit) = unit {
        dn.push(DnType::OrganizationalUnitName, unit);
    }
    dn.push(DnType::OrganizationName, FLEET_ORGANIZATION);
    dn
}

/// 16 random bytes with the top bit clear and a non-zero first byte: a positive DER INTEGER of
/// exactly 16 bytes, whose [`serial_hex`] is always 32 digits. Retries on the (astronomically
/// unlikely) collision with `taken`.
pub(crate) fn random_serial(taken: &HashSet<String>) -> (SerialNumber, String) {
    let mut rng = rand::thread_rng();
    loop {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        bytes[0] &= 0x7f;
        if bytes[0] == 0 {
            bytes[0] = 1;
        }
        let text = serial_hex(&bytes);
        if !taken.contains(&text) {
            return (SerialNumber::from_slice(&bytes), text);
        }
    }
}

/// The bytes of a serial stored in [`serial_hex`] form in the index.
pub(crate) fn parse_serial(paths: &PkiPaths, hex: &str) -> Result<Vec<u8>, PkiError> {
    let bad = || PkiError::BadFile {
        path: paths.index(),
        what: format!("serial {hex:?} is not hex"),
    };
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

pub(crate) fn first_name(server_names: &[String]) -> &str {
    server_names
        .first()
        .map(String::as_str)
        .unwrap_or(DEFAULT_SERVER_NAMES[0])
}

/// Server names as SANs: IP addresses as `IpAddress`, anything else as `DnsName`.
pub(crate) fn server_sans(server_names: &[String]) -> Result<Vec<SanType>, PkiError> {
    let defaults: Vec<String>;
    let names = if server_names.is_empty() {
        defaults = DEFAULT_SERVER_NAMES.map(String::from).to_vec();
        &defaults
    } else {
        server_names
    };
    let mut sans = Vec::with_capacity(names.len());
    for name in names {
        let invalid = |reason: &str| PkiError::InvalidServerName {
            name: name.clone(),
            reason: reason.to_owned(),
        };
        let san = if let Ok(ip) = name.parse::<IpAddr>() {
            SanType::IpAddress(ip)
        } else {
            let valid_dns = !name.is_empty()
                && name.len() <= 253
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*'));
            if !valid_dns {
                return Err(invalid(
                    "not an IP address, and a DNS name may only hold ASCII letters, digits, '-', '.' and '*'",
                ));
            }
            SanType::DnsName(
                rcgen::string::Ia5String::try_from(name.as_str())
                    .map_err(|e| invalid(&e.to_string()))?,
            )
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

/// Deletes the `.pem` and `.key` files of a role folder (for `init --force`).
pub(crate) fn clear_role_dir(dir: &Path) -> Result<(), PkiError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(dir, "listing")(e)),
    };
    for entry in entries {
        let path = entry.map_err(io_err(dir, "listing"))?.path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("pem" | "key")
        ) {
            fs::remove_file(&path).map_err(io_err(&path, "removing"))?;
        }
    }
    Ok(())
}
