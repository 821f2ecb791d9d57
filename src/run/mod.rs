//! Executing plans on nodes: `up`, `down`, `status`, `logs`.

pub mod qga;
pub mod qmp;
pub mod serial;
