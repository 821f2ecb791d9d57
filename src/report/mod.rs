//! Progress reporting: node tasks send [`Event`]s over a channel; one [`Reporter`] renders them.
//!
//! Node and VM tasks never print. They hold an [`EventSink`] and report phases and messages;
//! the reporter owns the terminal: indicatif bars (one line per VM with its phase and elapsed
//! time) on a TTY, plain timestamped lines otherwise (with a heartbeat so CI logs never look
//! hung), or nothing. Rendering never blocks the senders (unbounded channel, no shared locks).
//! Names and messages may carry text from hosts and files; every human output path passes them
//! through [`sanitize`] so control characters cannot drive the terminal.

pub mod sanitize;

pub mod junit;
pub mod log;

pub use log::{EventLog, LoggedEvent};

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;

/// Where a VM (or node) is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    Preparing,
    Hugepages,
    Uploading,
    Starting,
    Booting,
    Agent,
    Pinning,
    Ready,
    Stopping,
    Stopped,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Preparing => "preparing",
            Phase::Hugepages => "hugepages",
            Phase::Uploading => "uploading",
            Phase::Starting => "starting",
            Phase::Booting => "booting",
            Phase::Agent => "guest agent",
            Phase::Pinning => "pinning",
            Phase::Ready => "ready",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Failed => "FAILED",
        }
    }
    fn is_final(self) -> bool {
        matches!(self, Phase::Ready | Phase::Stopped | Phase::Failed)
    }
}

#[derive(Debug, Clone)]
pub enum EventKind {
    Phase(Phase),
    Info(String),
    Warn(String),
}

#[derive(Debug, Clone)]
pub struct Event {
    pub node: String,
    pub vm: Option<String>,
    pub kind: EventKind,
}

/// A cheap handle for one node or VM task to report through.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<Event>,
    node: String,
    vm: Option<String>,
}

impl EventSink {
    pub fn for_vm(&self, vm: &str) -> EventSink {
        EventSink { tx: self.tx.clone(), node: self.node.clone(), vm: Some(vm.to_string()) }
    }
    pub fn for_node(&self, node: &str) -> EventSink {
        EventSink { tx: self.tx.clone(), node: node.to_string(), vm: None }
    }
    pub fn phase(&self, p: Phase) {
        self.send(EventKind::Phase(p));
    }
    pub fn info(&self, msg: impl Into<String>) {
        self.send(EventKind::Info(msg.into()));
    }
    pub fn warn(&self, msg: impl Into<String>) {
        self.send(EventKind::Warn(msg.into()));
    }
    fn send(&self, kind: EventKind) {
        // A closed reporter only means nobody is watching; the run goes on.
        let _ = self.tx.send(Event { node: self.node.clone(), vm: self.vm.clone(), kind });
    }
}

/// How to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Bars,
    Plain,
    Never,
}

impl Style {
    /// `auto`: bars only when stderr is a terminal.
    pub fn auto() -> Style {
        if std::io::stderr().is_terminal() { Style::Bars } else { Style::Plain }
    }
}

/// Owns the output; runs as its own task until every sink is dropped.
pub struct Reporter {
    handle: tokio::task::JoinHandle<()>,
}

impl Reporter {
    /// Start the reporter; returns it and the root sink (node "" — use `for_node`).
    pub fn start(style: Style) -> (Reporter, EventSink) {
        Self::start_logged(style, None)
    }
    /// As [`Reporter::start`], also appending every event to `log` with its time.
    pub fn start_logged(style: Style, log: Option<EventLog>) -> (Reporter, EventSink) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(render(style, rx, log));
        (Reporter { handle }, EventSink { tx, node: String::new(), vm: None })
    }
    /// Wait until all sinks are gone and the last line is drawn.
    pub async fn finish(self) {
        let _ = self.handle.await;
    }
}

