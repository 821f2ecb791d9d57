//! QEMU guest agent (QGA) client over any byte stream: a tokio `UnixStream` on the host, or the
//! stdio of `sudo socat - UNIX-CONNECT:<qga.sock>` running in an SSH channel.
//!
//! QGA has no command ids and its chardev keeps whatever a previous client left unread, so the
//! stream is only trusted after `guest-sync-delimited` (see the QGA schema and lab-notes §3): we
//! send a 0xFF flush byte and the request with a random id; the agent answers the 0xFF with a
//! JSON parse error, then sends `0xFF {"return": id}`. Everything before the last 0xFF, and every
//! reply with another id, is stale and discarded. The qapi crates cannot do this framing, hence
//! this small framer.
//!
//! One request is in flight at a time (`&mut self`). A timeout or protocol error leaves a reply
//! possibly still on its way, which the next command would take for its own; so the client marks
//! itself unsynchronised and [`Qga::execute`] re-syncs first (callers may also call
//! [`Qga::sync`] explicitly, and should reconnect the stream if a re-sync times out too).
//!
//! [`Qga::exec`] runs a program in the guest with `guest-exec` and polls `guest-exec-status`
//! until it exits: the agent sends no event when a process ends, so polling is the only way.
//!
//! Commands that answer nothing on success (`guest-shutdown`, `guest-suspend-*`) are not
//! supported by [`Qga::execute`]: they would end in a timeout. Stop guests through QMP instead.

use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::jsonlines::{LineError, LineReader, classify};

/// The flush byte / reply delimiter of `guest-sync-delimited`. Never valid inside UTF-8 JSON.
const SENTINEL: u8 = 0xFF;

/// A reply line longer than this is a protocol error. The largest a sane agent sends is a
/// `guest-exec-status` with both streams at qemu-ga's capture limit (16 MiB each,
/// `GUEST_EXEC_MAX_OUTPUT`), base64: 2 × 21.3 MiB plus the JSON around them.
const MAX_REPLY: usize = 48 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum QgaError {
    #[error("guest agent: no answer to {what} within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("guest agent: the channel was closed")]
    Closed,
    #[error("guest agent: protocol error: {0}")]
    Protocol(String),
    #[error("guest agent: {cmd} failed: {class}: {desc}")]
    Command { cmd: String, class: String, desc: String },
    #[error("guest agent: I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The agent answers but refuses to run programs: guest-exec is blocked in its
    /// configuration. Retrying cannot help, so this is not a [`QgaError::Command`].
    #[error(
        "guest agent: {cmd} is disabled in the guest ({desc}); start qemu-ga without \
         `--block-rpcs {cmd}` (or add it to `--allow-rpcs`, or the `block-rpcs`/`allow-rpcs` keys \
         of /etc/qemu/qemu-ga.conf) to run commands in the guest"
    )]
    ExecDisabled { cmd: String, desc: String },
}

/// First and last wait between two `guest-exec-status` polls: short at first so quick
/// commands return quickly, growing so a long one does not flood the agent.
const EXEC_POLL_FIRST: Duration = Duration::from_millis(10);
const EXEC_POLL_MAX: Duration = Duration::from_millis(200);

/// How a guest process ended, as `guest-exec-status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// Normal exit with this code.
    Code(i64),
    /// Killed by this signal (on Windows guests: the unhandled exception code).
    Signal(i64),
    /// The agent reported neither (allowed by the schema).
    Unknown,
}

/// Result of [`Qga::exec`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExecOutput {
    /// Guest pid the agent assigned.
    pub pid: i64,
    pub status: ExitStatus,
    /// Captured stdout, decoded from base64.
    pub stdout: Vec<u8>,
    /// Captured stderr, decoded from base64.
    pub stderr: Vec<u8>,
    /// The agent dropped stdout beyond its capture limit (16 MiB in qemu-ga 7.2).
    pub stdout_truncated: bool,
    /// The agent dropped stderr beyond its capture limit.
    pub stderr_truncated: bool,
}

