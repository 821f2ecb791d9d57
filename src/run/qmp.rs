//! QEMU Machine Protocol (QMP) client over any byte stream: a tokio `UnixStream` on the host, or
//! the stdio of `sudo socat - UNIX-CONNECT:<qmp.sock>` in an SSH channel.
//!
//! Unlike QGA, QMP greets, negotiates capabilities and echoes an `id` per command, so stale
//! replies (from a command that timed out) are recognised by id and dropped. Asynchronous events
//! (`SHUTDOWN`, `STOP`, ...) interleave with replies; the last [`EVENT_BUFFER`] are kept for the
//! caller (e.g. to tell a guest power-off from a `quit`). One command in flight (`&mut self`).

use std::collections::VecDeque;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::jsonlines::{LineError, LineReader, classify};

/// How many events are kept.
pub const EVENT_BUFFER: usize = 64;

const MAX_MESSAGE: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP: no answer to {what} within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("QMP: the channel was closed")]
    Closed,
    #[error("QMP: protocol error: {0}")]
    Protocol(String),
    #[error("QMP: {cmd} failed: {class}: {desc}")]
    Command { cmd: String, class: String, desc: String },
    #[error("QMP: I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A vCPU and the host thread that runs it (from `query-cpus-fast`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct VcpuThread {
    pub cpu_index: u32,
    pub thread_id: u32,
}

/// `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct VmStatus {
    /// `running`, `paused`, `prelaunch`, `shutdown`, ...
    pub status: String,
    pub running: bool,
}

/// QMP client in command mode (after `qmp_capabilities`).
pub struct Qmp<S> {
    stream: S,
    lines: LineReader,
    greeting: Value,
    events: VecDeque<Value>,
    next_id: u64,
    timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Qmp<S> {
    /// Read the greeting and negotiate capabilities. `timeout` bounds this and is the default
    /// per-command timeout afterwards ([`Qmp::set_timeout`]).
    pub async fn connect(stream: S, timeout: Duration) -> Result<Self, QmpError> {
        let mut qmp = Qmp {
            stream,
            lines: LineReader::new(MAX_MESSAGE),
            greeting: Value::Null,
            events: VecDeque::new(),
            next_id: 1,
            timeout,
        };
        let greeting = tokio::time::timeout(timeout, qmp.read_message())
            .await
            .map_err(|_| QmpError::Timeout { what: "the QMP greeting".into(), timeout })??;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("expected the QMP greeting, got {greeting}")));
        }
        qmp.greeting = greeting;
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// The greeting (QEMU version, capabilities).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Events seen so far (oldest first, at most [`EVENT_BUFFER`]).
    pub fn events(&self) -> impl Iterator<Item = &Value> {
        self.events.iter()
    }

    /// Whether an event with this name (e.g. `SHUTDOWN`) was seen.
    pub fn saw_event(&self, name: &str) -> bool {
        self.events.iter().any(|e| e.get("event").and_then(Value::as_str) == Some(name))
    }

    /// Run a command and return its `return` value.
    pub async fn execute(&mut self, cmd: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = match args {
            Some(a) => json!({"execute": cmd, "arguments": a, "id": id}),
            None => json!({"execute": cmd, "id": id}),
        }
        .to_string()
        .into_bytes();
        req.push(b'\n');
        let timeout = self.timeout;
        let reply = tokio::time::timeout(timeout, async {
            self.stream.write_all(&req).await.map_err(closed_or_io)?;
            self.stream.flush().await.map_err(closed_or_io)?;
            loop {
                let msg = self.read_message().await?;
                if msg.get("event").is_some() {
                    if self.events.len() == EVENT_BUFFER {
                        self.events.pop_front();
                    }
                    self.events.push_back(msg);
                    continue;
                }
                match msg.get("id").and_then(Value::as_u64) {
                    Some(got) if got == id => return Ok::<Value, QmpError>(msg),
                    // A reply to an earlier command that timed out: drop it.
                    Some(_) => continue,
                    None => {
                        return Err(QmpError::Protocol(format!("{cmd}: reply without id: {msg}")));
                    }
                }
            }
        })
        .await
        .map_err(|_| QmpError::Timeout { what: cmd.to_owned(), timeout })??;
        if let Some(ret) = reply.get("return") {
            return Ok(ret.clone());
        }
        if let Some(err) = reply.get("error") {
            let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
            return Err(QmpError::Command { cmd: cmd.to_owned(), class: field("class"), desc: field("desc") });
        }
        Err(QmpError::Protocol(format!("{cmd}: reply without return or error: {reply}")))
    }

    /// vCPU threads from `query-cpus-fast`, sorted by vCPU index.
    pub async fn vcpu_threads(&mut self) -> Result<Vec<VcpuThread>, QmpError> {
        #[derive(Deserialize)]
        struct Cpu {
            #[serde(rename = "cpu-index")]
            cpu_index: u32,
            #[serde(rename = "thread-id")]
            thread_id: u32,
        }
        let v = self.execute("query-cpus-fast", None).await?;
        let cpus: Vec<Cpu> =
            serde_json::from_value(v).map_err(|e| QmpError::Protocol(format!("query-cpus-fast: {e}")))?;
        let mut out: Vec<VcpuThread> =
            cpus.into_iter().map(|c| VcpuThread { cpu_index: c.cpu_index, thread_id: c.thread_id }).collect();
        out.sort_by_key(|t| t.cpu_index);
        Ok(out)
    }

    /// `query-status`.
    pub async fn status(&mut self) -> Result<VmStatus, QmpError> {
        let v = self.execute("query-status", None).await?;
        serde_json::from_value(v).map_err(|e| QmpError::Protocol(format!("query-status: {e}")))
    }

    /// `quit`: QEMU answers (after a `SHUTDOWN` event) and exits; a channel closed before the
    /// answer arrives also means it is going away, so that counts as success.
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Give the stream back.
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Next JSON message (QMP sends one per line, `\r\n`-terminated); blank lines are skipped.
    async fn read_message(&mut self) -> Result<Value, QmpError> {
        loop {
            let line = self.lines.read_line(&mut self.stream).await?;
            let body = line.trim_ascii();
            if body.is_empty() {
                continue;
            }
            return serde_json::from_slice(body).map_err(|e| {
                QmpError::Protocol(format!("unparsable message {:?}: {e}", String::from_utf8_lossy(body)))
            });
        }
    }
}

