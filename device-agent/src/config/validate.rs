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
        self.validate_serial()?;
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

    /// The `[[serial_ports]]` lines, and the units that name them.
    fn validate_serial(&self) -> Result<(), ConfigError> {
        for (i, p) in self.serial_ports.iter().enumerate() {
            let name = format!("serial_ports[{i}]");
            if p.name.is_empty() {
                return Err(invalid(format!("{name}.name is empty")));
            }
            if let Some(j) = self.serial_ports[..i].iter().position(|o| o.name == p.name) {
                return Err(invalid(format!(
                    "{name}.name {:?} is also serial_ports[{j}].name (names must be unique)",
                    p.name
                )));
            }
            if p.path.is_empty() {
                return Err(invalid(format!("{name}.path is empty")));
            }
            if let Some(j) = self.serial_ports[..i].iter().position(|o| o.path == p.path) {
                return Err(invalid(format!(
                    "{name}.path {:?} is also serial_ports[{j}].path (one [[serial_ports]] entry per line)",
                    p.path
                )));
            }
            if p.baud == 0 || p.baud > 4_000_000 {
                return Err(invalid(format!(
                    "{name}.baud must be 1..=4000000, not {}",
                    p.baud
                )));
            }
            if !matches!(p.stop_bits, 1 | 2) {
                return Err(invalid(format!(
                    "{name}.stop_bits must be 1 or 2, not {}",
                    p.stop_bits
                )));
            }
            if p.data_bits != 8 {
                return Err(invalid(format!(
                    "{name}.data_bits must be 8 (Modbus RTU), not {}",
                    p.data_bits
                )));
            }
            if p.request_timeout_ms == 0 || p.request_timeout_ms > 10_000 {
                return Err(invalid(format!(
                    "{name}.request_timeout_ms must be 1..=10000"
                )));
            }
            if let Some(d) = p.inter_frame_delay_ms {
                if !(d.is_finite() && d > 0.0 && d <= 1_000.0) {
                    return Err(invalid(format!(
                        "{name}.inter_frame_delay_ms must be > 0 and <= 1000, not {d}"
                    )));
                }
            }
            if p.reopen_max_ms < 250 {
                return Err(invalid(format!("{name}.reopen_max_ms must be >= 250")));
            }
        }
        // (key, port name, unit) of every unit on a line
        let mut on_lines: Vec<(String, &str, u8)> = Vec::new();
        let boards = self
            .lock_boards
            .iter()
            .enumerate()
            .map(|(i, b)| (format!("lock_boards[{i}]"), &b.serial, b.unit));
        let charger = self
            .charger
            .iter()
            .map(|c| ("charger".to_string(), &c.serial, c.unit));
        for (key, serial, unit) in boards.chain(charger) {
            let Some(port) = serial else { continue };
            if !self.serial_ports.iter().any(|p| &p.name == port) {
                let known: Vec<&str> = self.serial_ports.iter().map(|p| p.name.as_str()).collect();
                return Err(invalid(format!(
                    "{key}.serial {port:?} names no [[serial_ports]] entry (known: {known:?})"
                )));
            }
            if unit == 0 || unit > 247 {
                return Err(invalid(format!(
                    "{key}.unit {unit} on serial line {port:?} must be 1..=247 (0 is broadcast)"
                )));
            }
            if let Some((other, _, _)) = on_lines.iter().find(|(_, p, u)| p == port && *u == unit) {
                return Err(invalid(format!(
                    "{key}.unit {unit} is also {other}.unit on serial line {port:?} (unit ids on one line must differ)"
                )));
            }
            on_lines.push((key, port.as_str(), unit));
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
    use crate::config::ParityName;
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

    const BUS: &str = r#"
cabinet_id = "CAB-1"
[[serial_ports]]
name = "bus"
path = "/dev/ttyUSB0"
baud = 19200
parity = "even"
[[lock_boards]]
serial = "bus"
unit = 1
locks = 16
[[lock_boards]]
serial = "bus"
unit = 2
locks = 16
first_compartment = 17
[[lock_boards]]
address = "10.0.0.7:502"
unit = 3
locks = 16
first_compartment = 33
[charger]
serial = "bus"
unit = 10
"#;

    #[test]
    fn parses_a_serial_bus() {
        let c = AgentConfig::from_toml(BUS).expect("valid");
        let p = &c.serial_ports[0];
        assert_eq!(
            (p.baud, p.parity, p.stop_bits, p.data_bits),
            (19_200, ParityName::Even, 1, 8)
        );
        assert_eq!(p.request_timeout_ms, 200);
        // 3.5 characters of 11 bits at 19,200 baud
        let t = p.inter_frame_delay().as_micros();
        assert!((2_000..2_010).contains(&t), "{t}");
        assert_eq!(c.lock_boards[1].serial.as_deref(), Some("bus"));
        assert_eq!(c.lock_boards[2].serial, None);
        assert_eq!(
            c.charger.as_ref().and_then(|c| c.serial.as_deref()),
            Some("bus")
        );
    }

    #[test]
    fn rejects_bad_serial_configs_clearly() {
        let with = |from: &str, to: &str| {
            assert!(BUS.contains(from), "{from}");
            BUS.replacen(from, to, 1)
        };
        let cases = [
            (
                with("serial = \"bus\"\nunit = 2", "serial = \"bux\"\nunit = 2"),
                "lock_boards[1].serial \"bux\" names no [[serial_ports]] entry",
            ),
            (
                with("unit = 2", "unit = 1"),
                "lock_boards[1].unit 1 is also lock_boards[0].unit",
            ),
            (
                with("unit = 10", "unit = 1"),
                "charger.unit 1 is also lock_boards[0].unit on serial line \"bus\"",
            ),
            (
                with("unit = 10", "unit = 248"),
                "charger.unit 248 on serial line \"bus\" must be 1..=247",
            ),
            (
                with("unit = 1\n", "unit = 0\n"),
                "lock_boards[0].unit 0 on serial line \"bus\" must be 1..=247 (0 is broadcast)",
            ),
            (
                with("baud = 19200", "baud = 0"),
                "serial_ports[0].baud must be 1..=4000000",
            ),
            (with("parity = \"even\"", "parity = \"mark\""), "parity"),
            (
                with("parity = \"even\"", "stop_bits = 3"),
                "serial_ports[0].stop_bits must be 1 or 2",
            ),
            (
                with("parity = \"even\"", "data_bits = 7"),
                "serial_ports[0].data_bits must be 8",
            ),
            (
                with("parity = \"even\"", "request_timeout_ms = 0"),
                "serial_ports[0].request_timeout_ms",
            ),
            (
                with("parity = \"even\"", "inter_frame_delay_ms = 0.0"),
                "serial_ports[0].inter_frame_delay_ms",
            ),
            (
                with("path = \"/dev/ttyUSB0\"", "path = \"\""),
                "serial_ports[0].path is empty",
            ),
            (
                with("name = \"bus\"", "name = \"\""),
                "serial_ports[0].name is empty",
            ),
            (with("parity = \"even\"", "bogus = 1"), "bogus"),
            (
                format!("{BUS}[[serial_ports]]\nname = \"bus\"\npath = \"/dev/ttyUSB1\"\n"),
                "serial_ports[1].name \"bus\" is also serial_ports[0].name",
            ),
        ];
        for (text, needle) in cases {
            let err = AgentConfig::from_toml(&text).expect_err(&text).to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
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