impl ExecOutput {
    /// Exited normally with code 0.
    pub fn success(&self) -> bool {
        self.status == ExitStatus::Code(0)
    }
}

/// One guest network interface as `guest-network-get-interfaces` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GuestInterface {
    /// Guest name, e.g. `eth0`.
    pub name: String,
    /// MAC address, lower case; absent when the agent reports none.
    pub mac: Option<String>,
    /// Addresses without prefix length, IPv4 and IPv6, in the agent's order.
    pub ips: Vec<String>,
}

/// `guest-info`: agent version and its commands.
#[derive(Debug, Clone, Deserialize)]
pub struct GuestInfo {
    pub version: String,
    #[serde(rename = "supported_commands")]
    pub commands: Vec<GuestCommand>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GuestCommand {
    pub name: String,
    pub enabled: bool,
}

/// QGA client; see the module docs for the synchronisation rules.
pub struct Qga<S> {
    stream: S,
    lines: LineReader,
    synced: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Qga<S> {
    /// Wrap a connected stream. Nothing is sent yet; the first command syncs first.
    pub fn new(stream: S) -> Self {
        Qga { stream, lines: LineReader::new(MAX_REPLY), synced: false }
    }

    /// True after a successful [`Qga::sync`] and no timeout or protocol error since.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Give the stream back (e.g. to shut it down).
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// `guest-sync-delimited` with a fresh random id; discards everything stale. Retry (or
    /// reconnect and retry) on timeout: right after boot, bytes may have been mangled.
    pub async fn sync(&mut self, timeout: Duration) -> Result<(), QgaError> {
        self.synced = false;
        let id: u32 = rand::random::<u32>() >> 1; // QGA ids are int64; stay positive and small
        let mut req = vec![SENTINEL];
        req.extend_from_slice(
            json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}).to_string().as_bytes(),
        );
        req.push(b'\n');
        let what = || "guest-sync-delimited".to_owned();
        tokio::time::timeout(timeout, async {
            self.send(&req).await?;
            loop {
                let line = self.read_line().await?;
                // Only a reply after a 0xFF can be the sync reply; stale plain replies and the
                // parse error provoked by our flush byte carry none.
                let Some(pos) = line.iter().rposition(|&b| b == SENTINEL) else { continue };
                let Ok(v) = serde_json::from_slice::<Value>(trim(&line[pos + 1..])) else { continue };
                if v.get("return").and_then(Value::as_u64) == Some(u64::from(id)) {
                    return Ok::<(), QgaError>(());
                }
            }
        })
        .await
        .map_err(|_| QgaError::Timeout { what: what(), timeout })??;
        self.synced = true;
        Ok(())
    }

    /// Run one command and return its `return` value. Syncs first when not synchronised (a
    /// fresh client, or after a timeout); `timeout` applies to the sync and the command each.
    pub async fn execute(&mut self, cmd: &str, args: Option<Value>, timeout: Duration) -> Result<Value, QgaError> {
        if !self.synced {
            self.sync(timeout).await?;
        }
        let mut req = match args {
            Some(a) => json!({"execute": cmd, "arguments": a}),
            None => json!({"execute": cmd}),
        }
        .to_string()
        .into_bytes();
        req.push(b'\n');
        // Until the reply is in, a late answer could confuse the next command.
        self.synced = false;
        let reply = tokio::time::timeout(timeout, async {
            self.send(&req).await?;
            loop {
                let line = self.read_line().await?;
                let body = match line.iter().rposition(|&b| b == SENTINEL) {
                    Some(pos) => &line[pos + 1..],
                    None => &line[..],
                };
                let body = trim(body);
                if body.is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_slice(body).map_err(|e| {
                    QgaError::Protocol(format!("{cmd}: unparsable reply {:?}: {e}", String::from_utf8_lossy(body)))
                })?;
                return Ok::<Value, QgaError>(v);
            }
        })
        .await
        .map_err(|_| QgaError::Timeout { what: cmd.to_owned(), timeout })??;
        if let Some(ret) = reply.get("return") {
            self.synced = true;
            return Ok(ret.clone());
        }
        if let Some(err) = reply.get("error") {
            // A command error is a complete, in-order reply: the stream is still in sync.
            self.synced = true;
            let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
            return Err(QgaError::Command { cmd: cmd.to_owned(), class: field("class"), desc: field("desc") });
        }
        Err(QgaError::Protocol(format!("{cmd}: reply without return or error: {reply}")))
    }

