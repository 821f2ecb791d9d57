//! `harness exec`: run one argv on the selected DUTs concurrently (one connection per node),
//! stream output as `NODE | line`, then a per-node summary. Exit 0 if every run succeeded, 1 if
//! any exited nonzero, 3 if any node was unreachable, 2 for an unknown `--node`, 130 when
//! Ctrl-C or SIGTERM cut it short (the remote commands are killed first).

use std::io::Write;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::{ExecArgs, Format, GlobalArgs};
use crate::exit;
use crate::slots::NodeSlots;
use crate::ssh::{ChildEvent, ConnectOptions, RemoteCommand, Session, SshError, SshTarget};

#[derive(Debug, Serialize)]
struct NodeResult {
    node: String,
    /// Exit status of the last run (or of the first failing one).
    status: Option<u32>,
    signal: Option<String>,
    /// Captured output (JSON mode only; text mode streams it).
    #[serde(skip_serializing_if = "Option::is_none")]
    stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stderr: Option<String>,
    runs: u32,
    connect_ms: u64,
    /// Handshakes the node's sshd dropped (MaxStartups) and harness retried.
    handshake_retries: u32,
    /// The node waited for a slot (`--max-parallel`).
    queued: bool,
    duration_ms: u64,
    unreachable: bool,
    error: Option<String>,
}

impl NodeResult {
    fn ok(&self) -> bool {
        self.error.is_none() && self.status == Some(0)
    }
}

/// Writes complete lines with a `NODE | ` prefix; a partial line waits for its end. Or, for
/// `--format json`, keeps everything for the result.
struct Prefixer {
    prefix: String,
    buf: Vec<u8>,
    stderr: bool,
    captured: Option<Vec<u8>>,
}

impl Prefixer {
    fn new(prefix: String, stderr: bool) -> Self {
        Prefixer { prefix, buf: Vec::new(), stderr, captured: None }
    }
    fn capturing() -> Self {
        Prefixer { prefix: String::new(), buf: Vec::new(), stderr: false, captured: Some(Vec::new()) }
    }
    fn push(&mut self, data: &[u8]) {
        if let Some(c) = &mut self.captured {
            c.extend_from_slice(data);
            return;
        }
        self.buf.extend_from_slice(data);
        if let Some(last_nl) = self.buf.iter().rposition(|&b| b == b'\n') {
            let rest = self.buf.split_off(last_nl + 1);
            let lines = std::mem::replace(&mut self.buf, rest);
            self.emit(&lines);
        }
    }
    fn flush(&mut self) {
        if !self.buf.is_empty() {
            let mut lines = std::mem::take(&mut self.buf);
            lines.push(b'\n');
            self.emit(&lines);
        }
    }
    fn emit(&self, lines: &[u8]) {
        let mut out = Vec::with_capacity(lines.len() + 16);
        for line in lines.split_inclusive(|&b| b == b'\n') {
            out.extend_from_slice(self.prefix.as_bytes());
            out.extend_from_slice(line);
        }
        // One write per batch keeps lines of different nodes from interleaving mid-line.
        let _ = if self.stderr {
            std::io::stderr().lock().write_all(&out)
        } else {
            std::io::stdout().lock().write_all(&out)
        };
    }
}

/// One run with streamed output; the remote process is killed if it outlives `timeout`, or
/// when `stop` turns true (Ctrl-C, SIGTERM): sshd does not signal a command without a pty
/// when the connection goes, so a `--sudo -- iperf3 -s` would run on as root.
async fn run_streaming(
    s: &Session,
    cmd: &RemoteCommand,
    out: &mut Prefixer,
    err: &mut Prefixer,
    timeout: Duration,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(Option<u32>, Option<String>), SshError> {
    if *stop.borrow() {
        return Err(interrupted(s));
    }
    let mut child = s.spawn(cmd).await?;
    let stream = async {
        let mut status = None;
        while let Some(ev) = child.next().await {
            match ev {
                ChildEvent::Stdout(b) => out.push(&b),
                ChildEvent::Stderr(b) => err.push(&b),
                ChildEvent::Exit(st) => status = st,
            }
        }
        status
    };
    let res = tokio::select! {
        r = tokio::time::timeout(timeout, stream) => r,
        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
            out.flush();
            err.flush();
            let _ = child.kill().await;
            return Err(interrupted(s));
        }
    };
    out.flush();
    err.flush();
    match res {
        Ok(status) => {
            if status.is_none() && child.signal().is_none() && s.is_closed() {
                return Err(SshError::Disconnected { node: s.name().to_string(), message: "connection lost".into() });
            }
            Ok((status, child.signal().map(String::from)))
        }
        Err(_) => {
            let _ = child.kill().await;
            Err(SshError::CommandTimeout { node: s.name().to_string(), command: cmd.wire(), after: timeout })
        }
    }
}

fn interrupted(s: &Session) -> SshError {
    SshError::Channel { node: s.name().to_string(), message: "interrupted: the remote command was killed".into() }
}

/// What every node runs, and how its output is shown.
#[derive(Clone)]
struct Job {
    cmd: RemoteCommand,
    repeat: u32,
    /// Capture output for the JSON result instead of streaming it.
    json: bool,
    /// Width of the node-name column.
    width: usize,
}