impl From<LineError> for QmpError {
    fn from(e: LineError) -> Self {
        match e {
            LineError::Closed => QmpError::Closed,
            LineError::TooLong(max) => QmpError::Protocol(format!("message longer than {max} bytes")),
            LineError::Io(e) => QmpError::Io(e),
        }
    }
}

fn closed_or_io(e: std::io::Error) -> QmpError {
    classify(e).into()
}

#[cfg(test)]
mod tests {
    //! Protocol tests against a scripted peer; the real QEMU is exercised in tests/guest.rs.
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream, duplex};

    async fn next_request(r: &mut BufReader<DuplexStream>) -> Value {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        serde_json::from_str(&line).unwrap()
    }

    async fn say(r: &mut BufReader<DuplexStream>, v: Value) {
        r.get_mut().write_all(format!("{v}\r\n").as_bytes()).await.unwrap();
    }

    #[tokio::test]
    async fn negotiates_skips_events_and_stale_ids() {
        let (client, server) = duplex(4096);
        let peer = tokio::spawn(async move {
            let mut r = BufReader::new(server);
            say(&mut r, json!({"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": ["oob"]}})).await;
            let req = next_request(&mut r).await;
            assert_eq!(req["execute"], "qmp_capabilities");
            say(&mut r, json!({"return": {}, "id": req["id"]})).await;
            let req = next_request(&mut r).await;
            assert_eq!(req["execute"], "query-cpus-fast");
            say(&mut r, json!({"event": "RTC_CHANGE", "data": {}, "timestamp": {}})).await;
            say(&mut r, json!({"return": {}, "id": 999})).await;
            say(
                &mut r,
                json!({"return": [
                    {"cpu-index": 1, "thread-id": 502, "qom-path": "/machine/unattached/device[1]"},
                    {"cpu-index": 0, "thread-id": 501, "qom-path": "/machine/unattached/device[0]"}
                ], "id": req["id"]}),
            )
            .await;
            let req = next_request(&mut r).await;
            assert_eq!(req["execute"], "query-status");
            say(
                &mut r,
                json!({"return": {"status": "running", "running": true, "singlestep": false}, "id": req["id"]}),
            )
            .await;
            let req = next_request(&mut r).await;
            assert_eq!(req, json!({"execute": "device_del", "arguments": {"id": "nope"}, "id": req["id"]}));
            say(
                &mut r,
                json!({"error": {"class": "DeviceNotFound", "desc": "Device 'nope' not found"}, "id": req["id"]}),
            )
            .await;
            let req = next_request(&mut r).await;
            assert_eq!(req["execute"], "quit");
            say(&mut r, json!({"event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}})).await;
            // QEMU exits before answering: the channel closes.
        });
        let mut q = Qmp::connect(client, Duration::from_secs(5)).await.unwrap();
        assert_eq!(q.greeting()["QMP"]["version"]["qemu"]["major"], 7);
        let threads = q.vcpu_threads().await.unwrap();
        assert_eq!(
            threads,
            vec![VcpuThread { cpu_index: 0, thread_id: 501 }, VcpuThread { cpu_index: 1, thread_id: 502 }]
        );
        assert!(q.saw_event("RTC_CHANGE"));
        assert_eq!(q.status().await.unwrap(), VmStatus { status: "running".into(), running: true });
        let err = q.execute("device_del", Some(json!({"id": "nope"}))).await.unwrap_err();
        assert!(matches!(err, QmpError::Command { ref class, .. } if class == "DeviceNotFound"), "{err:?}");
        q.quit().await.unwrap();
        assert!(q.saw_event("SHUTDOWN"));
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn missing_greeting_is_a_protocol_error() {
        let (client, server) = duplex(4096);
        let mut r = BufReader::new(server);
        say(&mut r, json!({"return": {}})).await;
        let err = Qmp::connect(client, Duration::from_secs(2)).await.err().unwrap();
        assert!(matches!(err, QmpError::Protocol(_)), "{err:?}");
    }

    #[tokio::test]
    async fn silent_peer_times_out() {
        let (client, _server) = duplex(4096);
        let err = Qmp::connect(client, Duration::from_millis(100)).await.err().unwrap();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err:?}");
    }
}
