//! CPU time of the simulator and of a child gateway over a measured phase, from
//! `/proc/PID/stat` (utime + stime of all the process' threads, Linux only).
//!
//! The kernel reports these in clock ticks of `USER_HZ`, which Linux fixes at 100 per second
//! for user space on every architecture it runs on, so the resolution is 10 ms: measure phases
//! of seconds. [`CpuSpan::start`] samples both processes, [`CpuSpan::stop`] samples again and
//! gives a [`CpuReport`] that prints as one line (core-seconds, and cores on average over the
//! phase's wall time). A gateway restarted during the phase (another pid at the end) is
//! reported for its new process only, since it started; off Linux every figure is "unknown".
//! [`ProcessesCpu`] sums a set of processes (a cluster's gateway nodes, its NATS servers).

use std::fmt;
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// CPU seconds (user + system, all threads) the process has used since it started: this
/// process for `None`. `None` when `/proc` cannot tell (not Linux, process gone).
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

/// utime + stime in seconds from the text of `/proc/PID/stat`.
fn parse_stat(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces: count from its end.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_S)
}

/// CPU used by one process over a phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuUse {
    /// CPU seconds (user + system) used in the phase.
    pub core_seconds: f64,
    /// Wall time of the phase.
    pub wall: Duration,
}

impl CpuUse {
    /// Cores busy on average over the phase.
    pub fn cores(&self) -> f64 {
        self.core_seconds / self.wall.as_secs_f64().max(1e-9)
    }

    /// Microseconds of CPU per unit (an agent, a connection) per second of the phase.
    pub fn us_per_unit_s(&self, units: usize) -> f64 {
        self.cores() * 1e6 / units.max(1) as f64
    }
}

impl fmt::Display for CpuUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.2} core-s in {:.1} s = {:.3} cores",
            self.core_seconds,
            self.wall.as_secs_f64(),
            self.cores()
        )
    }
}

/// A measured phase: started with [`CpuSpan::start`], read with [`CpuSpan::stop`].
#[derive(Debug, Clone)]
pub struct CpuSpan {
    wall: Instant,
    simulator: Option<f64>,
    gateway: Option<(u32, Option<f64>)>,
}

/// The simulator's and the child gateway's CPU over one phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuReport {
    /// This process (the simulator, and the gateway too when it runs in-process).
    pub simulator: Option<CpuUse>,
    /// The gateway child process, when there is one.
    pub gateway: Option<CpuUse>,
    /// The gateway's pid changed during the phase: its figure covers the new process only.
    pub gateway_restarted: bool,
    /// A gateway pid was given but its CPU could not be read.
    pub gateway_unknown: bool,
}

impl CpuSpan {
    /// Starts a phase now; `gateway` is the child gateway's pid, if it is a child process.
    pub fn start(gateway: Option<u32>) -> Self {
        Self {
            wall: Instant::now(),
            simulator: cpu_seconds(None),
            gateway: gateway.map(|pid| (pid, cpu_seconds(Some(pid)))),
        }
    }

    /// The CPU used since [`CpuSpan::start`]; `gateway` is the child gateway's pid now.
    pub fn stop(&self, gateway: Option<u32>) -> CpuReport {
        let wall = self.wall.elapsed();
        let since = |before: Option<f64>, now: Option<f64>| {
            now.map(|n| CpuUse {
                core_seconds: (n - before.unwrap_or(0.0)).max(0.0),
                wall,
            })
        };
        let simulator = since(self.simulator, cpu_seconds(None));
        let (gw, restarted) = match (self.gateway, gateway) {
            (_, None) => (None, false),
            (Some((pid, before)), Some(now_pid)) if pid == now_pid => {
                (since(before, cpu_seconds(Some(pid))), false)
            }
            (before, Some(now_pid)) => (since(None, cpu_seconds(Some(now_pid))), before.is_some()),
        };
        CpuReport {
            simulator,
            gateway: gw,
            gateway_restarted: restarted,
            gateway_unknown: gateway.is_some() && gw.is_none(),
        }
    }
}