async fn exec_node(
    mut stop: tokio::sync::watch::Receiver<bool>,
    slots: NodeSlots,
    target: SshTarget,
    opts: ConnectOptions,
    job: Job,
) -> NodeResult {
    let Job { cmd, repeat, json, width } = job;
    let node = target.name.clone();
    let mut r = NodeResult {
        node: node.clone(),
        status: None,
        signal: None,
        stdout: None,
        stderr: None,
        runs: 0,
        connect_ms: 0,
        handshake_retries: 0,
        queued: false,
        duration_ms: 0,
        unreachable: false,
        error: None,
    };
    let slot = slots.acquire().await;
    r.queued = slot.queued;
    let t = Instant::now();
    let s = match Session::connect(&target, &opts).await {
        Ok(s) => s,
        Err(e) => {
            r.unreachable = true;
            r.error = Some(e.to_string());
            return r;
        }
    };
    r.connect_ms = t.elapsed().as_millis() as u64;
    r.handshake_retries = s.handshake_retries();
    let t = Instant::now();
    let (mut out, mut err) = match json {
        true => (Prefixer::capturing(), Prefixer::capturing()),
        false => (Prefixer::new(format!("{node:width$} | "), false), Prefixer::new(format!("{node:width$} | "), true)),
    };
    for _ in 0..repeat {
        r.runs += 1;
        let res = run_streaming(&s, &cmd, &mut out, &mut err, opts.command_timeout, &mut stop).await;
        match res {
            Ok((status, signal)) => {
                r.status = status;
                r.signal = signal;
                if status != Some(0) {
                    break;
                }
            }
            Err(e) => {
                // A connection lost mid-command is exit 3 like one never made (README).
                r.unreachable = e.is_connection_lost() || e.is_unreachable();
                r.error = Some(e.to_string());
                break;
            }
        }
    }
    r.duration_ms = t.elapsed().as_millis() as u64;
    if json {
        r.stdout = out.captured.map(|b| String::from_utf8_lossy(&b).into_owned());
        r.stderr = err.captured.map(|b| String::from_utf8_lossy(&b).into_owned());
    }
    s.close().await;
    r
}

pub async fn run(g: &GlobalArgs, a: &ExecArgs) -> anyhow::Result<u8> {
    let (topo, _templates) = super::load_topology(g, &a.topology)?;
    let nodes: Vec<_> = if a.nodes.is_empty() {
        topo.duts().collect()
    } else {
        let mut v = Vec::new();
        for name in &a.nodes {
            match topo.duts().find(|n| &n.name == name) {
                Some(n) => v.push(n),
                None => {
                    let duts: Vec<&str> = topo.duts().map(|n| n.name.as_str()).collect();
                    eprintln!("error: no DUT node `{name}` in {} (DUTs: {})", a.topology.display(), duts.join(", "));
                    return Ok(exit::INVALID_INPUT);
                }
            }
        }
        v
    };
    // Empty stdin (EOF at once): a command that reads stdin must not wait forever.
    let mut cmd = RemoteCommand::new(a.command.clone()).stdin(Vec::new());
    cmd.sudo = a.sudo;
    let json = a.format == Format::Json;
    let width = nodes.iter().map(|n| n.name.len()).max().unwrap_or(0);
    let mut opts = super::connect_options(g);
    // Repeated runs are sequential; a single run per node needs only one channel anyway.
    opts.max_channels = opts.max_channels.max(1);
    let slots = NodeSlots::new(opts.max_parallel);
    if let Some(note) = slots.queued_note(nodes.len()) {
        eprintln!("harness: {note}");
    }
    // Ctrl-C or SIGTERM: every node's remote command is killed before harness exits (130).
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let signals = tokio::spawn(async move {
        crate::run::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let tasks: Vec<_> = nodes
        .iter()
        .map(|n| {
            let target = SshTarget::for_node(&topo, n);
            let job = Job { cmd: cmd.clone(), repeat: a.repeat, json, width };
            let task = exec_node(stop.clone(), slots.clone(), target, opts.clone(), job);
            tokio::spawn(task)
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await?);
    }
    signals.abort();
    let interrupted = *stop.borrow();
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for r in &results {
            let what = match (&r.error, r.status, &r.signal) {
                (Some(e), _, _) if r.unreachable => format!("unreachable: {e}"),
                (Some(e), _, _) => format!("error: {e}"),
                (None, Some(s), _) => format!("exit {s}"),
                (None, None, Some(sig)) => format!("killed by signal {sig}"),
                (None, None, None) => "no exit status".to_string(),
            };
            let runs = if r.runs > 1 { format!(", {} runs", r.runs) } else { String::new() };
            let retries = match r.handshake_retries {
                0 => String::new(),
                n => format!(", {n} handshake retr{}", if n == 1 { "y" } else { "ies" }),
            };
            let queued = if r.queued { ", queued" } else { "" };
            // `what` may quote the server (a disconnect message): escaped, never raw.
            eprintln!(
                "{:width$} : {} ({} ms{runs}, connect {} ms{retries}{queued})",
                r.node,
                crate::report::sanitize::escape_control_lines(&what),
                r.duration_ms,
                r.connect_ms
            );
        }
    }
    // Every retried handshake, the jump host's and failed nodes' included.
    eprintln!("{}", crate::ssh::retries_line(crate::ssh::handshake_retries_total()));
    Ok(if interrupted {
        exit::INTERRUPTED
    } else if results.iter().any(|r| r.unreachable) {
        exit::UNREACHABLE
    } else if results.iter().all(NodeResult::ok) {
        exit::OK
    } else {
        exit::FAILED
    })
}
