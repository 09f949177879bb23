//! Who a connected client is: the [`Identity`] taken from its verified client certificate
//! (role from the subject OU, name from the CN), the certificate serial used for revocation,
//! and the end of its validity ([`not_after`]).

use std::fmt;

use locker_schemas::CabinetId;

/// Why a verified certificate does not name a usable identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate cannot be read: {0}")]
    Parse(String),
    #[error("cabinet certificate CN is not a valid cabinet id: {0}")]
    BadCabinet(locker_schemas::IdError),
    #[error("integrator certificate CN is not a valid integrator name: {0}")]
    BadIntegrator(locker_schemas::IdError),
}

/// The identity of a client, bound to its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// A locker cabinet; its MQTT client id is the cabinet id.
    Cabinet(CabinetId),
    /// An integrator (read-only subscriber); its MQTT client id is `int:{name}`. Names follow
    /// the cabinet id alphabet, so `int:` (with its `:`) can never collide with a cabinet.
    Integrator(String),
}

impl Identity {
    /// The role label used in metrics and listings: `cabinet` or `integrator`.
    pub fn role(&self) -> &'static str {
        match self {
            Identity::Cabinet(_) => "cabinet",
            Identity::Integrator(_) => "integrator",
        }
    }

    /// The MQTT client id the edge gives this identity at the broker.
    pub fn client_id(&self) -> String {
        match self {
            Identity::Cabinet(c) => c.to_string(),
            Identity::Integrator(n) => format!("int:{n}"),
        }
    }

    /// An integrator identity, validated like a cabinet id (1-64 of `[A-Za-z0-9._-]`).
    pub fn integrator(name: impl Into<String>) -> Result<Self, IdentityError> {
        let name = name.into();
        CabinetId::validate(&name).map_err(IdentityError::BadIntegrator)?;
        Ok(Identity::Integrator(name))
    }

    /// The cabinet id, if this is a cabinet.
    pub fn cabinet(&self) -> Option<&CabinetId> {
        match self {
            Identity::Cabinet(c) => Some(c),
            Identity::Integrator(_) => None,
        }
    }
}

impl fmt::Display for Identity {
    /// The client id form: `CAB-1` or `int:erp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Cabinet(c) => f.write_str(c.as_str()),
            Identity::Integrator(n) => write!(f, "int:{n}"),
        }
    }
}

/// The identity and serial (lowercase hex, as the PKI's CRL parser reports it) of a
/// certificate that rustls already verified against the fleet CA.
pub(crate) fn from_cert_der(der: &[u8]) -> Result<(Identity, String), IdentityError> {
    use locker_broker_config::pki::{identity_from_cert_der, Role};
    let (role, name, serial) =
        identity_from_cert_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let identity = match role {
        Role::Cabinet => {
            Identity::Cabinet(CabinetId::new(name).map_err(IdentityError::BadCabinet)?)
        }
        Role::Integrator => Identity::integrator(name)?,
    };
    Ok((identity, serial))
}

/// When a certificate (DER) stops being valid: its notAfter.
pub(crate) fn not_after(der: &[u8]) -> Result<std::time::SystemTime, IdentityError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let secs = cert.validity().not_after.timestamp();
    let secs =
        u64::try_from(secs).map_err(|_| IdentityError::Parse("notAfter before 1970".into()))?;
    Ok(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}
