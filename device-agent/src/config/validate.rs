//! Validation of an [`AgentConfig`]: every rule the running agent relies on, each failure a
//! clear message naming the key.

use std::net::SocketAddr;

use super::{invalid, AgentConfig, ConfigError, ScannerKind};

impl AgentConfig {
    /// Checks every rule a running agent relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.cabinet()?;
        let m = &self.mqtt;
        if m.host.is_empty() {
            return Err(invalid("mqtt.host is empty"));
        }
        if m.port == 0 {
            return Err(invalid("mqtt.port must not be 0"));
        }
        if m.keep_alive_s == 0 || m.keep_alive_s > 3_600 {
            return Err(invalid("mqtt.keep_alive_s must be 1..=3600"));
        }
        if m.connect_timeout_s == 0 {
            return Err(invalid("mqtt.connect_timeout_s must be > 0"));
        }
        if m.backoff_base_ms == 0 || m.backoff_max_ms < m.backoff_base_ms {
            return Err(invalid(
                "mqtt.backoff_base_ms must be > 0 and <= mqtt.backoff_max_ms",
            ));
        }
        if m.window == 0 || m.window > 1_000 {
            return Err(invalid("mqtt.window must be 1..=1000"));
        }
        if m.ack_timeout_ms < 100 {
            return Err(invalid("mqtt.ack_timeout_ms must be >= 100"));
        }
        let o = &self.outbox;
        if o.max_events < 16 {
            return Err(invalid("outbox.max_events must be >= 16"));
        }
        if o.nearly_full_percent == 0 || o.nearly_full_percent > 100 {
            return Err(invalid("outbox.nearly_full_percent must be 1..=100"));
        }
        if o.hard_max_events < o.max_events {
            return Err(invalid(
                "outbox.hard_max_events must be >= outbox.max_events",
            ));
        }
        let t = &self.timing;
        if t.sensor_poll_ms == 0 || t.sensor_poll_ms > 200 {
            return Err(invalid("timing.sensor_poll_ms must be 1..=200"));
        }
        if t.fast_poll_ms == 0 || t.fast_poll_ms > t.sensor_poll_ms {
            return Err(invalid(
                "timing.fast_poll_ms must be > 0 and <= timing.sensor_poll_ms",
            ));
        }
        if t.debounce_reads == 0 {
            return Err(invalid("timing.debounce_reads must be >= 1"));
        }
        if t.unlock_confirm_ms == 0 || t.modbus_timeout_ms == 0 || t.modbus_reconnect_ms == 0 {
            return Err(invalid(
                "timing.unlock_confirm_ms, modbus_timeout_ms and modbus_reconnect_ms must be > 0",
            ));
        }
        if t.offline_after_failures == 0 {
            return Err(invalid("timing.offline_after_failures must be >= 1"));
        }
        if t.door_left_open_s == 0 {
            return Err(invalid("timing.door_left_open_s must be > 0"));
        }
        let a = &self.access;
        if a.courier_session_s == 0 {
            return Err(invalid("access.courier_session_s must be > 0"));
        }
        if a.max_wrong_codes == 0 {
            return Err(invalid("access.max_wrong_codes must be >= 1"));
        }
        if a.wrong_code_window_s == 0 {
            return Err(invalid("access.wrong_code_window_s must be > 0"));
        }
        if a.lockout_s == 0 {
            return Err(invalid("access.lockout_s must be > 0"));
        }
        self.validate_boards()?;
        if let Some(c) = &self.charger {
            if c.address.is_empty() {
                return Err(invalid("charger.address is empty"));
            }
            if c.poll_s == 0 || c.interval_s == 0 {
                return Err(invalid("charger.poll_s and charger.interval_s must be > 0"));
            }
            if let Some(bad) = c.soc_thresholds.iter().find(|&&p| p == 0 || p > 100) {
                return Err(invalid(format!(
                    "charger.soc_thresholds: {bad} is not a percentage 1..=100"
                )));
            }
        }
        match self.scanner.kind {
            ScannerKind::Tcp => {
                self.scanner.listen.parse::<SocketAddr>().map_err(|e| {
                    invalid(format!("scanner.listen {:?}: {e}", self.scanner.listen))
                })?;
            }
            ScannerKind::Serial if self.scanner.path.as_os_str().is_empty() => {
                return Err(invalid("scanner.path is empty"));
            }
            _ => {}
        }
        self.clock.floor_millis()?;
        if self.commands.remember < 100 {
            return Err(invalid("commands.remember must be >= 100"));
        }
        Ok(())
    }

    fn validate_boards(&self) -> Result<(), ConfigError> {
        let mut ranges: Vec<(u32, u32, usize)> = Vec::new();
        for (i, b) in self.lock_boards.iter().enumerate() {
            let name = format!("lock_boards[{i}]");
            if b.address.is_empty() {
                return Err(invalid(format!("{name}.address is empty")));
            }
            if b.locks == 0 || b.locks > 256 {
                return Err(invalid(format!("{name}.locks must be 1..=256")));
            }
            if b.first_compartment == 0 {
                return Err(invalid(format!(
                    "{name}.first_compartment must be >= 1 (compartments are numbered from 1)"
                )));
            }
            let first = u32::from(b.first_compartment);
            let last = first + u32::from(b.locks) - 1;
            if last > u32::from(u16::MAX) {
                return Err(invalid(format!("{name}: compartments run past 65535")));
            }
            for (off, what) in [
                (b.coil_offset, "coil_offset"),
                (b.sensor_offset, "sensor_offset"),
                (b.parcel_offset, "parcel_offset"),
            ] {
                if u32::from(off) + u32::from(b.locks) > 65_536 {
                    return Err(invalid(format!("{name}.{what} + locks runs past 65535")));
                }
            }
            if b.sizes.len() > usize::from(b.locks) {
                return Err(invalid(format!(
                    "{name}.sizes lists {} sizes for {} locks",
                    b.sizes.len(),
                    b.locks
                )));
            }
            if let Some((_, _, j)) = ranges.iter().find(|(f, l, _)| first <= *l && *f <= last) {
                return Err(invalid(format!(
                    "{name}: compartments {first}..={last} overlap lock_boards[{j}]"
                )));
            }
            if let Some(j) = self.lock_boards[..i].iter().position(|o| o.unit == b.unit) {
                return Err(invalid(format!(
                    "{name}.unit {} is also lock_boards[{j}].unit (unit ids must be unique)",
                    b.unit
                )));
            }
            ranges.push((first, last, i));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use locker_schemas::{CompartmentId, Size};

    const GOOD: &str = r#"
cabinet_id = "CAB-1"
[[lock_boards]]
address = "127.0.0.1:5020"
unit = 1
locks = 4
sizes = ["s", "m", "l", "xl"]
[[lock_boards]]
address = "127.0.0.1:5021"
unit = 2
locks = 4
first_compartment = 5
[charger]
address = "127.0.0.1:5030"
"#;

    #[test]
    fn parses_with_defaults() {
        let c = AgentConfig::from_toml(GOOD).expect("valid");
        assert_eq!(c.cabinet().expect("id").as_str(), "CAB-1");
        assert_eq!(c.mqtt.keep_alive_s, 60);
        assert_eq!(c.mqtt.window, 64);
        assert_eq!(c.lock_boards[0].size(3), Size::Xl);
        assert_eq!(c.lock_boards[1].size(0), Size::M);
        assert_eq!(c.lock_boards[1].compartment(3), CompartmentId(8));
        assert_eq!(
            c.charger.as_ref().expect("charger").soc_thresholds,
            [20, 10]
        );
        assert_eq!(c.clock.floor_millis().expect("floor"), 1_704_067_200_000);
    }

    #[test]
    fn the_example_config_is_valid() {
        let c = AgentConfig::from_toml(include_str!("../../agent.example.toml")).expect("valid");
        assert_eq!(c.lock_boards.len(), 2);
        assert_eq!(c.lock_boards[0].size(15), Size::Xl);
        assert_eq!(c.scanner.kind, ScannerKind::Serial);
    }

    #[test]
    fn rejects_bad_configs_clearly() {
        let cases = [
            ("", "cabinet_id"),
            ("cabinet_id = \"a/b\"", "cabinet_id"),
            ("cabinet_id = \"x\"\n[timing]\nsensor_poll_ms = 500", "sensor_poll_ms"),
            ("cabinet_id = \"x\"\n[mqtt]\nwindow = 0", "window"),
            (
                "cabinet_id = \"x\"\n[[lock_boards]]\nunit = 1\n[[lock_boards]]\nunit = 2\n",
                "overlap",
            ),
            (
                "cabinet_id = \"x\"\n[[lock_boards]]\nunit = 1\n[[lock_boards]]\nunit = 1\nfirst_compartment = 100\n",
                "unique",
            ),
            ("cabinet_id = \"x\"\n[clock]\nsane_after = \"yesterday\"", "sane_after"),
            ("cabinet_id = \"x\"\nbogus = 1", "bogus"),
            (
                "cabinet_id = \"x\"\n[outbox]\nmax_events = 100\nhard_max_events = 50",
                "hard_max_events",
            ),
            (
                "cabinet_id = \"x\"\n[access]\ncourier_session_s = 0",
                "access.courier_session_s",
            ),
            (
                "cabinet_id = \"x\"\n[access]\nmax_wrong_codes = 0",
                "access.max_wrong_codes",
            ),
            (
                "cabinet_id = \"x\"\n[access]\nwrong_code_window_s = 0",
                "access.wrong_code_window_s",
            ),
            ("cabinet_id = \"x\"\n[access]\nlockout_s = 0", "access.lockout_s"),
        ];
        for (text, needle) in cases {
            let err = AgentConfig::from_toml(text).expect_err(text).to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
