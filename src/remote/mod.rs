//! Node operations built on [`crate::ssh::Session`]: probes, hugepages, process control.
pub mod hugepages;
pub mod probe;
pub mod process;
