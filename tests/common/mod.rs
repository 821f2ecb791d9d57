//! Shared helpers for integration tests.

pub mod lab;
pub mod procs;