/// The event's `node/vm` key and its kind, with every control character made visible: the key
/// is one field (newlines escaped), messages may span lines and keep their breaks.
fn printable(ev: Event) -> (String, EventKind) {
    let key = match &ev.vm {
        Some(vm) => format!("{}/{vm}", ev.node),
        None => ev.node.clone(),
    };
    let key = sanitize::escape_control(&key).into_owned();
    let kind = match ev.kind {
        EventKind::Info(m) => EventKind::Info(sanitize::escape_control_lines(&m).into_owned()),
        EventKind::Warn(m) => EventKind::Warn(sanitize::escape_control_lines(&m).into_owned()),
        k @ EventKind::Phase(_) => k,
    };
    (key, kind)
}

const HEARTBEAT: Duration = Duration::from_secs(30);

async fn render(style: Style, mut rx: mpsc::UnboundedReceiver<Event>, log: Option<EventLog>) {
    let start = Instant::now();
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
    let mut bars: BTreeMap<String, (ProgressBar, Instant)> = BTreeMap::new();
    let bar_style =
        ProgressStyle::with_template("{spinner} {prefix:<24} {msg:<14} {elapsed:>4}").expect("valid template");
    let mut active: BTreeMap<String, Phase> = BTreeMap::new();
    loop {
        let ev = if style == Style::Plain {
            match tokio::time::timeout(HEARTBEAT, rx.recv()).await {
                Ok(ev) => ev,
                Err(_) => {
                    let waiting: Vec<String> = active
                        .iter()
                        .filter(|(_, p)| !p.is_final())
                        .map(|(k, p)| format!("{k} {}", p.as_str()))
                        .collect();
                    if !waiting.is_empty() {
                        eprintln!("[{:>7.1}s] still working: {}", start.elapsed().as_secs_f64(), waiting.join(", "));
                    }
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        let Some(ev) = ev else { break };
        if let Some(log) = &log {
            log.push(&ev, start);
        }
        let (key, kind) = printable(ev);
        match style {
            Style::Never => {}
            Style::Plain => {
                let t = start.elapsed().as_secs_f64();
                match &kind {
                    EventKind::Phase(p) => {
                        active.insert(key.clone(), *p);
                        eprintln!("[{t:>7.1}s] {key}: {}", p.as_str());
                    }
                    EventKind::Info(m) => eprintln!("[{t:>7.1}s] {key}: {m}"),
                    EventKind::Warn(m) => eprintln!("[{t:>7.1}s] {key}: warning: {m}"),
                }
            }
            Style::Bars => match &kind {
                EventKind::Phase(p) => {
                    let (bar, _) = bars.entry(key.clone()).or_insert_with(|| {
                        let b = multi.add(ProgressBar::new_spinner());
                        b.set_style(bar_style.clone());
                        b.set_prefix(key.clone());
                        b.enable_steady_tick(Duration::from_millis(120));
                        (b, Instant::now())
                    });
                    bar.set_message(p.as_str());
                    if p.is_final() {
                        bar.finish();
                    }
                }
                EventKind::Info(m) => {
                    let _ = multi.println(format!("{key}: {m}"));
                }
                EventKind::Warn(m) => {
                    let _ = multi.println(format!("{key}: warning: {m}"));
                }
            },
        }
    }
    for (bar, _) in bars.values() {
        if !bar.is_finished() {
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reporter_finishes_when_sinks_drop() {
        let (rep, root) = Reporter::start(Style::Never);
        let vm = root.for_node("DUT1").for_vm("DUT1_1");
        vm.phase(Phase::Booting);
        vm.info("hello");
        drop(vm);
        drop(root);
        tokio::time::timeout(Duration::from_secs(2), rep.finish()).await.expect("reporter must end");
    }

    #[test]
    fn regression_terminal_escapes_in_events_are_printed_raw() {
        let ev = Event {
            node: "DUT\u{1b}[2J".into(),
            vm: Some("vm\n1".into()),
            kind: EventKind::Warn("guest says \u{1b}]0;owned\u{7}\nnext line".into()),
        };
        let (key, kind) = printable(ev);
        assert_eq!(key, "DUT\\u{1b}[2J/vm\\n1");
        match kind {
            EventKind::Warn(m) => assert_eq!(m, "guest says \\u{1b}]0;owned\\u{7}\nnext line"),
            k => panic!("{k:?}"),
        }
    }
}
