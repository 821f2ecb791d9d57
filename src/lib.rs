//! `harness`: bring network-function VMs up and down on lab hosts over SSH.
//!
//! Data flows in one direction (see `design.md`):
//!
//! ```text
//! topology.yaml ─load+validate─▶ Topology ─plan (pure)─▶ Plan ─execute (ssh)─▶ Run ─▶ report
//! ```
//!
//! * [`topology`] parses and validates the YAML file (file:line:col errors).
//! * [`templates`] holds the minijinja templates (embedded, overridable by a directory).
//! * [`plan`] turns a topology into exact qemu argv and file contents, without I/O.
//! * [`ssh`] is the transport: one connection per node, many channels.
//! * [`remote`] holds node operations built on it (probes, hugepages, process control).
//! * [`run`] executes plans: `up`, `down`, `status`, `logs`.
//! * [`collect`] parses what runs collect (VPP `show errors`, `/proc/net/snmp6`).
//! * [`pipeline`] serves CI: JUnit, artifacts, VNF counters, reproduction bundles and replay.
//! * [`report`] renders progress events from node tasks (TTY bars, plain lines, JSON).
//! * [`cli`] is the command-line edge; `main.rs` only calls it.

pub mod cli;
pub mod collect;
pub mod commands;
pub mod duration;
pub mod exit;
pub mod facts;
pub mod pipeline;
pub mod plan;
pub mod quote;
pub mod remote;
pub mod report;
pub mod run;
pub mod slots;
pub mod ssh;
pub mod templates;
#[cfg(test)]
pub(crate) mod testsupport;
pub mod topology;
