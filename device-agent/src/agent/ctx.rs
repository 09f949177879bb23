//! What every part of the agent reads and none owns alone: the effective configuration (the
//! file with stored runtime settings applied; replaced only by the executor's `set_config`),
//! the cabinet id and the wall clock. The main loop owns the one [`Ctx`] and lends it to the
//! parts with each call.

use std::sync::Arc;

use locker_schemas::CabinetId;

use crate::clock::Clock;
use crate::config::AgentConfig;

/// The agent's shared, read-mostly context.
pub(super) struct Ctx {
    cfg: Arc<AgentConfig>,
    cabinet: CabinetId,
    clock: Arc<dyn Clock>,
    clock_floor: u64,
}

impl Ctx {
    pub fn new(
        cfg: Arc<AgentConfig>,
        cabinet: CabinetId,
        clock: Arc<dyn Clock>,
        clock_floor: u64,
    ) -> Self {
        Self {
            cfg,
            cabinet,
            clock,
            clock_floor,
        }
    }

    /// The effective configuration.
    pub fn cfg(&self) -> &Arc<AgentConfig> {
        &self.cfg
    }

    /// Replaces the effective configuration (a `set_config` command).
    pub fn set_cfg(&mut self, cfg: Arc<AgentConfig>) {
        self.cfg = cfg;
    }

    /// This agent's cabinet.
    pub fn cabinet(&self) -> &CabinetId {
        &self.cabinet
    }

    /// Wall-clock now.
    pub fn now_millis(&self) -> u64 {
        self.clock.now_millis()
    }

    /// Whether the wall clock can be trusted.
    pub fn clock_sane(&self) -> bool {
        self.now_millis() >= self.clock_floor
    }
}
