//! Typed identifiers: the cabinet id (validated so it is always a safe single MQTT topic level),
//! the compartment number, and the time-ordered command id (a ULID).

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("cabinet id is empty")]
    Empty,
    #[error("cabinet id is {0} characters long; at most {max} are allowed", max = CabinetId::MAX_LEN)]
    TooLong(usize),
    #[error("cabinet id contains {0:?}; only ASCII letters, digits, '-', '_' and '.' are allowed")]
    BadChar(char),
    #[error("compartment id {0:?} is not a number from 1 to 65535")]
    BadCompartment(String),
    #[error("command id {0:?} is not a ULID")]
    BadCommand(String),
}

/// A cabinet identity: 1 to 64 ASCII characters from `[A-Za-z0-9._-]`.
///
/// This excludes the MQTT separator `/`, the wildcards `+` and `#`, whitespace, and anything a
/// certificate subject could use to smuggle a second topic level. It is also the MQTT client id
/// the edge assigns and the certificate's common name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CabinetId(String);

impl CabinetId {
    /// The longest allowed cabinet id.
    pub const MAX_LEN: usize = 64;

    /// Validates and wraps a cabinet id.
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        Self::validate(&s)?;
        Ok(Self(s))
    }

    /// Checks a candidate cabinet id without allocating.
    pub fn validate(s: &str) -> Result<(), IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(IdError::TooLong(s.chars().count()));
        }
        match s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            Some(c) => Err(IdError::BadChar(c)),
            None => Ok(()),
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CabinetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CabinetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CabinetId({})", self.0)
    }
}

impl FromStr for CabinetId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for CabinetId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for CabinetId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CabinetId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = CabinetId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a cabinet id string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CabinetId, E> {
                CabinetId::new(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A compartment of a cabinet: the number printed on its door, from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CompartmentId(pub u16);

impl fmt::Display for CompartmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for CompartmentId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<u16>() {
            Ok(n) if n > 0 => Ok(Self(n)),
            _ => Err(IdError::BadCompartment(s.to_owned())),
        }
    }
}

/// A command id: a ULID, so ids sort by creation time and are unique without coordination.
///
/// On the CBOR wire it is a 16-byte byte string; in JSON and topics it is the 26-character
/// Crockford base32 form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandId(pub ulid::Ulid);

impl CommandId {
    /// A new id for the current time.
    pub fn generate() -> Self {
        Self(ulid::Ulid::new())
    }

    /// The 16 raw bytes (big-endian, time first).
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_bytes()
    }

    /// From the 16 raw bytes.
    pub fn from_bytes(b: [u8; 16]) -> Self {
        Self(ulid::Ulid::from_bytes(b))
    }

    /// The creation time embedded in the id, in ms since the epoch.
    pub fn timestamp_ms(self) -> u64 {
        self.0.timestamp_ms()
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandId({})", self.0)
    }
}

impl FromStr for CommandId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s)
            .map(Self)
            .map_err(|_| IdError::BadCommand(s.to_owned()))
    }
}

impl Serialize for CommandId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(&self.0)
        } else {
            s.serialize_bytes(&self.to_bytes())
        }
    }
}

impl<'de> Deserialize<'de> for CommandId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = CommandId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command id (16-byte string or ULID text)")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<CommandId, E> {
                let b: [u8; 16] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &"16 bytes"))?;
                Ok(CommandId::from_bytes(b))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CommandId, E> {
                v.parse().map_err(E::custom)
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(V)
        } else {
            d.deserialize_bytes(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cabinet_ids_reject_topic_syntax() {
        for bad in ["", "a/b", "a+", "#", "a b", "ä", "x\u{0}", &"x".repeat(65)] {
            assert!(CabinetId::new(bad).is_err(), "{bad:?} must be rejected");
        }
        for good in ["CAB-0001", "site_3.bank-2", &"x".repeat(64)] {
            assert!(CabinetId::new(good).is_ok(), "{good:?} must be accepted");
        }
    }

    #[test]
    fn command_ids_are_time_ordered_and_round_trip() {
        let a = CommandId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = CommandId::generate();
        assert!(a < b);
        assert_eq!(a, a.to_string().parse().expect("parses"));
        assert_eq!(a, CommandId::from_bytes(a.to_bytes()));
    }

    #[test]
    fn compartment_ids_are_positive() {
        assert_eq!("7".parse::<CompartmentId>(), Ok(CompartmentId(7)));
        assert!("0".parse::<CompartmentId>().is_err());
        assert!("x".parse::<CompartmentId>().is_err());
    }
}