    /// `guest-ping`.
    pub async fn ping(&mut self, timeout: Duration) -> Result<(), QgaError> {
        self.execute("guest-ping", None, timeout).await.map(drop)
    }

    /// `guest-info`.
    pub async fn info(&mut self, timeout: Duration) -> Result<GuestInfo, QgaError> {
        let v = self.execute("guest-info", None, timeout).await?;
        serde_json::from_value(v).map_err(|e| QgaError::Protocol(format!("guest-info: {e}")))
    }

    /// `guest-network-get-interfaces`, reduced to name, MAC and addresses.
    pub async fn network_interfaces(&mut self, timeout: Duration) -> Result<Vec<GuestInterface>, QgaError> {
        let v = self.execute("guest-network-get-interfaces", None, timeout).await?;
        parse_interfaces(&v)
    }

    /// Run `path args...` in the guest with output captured and wait for it to exit.
    ///
    /// `timeout` bounds the whole call (sync, start, every poll). On timeout the guest process
    /// keeps running: QGA has no way to kill it. A blocked `guest-exec` or `guest-exec-status`
    /// gives [`QgaError::ExecDisabled`]; a program that cannot be started (no such file)
    /// gives the agent's [`QgaError::Command`].
    pub async fn exec(&mut self, path: &str, args: &[String], timeout: Duration) -> Result<ExecOutput, QgaError> {
        let deadline = Instant::now() + timeout;
        // Each step gets what is left of the budget; the outer timeout also covers the re-sync
        // that `execute` may do first with that same per-step budget.
        let left = |what: &str| {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| QgaError::Timeout { what: what.to_owned(), timeout })
        };
        let run = async {
            let start = json!({"path": path, "arg": args, "capture-output": true});
            let ret = self.execute("guest-exec", Some(start), left("guest-exec")?).await.map_err(exec_disabled)?;
            let pid = ret
                .get("pid")
                .and_then(Value::as_i64)
                .ok_or_else(|| QgaError::Protocol(format!("guest-exec: reply without pid: {ret}")))?;
            let waiting = format!("guest-exec of {path} (guest pid {pid}) to exit");
            let mut pause = EXEC_POLL_FIRST;
            loop {
                let st = self
                    .execute("guest-exec-status", Some(json!({"pid": pid})), left(&waiting)?)
                    .await
                    .map_err(exec_disabled)?;
                let exited = st
                    .get("exited")
                    .and_then(Value::as_bool)
                    .ok_or_else(|| QgaError::Protocol(format!("guest-exec-status: reply without exited: {st}")))?;
                if exited {
                    return parse_exec_status(pid, &st);
                }
                tokio::time::sleep(pause.min(left(&waiting)?)).await;
                pause = (pause * 2).min(EXEC_POLL_MAX);
            }
        };
        // Cancelling `run` mid-command is safe: `execute` marks the client unsynchronised
        // before it sends, so the next command re-syncs past any late reply.
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| QgaError::Timeout { what: format!("guest-exec of {path}"), timeout })?
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), QgaError> {
        self.stream.write_all(bytes).await.map_err(closed_or_io)?;
        self.stream.flush().await.map_err(closed_or_io)
    }

    /// Next `\n`-terminated line (without the `\n`); cancel-safe (see [`LineReader`]).
    async fn read_line(&mut self) -> Result<Vec<u8>, QgaError> {
        self.lines.read_line(&mut self.stream).await.map_err(QgaError::from)
    }
}

