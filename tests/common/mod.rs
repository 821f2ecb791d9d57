//! Shared helpers for integration tests.

pub mod cli;
pub mod lab;
pub mod procs;
