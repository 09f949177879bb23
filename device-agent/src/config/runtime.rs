//! The configuration keys a `set_config` command may change at run time
//! ([`locker_schemas::limits::RuntimeKey`]): reading and setting them on an [`AgentConfig`], and
//! applying a list of settings with the same validation as the configuration file.

use locker_schemas::limits::{parse_settings, RuntimeKey};

use super::{invalid, AgentConfig, ConfigError};

impl AgentConfig {
    /// The current value of a runtime key.
    pub fn runtime_value(&self, key: RuntimeKey) -> u64 {
        match key {
            RuntimeKey::DoorLeftOpenS => self.timing.door_left_open_s,
            RuntimeKey::UnlockConfirmMs => self.timing.unlock_confirm_ms,
            RuntimeKey::LateOpenGraceMs => self.timing.late_open_grace_ms,
        }
    }

    fn set_runtime_value(&mut self, key: RuntimeKey, v: u64) {
        match key {
            RuntimeKey::DoorLeftOpenS => self.timing.door_left_open_s = v,
            RuntimeKey::UnlockConfirmMs => self.timing.unlock_confirm_ms = v,
            RuntimeKey::LateOpenGraceMs => self.timing.late_open_grace_ms = v,
        }
    }

    /// This configuration with `settings` applied: every key must be a runtime key with a value
    /// in its range, and the result must pass [`AgentConfig::validate`]. Returns the new
    /// configuration and the changes as `(key, old, new)`.
    #[allow(clippy::type_complexity)]
    pub fn with_runtime_settings(
        &self,
        settings: &[(String, String)],
    ) -> Result<(AgentConfig, Vec<(RuntimeKey, u64, u64)>), ConfigError> {
        let parsed = parse_settings(settings).map_err(|e| invalid(e.to_string()))?;
        let mut next = self.clone();
        let mut changes = Vec::new();
        for (key, v) in parsed {
            changes.push((key, next.runtime_value(key), v));
            next.set_runtime_value(key, v);
        }
        next.validate()?;
        Ok((next, changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> AgentConfig {
        AgentConfig {
            cabinet_id: "CAB-1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn runtime_settings_are_validated_and_applied() {
        let (next, changes) = base()
            .with_runtime_settings(&[("timing.door_left_open_s".into(), "120".into())])
            .expect("valid");
        assert_eq!(next.timing.door_left_open_s, 120);
        assert_eq!(changes, vec![(RuntimeKey::DoorLeftOpenS, 300, 120)]);
        let e = base()
            .with_runtime_settings(&[("mqtt.host".into(), "evil".into())])
            .expect_err("unknown key");
        assert!(e.to_string().contains("mqtt.host"), "{e}");
        let e = base()
            .with_runtime_settings(&[("timing.door_left_open_s".into(), "0".into())])
            .expect_err("out of range");
        assert!(e.to_string().contains("timing.door_left_open_s"), "{e}");
    }
}
