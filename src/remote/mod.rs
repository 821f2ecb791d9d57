//! Node operations built on [`crate::ssh::Session`]: facts, checks, hugepages, process control,
//! the host-wide lock.
pub mod check;
pub mod facts;
pub mod hugepage_ensure;
pub mod hugepages;
pub mod kvm;
pub mod layout;
pub mod lock;
pub mod process;
pub mod reserve;
