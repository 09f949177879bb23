//! Typed MQTT topics and subscription filters. Every topic in the system is built and parsed
//! here; nothing else formats a topic string.
//!
//! Shapes:
//! - `lk/v1/{cabinet}/up/{kind}`: cabinet to gateway (hello, door, scan, alarm, power, network,
//!   result, access);
//! - `lk/v1/{cabinet}/down/{kind}`: gateway to cabinet (cmd, ack, creds);
//! - `lk/v1/{cabinet}/gw/{kind}`: streams the gateway makes for integrators (presence, alert,
//!   parcel).

use std::fmt;
use std::str::FromStr;

use crate::ids::{CabinetId, IdError};

/// The topic prefix and protocol version level.
pub const PREFIX: &str = "lk/v1";

/// Why a string is not a Locker Hub topic or filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic {0:?} does not start with \"lk/v1/\"")]
    Prefix(String),
    #[error("topic {0:?} does not have the shape lk/v1/{{cabinet}}/{{up|down|gw}}/{{kind}}")]
    Shape(String),
    #[error("unknown {direction} kind {kind:?}")]
    Kind {
        direction: &'static str,
        kind: String,
    },
    #[error("bad cabinet id in topic: {0}")]
    Cabinet(#[from] IdError),
    #[error("filter {0:?} is not a valid MQTT topic filter")]
    Filter(String),
}

macro_rules! kinds {
    ($(#[$m:meta])* $name:ident, $dir:literal { $($var:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($var),+ }

        impl $name {
            /// Every kind, in wire order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];

            /// The topic level for this kind.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = TopicError;
            fn from_str(s: &str) -> Result<Self, TopicError> {
                match s {
                    $($s => Ok($name::$var),)+
                    _ => Err(TopicError::Kind { direction: $dir, kind: s.to_owned() }),
                }
            }
        }
    };
}

kinds!(
    /// Kinds of uplink message (cabinet to gateway).
    UpKind, "uplink" {
        Hello => "hello", Door => "door", Scan => "scan", Alarm => "alarm", Power => "power",
        Network => "network", Result => "result", Access => "access",
    }
);
kinds!(
    /// Kinds of downlink message (gateway to cabinet).
    DownKind, "downlink" { Cmd => "cmd", Ack => "ack", Creds => "creds" }
);
kinds!(
    /// Kinds of gateway-made stream for integrators.
    StreamKind, "stream" { Presence => "presence", Alert => "alert", Parcel => "parcel" }
);

/// A concrete Locker Hub topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `lk/v1/{cabinet}/up/{kind}`
    Up(CabinetId, UpKind),
    /// `lk/v1/{cabinet}/down/{kind}`
    Down(CabinetId, DownKind),
    /// `lk/v1/{cabinet}/gw/{kind}`
    Stream(CabinetId, StreamKind),
}

impl Topic {
    /// The cabinet the topic belongs to.
    pub fn cabinet(&self) -> &CabinetId {
        match self {
            Topic::Up(c, _) | Topic::Down(c, _) | Topic::Stream(c, _) => c,
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Up(c, k) => write!(f, "{PREFIX}/{c}/up/{k}"),
            Topic::Down(c, k) => write!(f, "{PREFIX}/{c}/down/{k}"),
            Topic::Stream(c, k) => write!(f, "{PREFIX}/{c}/gw/{k}"),
        }
    }
}

impl FromStr for Topic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, TopicError> {
        let rest = s
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| TopicError::Prefix(s.to_owned()))?;
        let mut parts = rest.split('/');
        let (Some(cab), Some(dir), Some(kind), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TopicError::Shape(s.to_owned()));
        };
        let cab = CabinetId::new(cab)?;
        match dir {
            "up" => Ok(Topic::Up(cab, kind.parse()?)),
            "down" => Ok(Topic::Down(cab, kind.parse()?)),
            "gw" => Ok(Topic::Stream(cab, kind.parse()?)),
            _ => Err(TopicError::Shape(s.to_owned())),
        }
    }
}

/// An MQTT subscription filter (`+` and `#` wildcards), validated on construction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Filter(String);

impl Filter {
    /// Validates an MQTT topic filter: `#` only as the whole last level, `+` only as a whole level.
    pub fn new(s: impl Into<String>) -> Result<Self, TopicError> {
        let s = s.into();
        let levels: Vec<&str> = s.split('/').collect();
        let n = levels.len();
        let ok = !s.is_empty()
            && !s.contains('\0')
            && levels.iter().enumerate().all(|(i, l)| match *l {
                "#" => i == n - 1,
                "+" => true,
                l => !l.contains('#') && !l.contains('+'),
            });
        if ok {
            Ok(Self(s))
        } else {
            Err(TopicError::Filter(s))
        }
    }

    /// All uplinks of every cabinet: `lk/v1/+/up/#` (the gateway's ingest subscription).
    pub fn all_uplinks() -> Self {
        Self(format!("{PREFIX}/+/up/#"))
    }

    /// All gateway-made streams of every cabinet: `lk/v1/+/gw/#`.
    pub fn all_streams() -> Self {
        Self(format!("{PREFIX}/+/gw/#"))
    }

