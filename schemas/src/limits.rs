//! What a cabinet accepts in a command, in one place for the gateway (which refuses at the API
//! what a cabinet would not take) and the agent (which validates what it receives):
//! the largest encoded command downlink, and the configuration keys `set_config` may change at
//! run time with their ranges.

use std::fmt;

/// The largest encoded command downlink (CBOR payload, bytes) a gateway sends and a cabinet
/// accepts. Commands are small by nature (an unlock is about 40 bytes, a `set_config` of every
/// runtime key about 120); this is far below the agent's decode limit and MQTT maximum packet
/// ([`crate::MAX_PAYLOAD_BYTES`], plus 1 KiB for the topic and header) and below the edge's
/// default `max_packet_bytes` (64 KiB), so a command that passes it always reaches the cabinet.
pub const MAX_COMMAND_BYTES: usize = 4096;

const _: () = assert!(MAX_COMMAND_BYTES < crate::MAX_PAYLOAD_BYTES);

/// A configuration key a `set_config` command may change at run time (named as in agent.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuntimeKey {
    /// `timing.door_left_open_s`: DoorLeftOpen is raised for a door open longer than this.
    DoorLeftOpenS,
    /// `timing.unlock_confirm_ms`: a fired lock whose door did not open within this is jammed.
    UnlockConfirmMs,
    /// `timing.late_open_grace_ms`: a door opening this long after its lock fired still counts
    /// as caused by it.
    LateOpenGraceMs,
}

/// Why a runtime setting is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error("unknown configuration key {0:?} (runtime keys: {keys})", keys = RuntimeKey::names())]
    UnknownKey(String),
    #[error("{key} = {value:?}: must be an integer in {min}..={max}")]
    BadValue {
        key: &'static str,
        value: String,
        min: u64,
        max: u64,
    },
}

impl RuntimeKey {
    /// Every runtime key.
    pub const ALL: &'static [RuntimeKey] = &[
        RuntimeKey::DoorLeftOpenS,
        RuntimeKey::UnlockConfirmMs,
        RuntimeKey::LateOpenGraceMs,
    ];

    /// The key as written in agent.toml and in a `set_config`.
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKey::DoorLeftOpenS => "timing.door_left_open_s",
            RuntimeKey::UnlockConfirmMs => "timing.unlock_confirm_ms",
            RuntimeKey::LateOpenGraceMs => "timing.late_open_grace_ms",
        }
    }

    /// The accepted range (inclusive).
    pub fn range(self) -> (u64, u64) {
        match self {
            RuntimeKey::DoorLeftOpenS => (1, 86_400),
            RuntimeKey::UnlockConfirmMs => (100, 60_000),
            RuntimeKey::LateOpenGraceMs => (0, 3_600_000),
        }
    }

    fn names() -> String {
        Self::ALL
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Parses a key name.
    pub fn parse(name: &str) -> Result<Self, SettingError> {
        Self::ALL
            .iter()
            .copied()
            .find(|k| k.name() == name)
            .ok_or_else(|| SettingError::UnknownKey(name.to_owned()))
    }

    /// Parses and range-checks a value for this key.
    pub fn value(self, value: &str) -> Result<u64, SettingError> {
        let (min, max) = self.range();
        value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| SettingError::BadValue {
                key: self.name(),
                value: value.to_owned(),
                min,
                max,
            })
    }
}

impl fmt::Display for RuntimeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Validates every pair of a `set_config`: the settings in order, or the first refusal.
/// An empty list is refused too (nothing to set).
pub fn parse_settings(kv: &[(String, String)]) -> Result<Vec<(RuntimeKey, u64)>, SettingError> {
    if kv.is_empty() {
        return Err(SettingError::UnknownKey(String::new()));
    }
    kv.iter()
        .map(|(k, v)| {
            let key = RuntimeKey::parse(k)?;
            Ok((key, key.value(v)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_validated_by_key_and_range() {
        let ok = parse_settings(&[
            ("timing.door_left_open_s".into(), "120".into()),
            ("timing.late_open_grace_ms".into(), "0".into()),
        ])
        .expect("valid");
        assert_eq!(
            ok,
            vec![
                (RuntimeKey::DoorLeftOpenS, 120),
                (RuntimeKey::LateOpenGraceMs, 0)
            ]
        );
        let e = parse_settings(&[("mqtt.host".into(), "x".into())]).expect_err("unknown");
        assert!(e.to_string().contains("mqtt.host"), "{e}");
        let e =
            parse_settings(&[("timing.unlock_confirm_ms".into(), "5".into())]).expect_err("range");
        assert!(e.to_string().contains("100..=60000"), "{e}");
        assert!(parse_settings(&[]).is_err());
    }
}
