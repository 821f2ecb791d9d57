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
//! Commands that answer nothing on success (`guest-shutdown`, `guest-suspend-*`) are not
//! supported by [`Qga::execute`]: they would end in a timeout. Stop guests through QMP instead.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::jsonlines::{LineError, LineReader, classify};

/// The flush byte / reply delimiter of `guest-sync-delimited`. Never valid inside UTF-8 JSON.
const SENTINEL: u8 = 0xFF;

/// A reply line longer than this is a protocol error (the agent's largest replies, e.g.
/// `guest-exec-status` output, are far smaller with sane use).
const MAX_REPLY: usize = 16 * 1024 * 1024;

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