    /// One cabinet's downlinks: `lk/v1/{cabinet}/down/#` (what an agent subscribes to).
    pub fn cabinet_downlinks(cabinet: &CabinetId) -> Self {
        Self(format!("{PREFIX}/{cabinet}/down/#"))
    }

    /// One kind of uplink of every cabinet: `lk/v1/+/up/{kind}` (the console's live feed).
    pub fn uplinks_of_kind(kind: UpKind) -> Self {
        Self(format!("{PREFIX}/+/up/{kind}"))
    }

    /// One cabinet's uplinks: `lk/v1/{cabinet}/up/#`.
    pub fn cabinet_uplinks(cabinet: &CabinetId) -> Self {
        Self(format!("{PREFIX}/{cabinet}/up/#"))
    }

    /// The filter text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a concrete topic name matches this filter (MQTT 3.1.1 section 4.7 rules, with
    /// `$`-topics never matched by a leading wildcard).
    pub fn matches(&self, topic: &str) -> bool {
        if topic.starts_with('$') && (self.0.starts_with('+') || self.0.starts_with('#')) {
            return false;
        }
        let mut t = topic.split('/');
        for f in self.0.split('/') {
            match f {
                "#" => return true,
                "+" => {
                    if t.next().is_none() {
                        return false;
                    }
                }
                lit => {
                    if t.next() != Some(lit) {
                        return false;
                    }
                }
            }
        }
        t.next().is_none()
    }

    /// Whether every topic this filter can match is also matched by `outer`: the check the
    /// edge makes before letting a client subscribe to `self` under an ACL entry `outer`.
    pub fn is_within(&self, outer: &Filter) -> bool {
        let mut inner = self.0.split('/');
        for o in outer.0.split('/') {
            match o {
                "#" => return true,
                "+" => match inner.next() {
                    Some("#") | None => return false,
                    Some(_) => {}
                },
                lit => match inner.next() {
                    Some(i) if i == lit => {}
                    _ => return false,
                },
            }
        }
        inner.next().is_none()
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Filter {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, TopicError> {
        Self::new(s)
    }
}

impl serde::Serialize for Filter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Filter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Filter::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cabinet() -> impl Strategy<Value = CabinetId> {
        "[A-Za-z0-9._-]{1,64}".prop_map(|s| CabinetId::new(s).expect("strategy makes valid ids"))
    }

    fn topic() -> impl Strategy<Value = Topic> {
        prop_oneof![
            (cabinet(), proptest::sample::select(UpKind::ALL)).prop_map(|(c, k)| Topic::Up(c, k)),
            (cabinet(), proptest::sample::select(DownKind::ALL))
                .prop_map(|(c, k)| Topic::Down(c, k)),
            (cabinet(), proptest::sample::select(StreamKind::ALL))
                .prop_map(|(c, k)| Topic::Stream(c, k)),
        ]
    }

    proptest! {
        #[test]
        fn every_topic_round_trips(t in topic()) {
            let s = t.to_string();
            prop_assert_eq!(s.parse::<Topic>(), Ok(t.clone()));
            // and is matched by the filters that are meant to carry it
            match &t {
                Topic::Up(c, _) => {
                    prop_assert!(Filter::all_uplinks().matches(&s));
                    prop_assert!(Filter::cabinet_uplinks(c).matches(&s));
                    prop_assert!(!Filter::cabinet_downlinks(c).matches(&s));
                }
                Topic::Down(c, _) => {
                    prop_assert!(Filter::cabinet_downlinks(c).matches(&s));
                    prop_assert!(!Filter::all_uplinks().matches(&s));
                }
                Topic::Stream(_, _) => prop_assert!(Filter::all_streams().matches(&s)),
            }
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,80}") {
            let _ = s.parse::<Topic>();
            if let Ok(f) = Filter::new(s.clone()) {
                let _ = f.matches(&s);
                let _ = f.is_within(&Filter::all_uplinks());
            }
        }

        #[test]
        fn within_implies_matches(c in cabinet(), k in proptest::sample::select(UpKind::ALL)) {
            let t = Topic::Up(c.clone(), k).to_string();
            let inner = Filter::new(t.clone()).expect("a topic is a filter");
            prop_assert!(inner.is_within(&Filter::all_uplinks()));
            prop_assert!(inner.is_within(&Filter::cabinet_uplinks(&c)));
        }
    }

    #[test]
    fn filters() {
        let f = |s: &str| Filter::new(s).expect("valid filter");
        assert!(Filter::new("a/#/b").is_err());
        assert!(Filter::new("a/b+").is_err());
        assert!(f("lk/v1/+/up/#").matches("lk/v1/A/up/door"));
        assert!(!f("lk/v1/+/up/#").matches("lk/v1/A/down/cmd"));
        assert!(f("lk/v1/A/up/#").is_within(&f("lk/v1/+/up/#")));
        assert!(!f("lk/v1/#").is_within(&f("lk/v1/+/up/#")));
        assert!(!f("lk/v1/+/+/#").is_within(&f("lk/v1/+/up/#")));
        assert!(!f("#").matches("$SYS/x"));
    }
}
