//! A timestamped copy of every progress event, for a run's `events.jsonl` artifact and for
//! phase timings in CI reports (node setup phases exist only as events).
//!
//! The reporter appends each event as it receives it; the channel is unbounded and drained at
//! once, so the receive time is the event's time to within milliseconds.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{Event, EventKind};

/// One event with its time: seconds since the Unix epoch and since the reporter started.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedEvent {
    pub unix: f64,
    pub elapsed_s: f64,
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// `phase`, `info` or `warn`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Shared, append-only list of events (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct EventLog(Arc<Mutex<Vec<LoggedEvent>>>);

impl EventLog {
    pub(super) fn push(&self, ev: &Event, start: Instant) {
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let (kind, phase, message) = match &ev.kind {
            EventKind::Phase(p) => ("phase", Some(p.as_str()), None),
            EventKind::Info(m) => ("info", None, Some(m.clone())),
            EventKind::Warn(m) => ("warn", None, Some(m.clone())),
        };
        let e = LoggedEvent {
            unix,
            elapsed_s: start.elapsed().as_secs_f64(),
            node: ev.node.clone(),
            vm: ev.vm.clone(),
            kind,
            phase,
            message,
        };
        self.0.lock().expect("event log lock").push(e);
    }

    pub fn events(&self) -> Vec<LoggedEvent> {
        self.0.lock().expect("event log lock").clone()
    }

    /// One JSON object per line.
    pub fn to_jsonl(&self) -> String {
        self.events().iter().map(|e| serde_json::to_string(e).expect("serialisable") + "\n").collect()
    }
}
