//! Planning: a pure function from a validated [`Topology`] to a [`Plan`].
//!
//! This is where CSIT fidelity lives (qemu argv, startup.conf, testpmd command line, templates),
//! with CSIT's weaknesses fixed; each deliberate difference is listed in the README.

mod model;

pub use model::*;

use crate::templates::{TemplateError, Templates};
use crate::topology::Topology;

pub struct PlanOptions<'a> {
    /// Run id; remote paths are `<run_root>/<run_id>/<vm>/...`.
    pub run_id: String,
    pub templates: &'a Templates,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("VM {vm}: {source}")]
    Template { vm: String, source: TemplateError },
    #[error("VM {vm}: {message}")]
    Invalid { vm: String, message: String },
}

/// Build the plan for every DUT that has VMs.
pub fn build(_topology: &Topology, _opts: &PlanOptions) -> Result<Plan, PlanError> {
    todo!("plan: build")
}
