//! Nightly pipelines and reproduction: what a CI job gets out of a run besides the exit code.
//!
//! * [`junit`]: a command's result as JUnit (`--junit FILE`), failure vs error vs skipped;
//! * [`counters`]: VNF counters from the guests (`collect:`), raw and parsed;
//! * [`artifacts`]: serial logs, argv, files, manifests, facts and counters (`--artifacts DIR`),
//!   read before anything is stopped;
//! * [`bundle`]: the reproduction record of a run and its `.tar.gz` (`harness bundle`);
//! * [`drift`]: what a replay would run differently from the bundle (`harness replay`).

pub mod artifacts;
pub mod bundle;
pub mod counters;
pub mod down;
pub mod drift;
pub mod junit;
pub mod run;