impl From<LineError> for QgaError {
    fn from(e: LineError) -> Self {
        match e {
            LineError::Closed => QgaError::Closed,
            LineError::TooLong(max) => QgaError::Protocol(format!("reply longer than {max} bytes")),
            LineError::Io(e) => QgaError::Io(e),
        }
    }
}

fn closed_or_io(e: std::io::Error) -> QgaError {
    classify(e).into()
}

/// qemu-ga answers a blocked command with class `CommandNotFound` and "Command X has been
/// disabled"; an agent too old to know guest-exec says "The command X has not been found",
/// which equally means "this agent will not run programs".
fn exec_disabled(e: QgaError) -> QgaError {
    match e {
        QgaError::Command { cmd, class, desc } if class == "CommandNotFound" || desc.contains("has been disabled") => {
            QgaError::ExecDisabled { cmd, desc }
        }
        other => other,
    }
}

fn parse_exec_status(pid: i64, st: &Value) -> Result<ExecOutput, QgaError> {
    let status = match (st.get("exitcode").and_then(Value::as_i64), st.get("signal").and_then(Value::as_i64)) {
        // The agent reports one or the other; a signal is the more specific news.
        (_, Some(sig)) => ExitStatus::Signal(sig),
        (Some(code), None) => ExitStatus::Code(code),
        (None, None) => ExitStatus::Unknown,
    };
    let data = |key: &str| -> Result<Vec<u8>, QgaError> {
        match st.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| QgaError::Protocol(format!("guest-exec-status: {key} is not base64: {e}"))),
            Some(other) => Err(QgaError::Protocol(format!("guest-exec-status: {key} is not a string: {other}"))),
        }
    };
    let flag = |key: &str| st.get(key).and_then(Value::as_bool).unwrap_or(false);
    Ok(ExecOutput {
        pid,
        status,
        stdout: data("out-data")?,
        stderr: data("err-data")?,
        stdout_truncated: flag("out-truncated"),
        stderr_truncated: flag("err-truncated"),
    })
}

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

