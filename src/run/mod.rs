//! Executing plans on nodes: `up`, `down`, `status`, `logs`.
//!
//! `up` runs every node concurrently (one SSH connection each) and every VM of a node
//! concurrently; everything it starts is tracked as it happens, so an error, a timeout or an
//! interrupt stops exactly that on every node before returning. State lives on the hosts
//! ([`manifest`]) and, for convenience, in a local [`record`].

pub mod bridge;
pub mod down;
pub mod guest;
pub mod jsonlines;
pub mod manifest;
pub mod qga;
pub mod qmp;
pub mod record;
pub mod serial;
pub mod status;
pub(crate) mod testpause;
pub mod up;

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The run id `validate` and `check` plan with: as long as a generated one, so that the path
/// limits they check (a socket path under `run_root` is at most 107 bytes) are those `up` meets.
pub const PLACEHOLDER_RUN_ID: &str = "00000000-000000-RUN0";

/// `YYYYmmdd-HHMMSS-xxxx` in UTC: sortable, readable, unique enough with 16 random bits.
pub fn new_run_id() -> String {
    let secs = now_unix() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let tag: u16 = rand::random();
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{tag:04x}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Who started a run, for manifests: `user@host`.
pub fn started_by() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    format!("{user}@{host}")
}

/// Ctrl-C (SIGINT) or SIGTERM, whichever comes first.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `validate` planned with the run id `RUN_ID`, 14 characters shorter than a generated one:
    /// a `run_root` long enough to push a socket path past 107 bytes with a real id validated,
    /// and `up` then refused it.
    #[test]
    fn regression_the_placeholder_run_id_is_as_long_as_a_generated_one() {
        assert_eq!(PLACEHOLDER_RUN_ID.len(), new_run_id().len());
        assert!(crate::remote::layout::run_id_problem(PLACEHOLDER_RUN_ID).is_none());
    }

    #[test]
    fn run_ids_are_sortable_and_safe() {
        let id = new_run_id();
        assert_eq!(id.len(), "20261122-030405-abcd".len(), "{id}");
        assert!(id.starts_with("20"));
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }
}
