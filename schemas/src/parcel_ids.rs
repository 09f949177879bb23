//! Identifiers of the parcel domain: sites, carriers and couriers (operator-chosen slugs) and
//! orders (gateway-made, time-ordered). Like the cabinet id they are safe in a URL path and an
//! MQTT topic level, so every part of the system can carry them as they are.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid parcel-domain identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} id {value:?}: {problem}")]
pub struct SlugError {
    pub what: &'static str,
    pub value: String,
    pub problem: &'static str,
}

/// Checks a slug: 1 to 64 ASCII characters from `[A-Za-z0-9._-]`.
fn check_slug(what: &'static str, s: &str) -> Result<(), SlugError> {
    let err = |problem| SlugError {
        what,
        value: s.chars().take(80).collect(),
        problem,
    };
    if s.is_empty() {
        return Err(err("is empty"));
    }
    if s.len() > 64 {
        return Err(err("is longer than 64 characters"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(err("may only hold ASCII letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an id.
            pub fn new(s: impl Into<String>) -> Result<Self, SlugError> {
                let s = s.into();
                check_slug($what, &s)?;
                Ok(Self(s))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = SlugError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(de::Error::custom)
            }
        }
    };
}

slug_id!(
    /// A site (a location holding one or more cabinets), chosen by the operator: `berlin-hbf`.
    SiteId,
    "site"
);
slug_id!(
    /// A carrier (a parcel company, a courier firm, a shop's own staff): `dhl`.
    CarrierId,
    "carrier"
);
slug_id!(
    /// A courier of a carrier, chosen by the operator or the carrier: `dhl-0007`.
    CourierId,
    "courier"
);

/// An order: `ORD-` and a ULID, so ids sort by creation time and cannot be guessed from
/// another order's id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderId(pub ulid::Ulid);

impl OrderId {
    /// A new, unique order id.
    pub fn generate() -> Self {
        Self(ulid::Ulid::new())
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ORD-{}", self.0)
    }
}

impl fmt::Debug for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OrderId({self})")
    }
}

impl FromStr for OrderId {
    type Err = SlugError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix("ORD-")
            .and_then(|u| ulid::Ulid::from_string(u).ok())
            .map(Self)
            .ok_or_else(|| SlugError {
                what: "order",
                value: s.chars().take(80).collect(),
                problem: "is not ORD- followed by a 26-character ULID",
            })
    }
}

impl Serialize for OrderId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for OrderId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_order_ids_round_trip_and_refuse_what_a_path_cannot_hold() {
        assert!(SiteId::new("berlin-hbf").is_ok());
        for bad in ["", "a/b", "a b", "+", "#", &"x".repeat(65)] {
            assert!(CarrierId::new(bad).is_err(), "{bad:?}");
        }
        let o = OrderId::generate();
        let s = o.to_string();
        assert!(s.starts_with("ORD-") && s.len() == 30, "{s}");
        assert_eq!(s.parse::<OrderId>(), Ok(o));
        assert!("ORD-nope".parse::<OrderId>().is_err());
        let j = serde_json::to_string(&o).expect("json");
        assert_eq!(serde_json::from_str::<OrderId>(&j).expect("back"), o);
    }
}