impl fmt::Display for CpuReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.simulator {
            Some(s) => write!(f, "CPU: simulator process {s}")?,
            None => write!(f, "CPU: simulator process unknown")?,
        }
        match (&self.gateway, self.gateway_unknown) {
            (Some(g), _) => {
                write!(f, "; gateway process {g}")?;
                if self.gateway_restarted {
                    write!(
                        f,
                        " (restarted during the phase: the new process since it started)"
                    )?;
                }
                Ok(())
            }
            (None, true) => write!(f, "; gateway process unknown"),
            (None, false) => Ok(()),
        }
    }
}

/// CPU of a set of processes over a phase (the gateway nodes, the NATS servers).
#[derive(Debug, Clone)]
pub struct ProcessesCpu {
    wall: Instant,
    start: Vec<(u32, Option<f64>)>,
}

impl ProcessesCpu {
    /// Samples `pids` now.
    pub fn start(pids: &[u32]) -> Self {
        Self {
            wall: Instant::now(),
            start: pids.iter().map(|&p| (p, cpu_seconds(Some(p)))).collect(),
        }
    }

    /// Core-seconds used by all of them since [`Self::start`], and the cores busy on average
    /// (None when a process could not be read).
    pub fn stop(&self) -> Option<(f64, f64)> {
        let wall = self.wall.elapsed().as_secs_f64().max(1e-9);
        let mut sum = 0.0;
        for (pid, before) in &self.start {
            sum += cpu_seconds(Some(*pid))? - before.unwrap_or(0.0);
        }
        Some((sum, sum / wall))
    }

    /// One line: "{what} {core-s} core-s = {cores} cores".
    pub fn line(&self, what: &str) -> String {
        match self.stop() {
            Some((s, c)) => format!("{what} {s:.2} core-s = {c:.3} cores"),
            None => format!("{what} unknown"),
        }
    }

    /// As [`Self::stop`] for a set that changed in the phase (processes killed and started
    /// again): the started processes still running from their first sample, the ones in `now`
    /// that were not there at the start with all their CPU (they started in the phase); the
    /// ones that ended are left out (their CPU went with them). Core-seconds, cores, and how
    /// many were left out.
    pub fn stop_with(&self, now: &[u32]) -> (f64, f64, usize) {
        let wall = self.wall.elapsed().as_secs_f64().max(1e-9);
        let (mut sum, mut gone) = (0.0, 0);
        for (pid, before) in &self.start {
            match (now.contains(pid), cpu_seconds(Some(*pid))) {
                (true, Some(t)) => sum += t - before.unwrap_or(0.0),
                _ => gone += 1,
            }
        }
        for pid in now
            .iter()
            .filter(|p| !self.start.iter().any(|(s, _)| s == *p))
        {
            sum += cpu_seconds(Some(*pid)).unwrap_or(0.0);
        }
        (sum, sum / wall, gone)
    }

    /// One line of [`Self::stop_with`].
    pub fn line_with(&self, what: &str, now: &[u32]) -> String {
        let (s, c, gone) = self.stop_with(now);
        let left = if gone > 0 {
            format!(" (without {gone} killed in the phase: their CPU until then is not counted)")
        } else {
            String::new()
        };
        format!("{what} {s:.2} core-s = {c:.3} cores{left}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_spaced_command_name() {
        let stat = "4242 (locker sim (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    1234 567 0 0 20 0 9 0 100 2000000 5000 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(18.01));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_burns_measurable_cpu() {
        let span = CpuSpan::start(None);
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let r = span.stop(None);
        let s = r.simulator.expect("Linux /proc");
        assert!(s.core_seconds > 0.0, "{r}");
        assert!(r.gateway.is_none() && !r.gateway_unknown);
        assert!(r.to_string().starts_with("CPU: simulator process "), "{r}");
    }

    #[test]
    fn a_gateway_that_is_gone_is_unknown() {
        let span = CpuSpan::start(Some(u32::MAX));
        let r = span.stop(Some(u32::MAX));
        assert!(r.gateway.is_none() && r.gateway_unknown, "{r}");
        assert!(r.to_string().ends_with("gateway process unknown"), "{r}");
    }
}