fn parse_interfaces(v: &Value) -> Result<Vec<GuestInterface>, QgaError> {
    #[derive(Deserialize)]
    struct RawIf {
        name: String,
        #[serde(rename = "hardware-address")]
        mac: Option<String>,
        #[serde(rename = "ip-addresses", default)]
        ips: Vec<RawIp>,
    }
    #[derive(Deserialize)]
    struct RawIp {
        #[serde(rename = "ip-address")]
        addr: String,
    }
    let raw: Vec<RawIf> = serde_json::from_value(v.clone())
        .map_err(|e| QgaError::Protocol(format!("guest-network-get-interfaces: {e}")))?;
    Ok(raw
        .into_iter()
        .map(|r| GuestInterface {
            name: r.name,
            mac: r.mac.map(|m| m.to_ascii_lowercase()),
            ips: r.ips.into_iter().map(|i| i.addr).collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    //! Framing tests against a scripted peer on the other end of an in-memory duplex pipe; the
    //! real agent is exercised in tests/guest.rs.
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream, duplex};

    /// Read one request from the client side: returns (had_sentinel, json).
    async fn next_request(r: &mut BufReader<DuplexStream>) -> (bool, Value) {
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line).await.unwrap();
        let sentinel = line.first() == Some(&SENTINEL);
        let body = if sentinel { &line[1..] } else { &line[..] };
        (sentinel, serde_json::from_slice(body).unwrap())
    }

    /// Read the client's `guest-sync-delimited` (0xFF first) and answer it as the agent does.
    async fn answer_sync(r: &mut BufReader<DuplexStream>) {
        let (sentinel, req) = next_request(r).await;
        assert!(sentinel, "sync must start with the 0xFF flush byte");
        assert_eq!(req["execute"], "guest-sync-delimited");
        let id = req["arguments"]["id"].as_u64().unwrap();
        r.get_mut().write_all(&[SENTINEL]).await.unwrap();
        r.get_mut().write_all(format!("{{\"return\": {id}}}\n").as_bytes()).await.unwrap();
    }

    #[tokio::test]
    async fn sync_skips_parse_error_and_stale_replies() {
        let (client, agent) = duplex(4096);
        let peer = tokio::spawn(async move {
            let mut r = BufReader::new(agent);
            let (sentinel, req) = next_request(&mut r).await;
            assert!(sentinel, "sync must start with the 0xFF flush byte");
            assert_eq!(req["execute"], "guest-sync-delimited");
            let id = req["arguments"]["id"].as_u64().unwrap();
            let w = r.get_mut();
            // A stale reply from an earlier client, a stale delimited sync with another id,
            // the agent's reaction to 0xFF, then the real answer.
            w.write_all(b"{\"return\": {}}\n").await.unwrap();
            w.write_all(b"line noise from a previous client\n").await.unwrap();
            w.write_all(&[SENTINEL]).await.unwrap();
            w.write_all(format!("{{\"return\": {}}}\n", id + 1).as_bytes()).await.unwrap();
            w.write_all(
                b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\ufffd'\"}}\n",
            )
            .await
            .unwrap();
            w.write_all(&[SENTINEL]).await.unwrap();
            w.write_all(format!("{{\"return\": {id}}}\n").as_bytes()).await.unwrap();
            // Then a ping.
            let (sentinel, req) = next_request(&mut r).await;
            assert!(!sentinel);
            assert_eq!(req, json!({"execute": "guest-ping"}));
            r.get_mut().write_all(b"{\"return\": {}}\n").await.unwrap();
        });
        let mut q = Qga::new(client);
        q.ping(Duration::from_secs(5)).await.unwrap();
        assert!(q.is_synced());
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn command_error_is_typed_and_keeps_sync() {
        let (client, agent) = duplex(4096);
        let peer = tokio::spawn(async move {
            let mut r = BufReader::new(agent);
            answer_sync(&mut r).await;
            let (_, req) = next_request(&mut r).await;
            assert_eq!(req["execute"], "guest-shutdown");
            r.get_mut()
                .write_all(
                    b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"child process has failed to shutdown\"}}\n",
                )
                .await
                .unwrap();
            // No second sync expected: the next request is the command itself.
            let (sentinel, req) = next_request(&mut r).await;
            assert!(!sentinel);
            assert_eq!(req["execute"], "guest-ping");
            r.get_mut().write_all(b"{\"return\": {}}\n").await.unwrap();
        });
        let mut q = Qga::new(client);
        let err = q.execute("guest-shutdown", None, Duration::from_secs(5)).await.unwrap_err();
        match err {
            QgaError::Command { cmd, class, desc } => {
                assert_eq!(cmd, "guest-shutdown");
                assert_eq!(class, "GenericError");
                assert!(desc.contains("failed to shutdown"));
            }
            other => panic!("unexpected {other:?}"),
        }
        q.ping(Duration::from_secs(5)).await.unwrap();
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn timeout_then_resync_discards_the_late_reply() {
        let (client, agent) = duplex(4096);
        let (late_tx, late_rx) = tokio::sync::oneshot::channel::<()>();
        let peer = tokio::spawn(async move {
            let mut r = BufReader::new(agent);
            answer_sync(&mut r).await;
            // A slow command: answered only after the client gave up.
            let (_, req) = next_request(&mut r).await;
            assert_eq!(req["execute"], "guest-get-time");
            late_rx.await.unwrap();
            r.get_mut().write_all(b"{\"return\": 1234}\n").await.unwrap();
            // The client re-syncs before its next command.
            answer_sync(&mut r).await;
            let (_, req) = next_request(&mut r).await;
            assert_eq!(req["execute"], "guest-get-host-name");
            r.get_mut().write_all(b"{\"return\": {\"host-name\": \"vm1\"}}\n").await.unwrap();
        });
        let mut q = Qga::new(client);
        let err = q.execute("guest-get-time", None, Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, QgaError::Timeout { ref what, .. } if what == "guest-get-time"), "{err:?}");
        assert!(!q.is_synced());
        late_tx.send(()).unwrap();
        let v = q.execute("guest-get-host-name", None, Duration::from_secs(5)).await.unwrap();
        assert_eq!(v, json!({"host-name": "vm1"}));
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn closed_stream_is_reported() {
        let (client, agent) = duplex(64);
        drop(agent);
        let mut q = Qga::new(client);
        let err = q.sync(Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(err, QgaError::Closed), "{err:?}");
    }

    #[tokio::test]
    async fn sync_times_out_on_a_silent_peer() {
        let (client, _agent) = duplex(4096);
        let mut q = Qga::new(client);
        let err = q.sync(Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(err, QgaError::Timeout { .. }), "{err:?}");
    }

    /// An in-process agent speaking the QGA wire protocol: answers `guest-sync-delimited`
    /// itself and every other request with `reply(request)` (a full `{"return"|"error": ...}`).
    /// Returns the requests it saw, in order, when the client hangs up.
    fn fake_agent(
        agent: DuplexStream,
        mut reply: impl FnMut(&Value) -> Value + Send + 'static,
    ) -> tokio::task::JoinHandle<Vec<Value>> {
        tokio::spawn(async move {
            let mut r = BufReader::new(agent);
            let mut seen = Vec::new();
            loop {
                let mut line = Vec::new();
                if r.read_until(b'\n', &mut line).await.unwrap() == 0 {
                    return seen;
                }
                let body = line.strip_prefix(&[SENTINEL]).unwrap_or(&line);
                let req: Value = serde_json::from_slice(body).unwrap();
                let w = r.get_mut();
                if req["execute"] == "guest-sync-delimited" {
                    w.write_all(&[SENTINEL]).await.unwrap();
                    w.write_all(format!("{{\"return\": {}}}\n", req["arguments"]["id"]).as_bytes()).await.unwrap();
                    continue;
                }
                let answer = reply(&req);
                seen.push(req);
                w.write_all(format!("{answer}\n").as_bytes()).await.unwrap();
            }
        })
    }

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[tokio::test]
    async fn exec_polls_until_exited_and_decodes_output() {
        let (client, agent) = duplex(4096);
        let mut polls = 0;
        let peer = fake_agent(agent, move |req| match req["execute"].as_str().unwrap() {
            "guest-exec" => json!({"return": {"pid": 4242}}),
            "guest-exec-status" => {
                assert_eq!(req["arguments"], json!({"pid": 4242}));
                polls += 1;
                if polls < 3 {
                    json!({"return": {"exited": false}})
                } else {
                    // Exactly what qemu-ga 7.2 sends for `sh -c 'echo hi; echo err >&2; exit 3'`.
                    json!({"return": {"exitcode": 3, "err-data": "ZXJyCg==", "out-data": "aGkK",
                                      "err-truncated": false, "out-truncated": false, "exited": true}})
                }
            }
            other => panic!("unexpected {other}"),
        });
        let mut q = Qga::new(client);
        let args = vec!["-c".to_string(), "echo hi; echo err >&2; exit 3".to_string()];
        let t0 = Instant::now();
        let out = q.exec("/bin/sh", &args, Duration::from_secs(5)).await.unwrap();
        // Two waits (10 ms, 20 ms) between three polls: quick but not a busy loop.
        assert!(t0.elapsed() >= Duration::from_millis(30), "{:?}", t0.elapsed());
        assert_eq!(
            out,
            ExecOutput {
                pid: 4242,
                status: ExitStatus::Code(3),
                stdout: b"hi\n".to_vec(),
                stderr: b"err\n".to_vec(),
                stdout_truncated: false,
                stderr_truncated: false,
            }
        );
        assert!(!out.success());
        drop(q);
        let seen = peer.await.unwrap();
        assert_eq!(
            seen[0],
            json!({"execute": "guest-exec", "arguments": {"path": "/bin/sh", "arg": args, "capture-output": true}})
        );
        assert_eq!(seen.len(), 4, "one guest-exec and three polls: {seen:?}");
    }

    #[tokio::test]
    async fn exec_reports_signal_truncation_and_missing_output() {
        let (client, agent) = duplex(4096);
        let big = vec![b'x'; 3000];
        let big_b64 = b64(&big);
        let peer = fake_agent(agent, move |req| match req["execute"].as_str().unwrap() {
            "guest-exec" => json!({"return": {"pid": 7}}),
            // Killed: qemu-ga sends `signal` and no `exitcode`; no err-data at all.
            "guest-exec-status" => json!({"return": {"exited": true, "signal": 9, "out-data": big_b64,
                                                     "out-truncated": true, "err-truncated": true}}),
            other => panic!("unexpected {other}"),
        });
        let mut q = Qga::new(client);
        let out = q.exec("yes", &[], Duration::from_secs(5)).await.unwrap();
        assert_eq!(out.status, ExitStatus::Signal(9));
        assert_eq!(out.stdout, big);
        assert!(out.stderr.is_empty());
        assert!(out.stdout_truncated && out.stderr_truncated);
        assert!(!out.success());
        drop(q);
        peer.await.unwrap();
    }

    /// A program whose output filled qemu-ga's 16 MiB capture failed with "reply longer than
    /// 16777216 bytes" (base64 makes it 22 MiB): the truncation it should report was never seen.
    #[tokio::test]
    async fn regression_output_at_the_agents_capture_limit_is_returned_truncated() {
        let (client, agent) = duplex(1 << 20);
        let full = vec![b'x'; 16 * 1024 * 1024];
        let (out_b64, err_b64) = (b64(&full), b64(&full));
        let peer = fake_agent(agent, move |req| match req["execute"].as_str().unwrap() {
            "guest-exec" => json!({"return": {"pid": 7}}),
            "guest-exec-status" => json!({"return": {"exited": true, "exitcode": 0, "out-data": out_b64,
                                                     "err-data": err_b64, "out-truncated": true, "err-truncated": true}}),
            other => panic!("unexpected {other}"),
        });
        let mut q = Qga::new(client);
        let out = q.exec("cat", &[], Duration::from_secs(30)).await.unwrap();
        assert_eq!((out.stdout.len(), out.stderr.len()), (full.len(), full.len()));
        assert!(out.stdout_truncated && out.stderr_truncated);
        drop(q);
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn exec_blocked_by_the_agent_is_a_typed_error() {
        for (cmd_blocked, class, desc) in [
            ("guest-exec", "CommandNotFound", "Command guest-exec has been disabled"),
            ("guest-exec-status", "CommandNotFound", "Command guest-exec-status has been disabled"),
            ("guest-exec", "CommandNotFound", "The command guest-exec has not been found"),
        ] {
            let (client, agent) = duplex(4096);
            let peer = fake_agent(agent, move |req| {
                if req["execute"] == cmd_blocked {
                    json!({"error": {"class": class, "desc": desc}})
                } else if req["execute"] == "guest-exec" {
                    json!({"return": {"pid": 1}})
                } else {
                    json!({"return": {}})
                }
            });
            let mut q = Qga::new(client);
            let err = q.exec("/bin/true", &[], Duration::from_secs(5)).await.unwrap_err();
            match &err {
                QgaError::ExecDisabled { cmd, desc: d } => {
                    assert_eq!(cmd, cmd_blocked);
                    assert_eq!(d, desc);
                }
                other => panic!("{desc}: unexpected {other:?}"),
            }
            let msg = err.to_string();
            assert!(msg.contains("disabled in the guest") && msg.contains("--block-rpcs"), "{msg}");
            // The refusal is a normal reply: the channel stays usable without a re-sync.
            assert!(q.is_synced());
            q.ping(Duration::from_secs(5)).await.unwrap();
            drop(q);
            peer.await.unwrap();
        }
    }

    #[tokio::test]
    async fn exec_start_failure_stays_a_command_error() {
        let (client, agent) = duplex(4096);
        let peer = fake_agent(agent, |_| {
            json!({"error": {"class": "GenericError", "desc": "Guest agent command failed, error was \
                   'Failed to execute child process \u{201c}/nope\u{201d} (No such file or directory)'"}})
        });
        let mut q = Qga::new(client);
        let err = q.exec("/nope", &[], Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, QgaError::Command { ref class, .. } if class == "GenericError"), "{err:?}");
        drop(q);
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn exec_of_a_process_that_never_exits_times_out() {
        let (client, agent) = duplex(4096);
        let peer = fake_agent(agent, |req| match req["execute"].as_str().unwrap() {
            "guest-exec" => json!({"return": {"pid": 99}}),
            _ => json!({"return": {"exited": false}}),
        });
        let mut q = Qga::new(client);
        let t0 = Instant::now();
        let err = q.exec("sleep", &["1000".to_string()], Duration::from_millis(400)).await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(2), "the budget bounds the whole call: {:?}", t0.elapsed());
        match &err {
            QgaError::Timeout { what, .. } => assert!(what.contains("guest-exec of sleep"), "{what}"),
            other => panic!("unexpected {other:?}"),
        }
        drop(q);
        let seen = peer.await.unwrap();
        // 400 ms with waits growing 10, 20, 40, 80, 160, 200 ms: a handful of polls, not hundreds.
        let polls = seen.iter().filter(|r| r["execute"] == "guest-exec-status").count();
        assert!((3..=10).contains(&polls), "{polls} polls");
    }

    #[tokio::test]
    async fn exec_with_bad_base64_is_a_protocol_error() {
        let (client, agent) = duplex(4096);
        let peer = fake_agent(agent, |req| match req["execute"].as_str().unwrap() {
            "guest-exec" => json!({"return": {"pid": 5}}),
            _ => json!({"return": {"exited": true, "exitcode": 0, "out-data": "not base64!"}}),
        });
        let mut q = Qga::new(client);
        let err = q.exec("true", &[], Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, QgaError::Protocol(ref m) if m.contains("out-data")), "{err:?}");
        drop(q);
        peer.await.unwrap();
    }

    #[test]
    fn interfaces_are_reduced() {
        let v = json!([
            {"name": "lo", "hardware-address": "00:00:00:00:00:00",
             "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8},
                              {"ip-address-type": "ipv6", "ip-address": "::1", "prefix": 128}],
             "statistics": {"rx-bytes": 0}},
            {"name": "eth0", "hardware-address": "52:54:00:AA:00:01"},
            {"name": "sit0"}
        ]);
        let ifs = parse_interfaces(&v).unwrap();
        assert_eq!(
            ifs,
            vec![
                GuestInterface {
                    name: "lo".into(),
                    mac: Some("00:00:00:00:00:00".into()),
                    ips: vec!["127.0.0.1".into(), "::1".into()]
                },
                GuestInterface { name: "eth0".into(), mac: Some("52:54:00:aa:00:01".into()), ips: vec![] },
                GuestInterface { name: "sit0".into(), mac: None, ips: vec![] },
            ]
        );
    }
}
