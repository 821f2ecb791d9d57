//! russh session: connect, authenticate, verify host keys, run commands, upload files.
//!
//! Every command is started as `echo harness-pid:$$; exec ARGV` (under sudo: `sudo -n -- sh -c
//! 'echo harness-pid:$$; exec "$@"' sh ARGV`, or for a script `sudo -n -- sh -c 'echo
//! harness-pid:$$; SCRIPT'`) so a stdout line names the remote pid of the command itself; it
//! (and whatever the login shell's rc files printed before it) is stripped from the output, and
//! the pid is used to kill the process remotely when a command outlives its timeout or a
//! [`RemoteChild`] is killed. Closing an SSH channel does not kill anything.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use russh::client::{Handle, Msg};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth;
use super::config::{self, Resolved};
use super::hostkey::{self, Client, HandlerError, HostKeyPolicy};
use super::quickack::QuickAckStream;
use super::transport::{self, Channel, Transport};
use super::{ConnectOptions, Output, RemoteCommand, SshError, SshTarget};
use crate::topology::Auth;

/// One item of [`Session::put_many`].
#[derive(Debug, Clone, Copy)]
pub enum Put<'a> {
    /// Written atomically (temp file, chmod, rename) with this mode.
    File { content: &'a [u8], path: &'a str, mode: u32 },
    /// Created with mode 0755; an existing one is an error.
    Dir { path: &'a str },
    /// An empty file that root writes to (a serial log QEMU appends to) and the login user may
    /// read without sudo: under sudo it is handed to the user sudo was run by (`SUDO_UID`),
    /// mode 0600. An existing one is an error.
    Log { path: &'a str },
}

/// Total file bytes [`Session::upload_many`] is used for (arguments stay far below ARG_MAX).
pub const UPLOAD_MANY_MAX: usize = 256 * 1024;

/// One live russh connection (replaced on reconnect).
struct Conn {
    handle: Handle<Client>,
    /// The jump host's session must outlive the tunnel through it.
    _jump: Option<Session>,
    disconnect: Arc<Mutex<Option<String>>>,
}

struct Inner {
    addr: String,
    target: SshTarget,
    opts: ConnectOptions,
    /// Hosts this session is reached through (outermost first), for reconnects.
    chain: Vec<(String, u16)>,
    conn: RwLock<Arc<Conn>>,
    reconnect: tokio::sync::Mutex<()>,
    /// Bounds concurrent channels below sshd's MaxSessions.
    channels: Arc<Semaphore>,
    /// Bounds the channels that kill a command ([`Session::kill_pid`]): they take no slot of
    /// `channels` (they must work when all are held by the commands being killed), so without
    /// a bound of their own, eight followers dropped at once made sixteen sessions.
    kills: Arc<Semaphore>,
    /// Dropped handshakes retried by this session's connects (first and reconnects).
    retries: AtomicU32,
}

/// One authenticated connection to a node. Cheap to clone; channels are opened concurrently.
///
/// Everything above the SSH layer talks to a node through this type only. Behind it is either a
/// russh connection or any other [`Transport`] (the seam that lets the orchestration be tested
/// against an in-process fake host, see [`super::fake`]).
#[derive(Clone)]
pub struct Session {
    name: String,
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Ssh(Arc<Inner>),
    Other(Arc<dyn Transport>),
}

fn addr_of(r: &Resolved) -> String {
    r.addr()
}

/// How often a handshake the server dropped (sshd's `MaxStartups` refusing a connection past its
/// limit of unauthenticated ones resets it during the version or key exchange) is tried again.
const HANDSHAKE_RETRIES: u32 = 10;

/// Handshakes dropped by a server and retried, by every session of this process.
static HANDSHAKE_RETRIES_SEEN: AtomicU64 = AtomicU64::new(0);

/// Handshakes dropped by a server and retried so far, by every session of this process (for
/// the commands' summaries).
pub fn handshake_retries_total() -> u64 {
    HANDSHAKE_RETRIES_SEEN.load(Ordering::Relaxed)
}

/// Backoff before retry `n` (1-based): 100 ms doubling up to 3.2 s, with ±50 % jitter so the
/// clients sshd dropped together do not come back together.
fn backoff(n: u32) -> Duration {
    let base = 100u64 << (n.saturating_sub(1)).min(5);
    Duration::from_millis(base / 2 + rand::random::<u64>() % base.max(1))
}

/// The key exchanges to offer: russh's safe list, with `ecdh-sha2-nistp256` moved up to just
/// after the post-quantum hybrid. Without it (OpenSSH before 9.9, e.g. Debian 12's 9.2) the
/// choice falls on classical ECDH, and there sshd's curve25519 is OpenSSH's portable C
/// reference code while its nistp256 runs in OpenSSL's assembly: measured on the lab's sshds,
/// 3 ms less sshd CPU per connection (28 -> 25 ms, a 32-node fan-out 10% faster). Both are in
/// OpenSSH's own default list; a server offering neither still gets the rest of the list.
pub(crate) fn kex_order() -> Vec<russh::kex::Name> {
    use russh::kex::{ECDH_SHA2_NISTP256, MLKEM768X25519_SHA256};
    let rest = russh::Preferred::DEFAULT.kex;
    let mut out = Vec::with_capacity(rest.len() + 1);
    out.extend(rest.iter().filter(|k| **k == MLKEM768X25519_SHA256).cloned());
    out.push(ECDH_SHA2_NISTP256);
    out.extend(rest.iter().filter(|k| **k != MLKEM768X25519_SHA256 && **k != ECDH_SHA2_NISTP256).cloned());
    out
}

/// Open a connection: TCP (or a tunnel through the jump host), handshake, host key, auth.
/// `chain`: the hosts (as written, with their ports) this one is reached through, outermost first.
/// A handshake the server drops is retried with backoff; returns how many retries it took.
async fn open(
    target: &SshTarget,
    opts: &ConnectOptions,
    chain: &[(String, u16)],
) -> Result<(Conn, String, u32), SshError> {
    let r = config::resolve_in_chain(target, opts, chain)?;
    let addr = addr_of(&r);
    let jump = match &r.proxy_jump {
        Some(spec) => Some(connect_jump(target, opts, &r, spec, chain).await?),
        None => None,
    };
    // Ask for a key of a type we already know first, as OpenSSH does: otherwise a host recorded
    // with (say) only an RSA key would present ed25519 and be refused as changed.
    let known = hostkey::read_known_keys(&r.known_hosts, &r.host, r.port).unwrap_or_default();
    let preferred = russh::Preferred {
        key: hostkey::preferred_key_order(&known).into(),
        kex: kex_order().into(),
        ..Default::default()
    };
    let cfg = Arc::new(russh::client::Config {
        preferred,
        keepalive_interval: Some(opts.keepalive_interval),
        keepalive_max: 3,
        inactivity_timeout: None,
        nodelay: true,
        ..Default::default()
    });
    let mut retries = 0;
    loop {
        let disconnect = Arc::new(Mutex::new(None));
        match attempt(cfg.clone(), disconnect.clone(), &r, target, opts, &addr, jump.as_ref()).await {
            Ok(handle) => return Ok((Conn { handle, _jump: jump, disconnect }, addr, retries)),
            Err(SshError::HandshakeDropped { .. }) if retries < HANDSHAKE_RETRIES => {
                retries += 1;
                HANDSHAKE_RETRIES_SEEN.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff(retries)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One try: a TCP connection (or a direct-tcpip channel of the jump host's connection), then
/// handshake and auth.
async fn attempt(
    cfg: Arc<russh::client::Config>,
    disconnect: Arc<Mutex<Option<String>>>,
    r: &Resolved,
    target: &SshTarget,
    opts: &ConnectOptions,
    addr: &str,
    jump: Option<&Session>,
) -> Result<Handle<Client>, SshError> {
    let node = target.name.clone();
    let handler = Client {
        policy: HostKeyPolicy {
            node: node.clone(),
            addr: addr.to_string(),
            host: r.host.clone(),
            port: r.port,
            known_hosts: r.known_hosts.clone(),
            accept_new: r.accept_new,
        },
        disconnect,
    };
    let timeout =
        |phase| SshError::Timeout { node: node.clone(), addr: addr.to_string(), phase, after: opts.connect_timeout };
    match jump {
        None => {
            let tcp =
                tokio::time::timeout(opts.connect_timeout, tokio::net::TcpStream::connect((r.host.as_str(), r.port)))
                    .await
                    .map_err(|_| timeout("TCP connect"))?
                    .map_err(|e| SshError::Connect {
                        node: node.clone(),
                        addr: addr.to_string(),
                        message: e.to_string(),
                    })?;
            let _ = tcp.set_nodelay(true);
            handshake_auth(cfg, QuickAckStream::new(tcp), handler, r, target, opts, addr).await
        }
        Some(j) => {
            let conn = j.conn();
            let ch = tokio::time::timeout(
                opts.connect_timeout,
                conn.handle.channel_open_direct_tcpip(r.host.clone(), r.port as u32, "127.0.0.1", 0),
            )
            .await
            .map_err(|_| timeout("connect through jump host"))?
            .map_err(|e| SshError::Connect {
                node: node.clone(),
                addr: addr.to_string(),
                message: format!("jump host {} cannot reach it: {e}", j.name()),
            })?;
            handshake_auth(cfg, ch.into_stream(), handler, r, target, opts, addr).await
        }
    }
}

/// One connection per jump host, shared by every node behind it (the nodes' connections are
/// direct-tcpip channels of it, which sshd's `MaxSessions` does not count): 128 nodes behind
/// one bastion cost it one handshake, not 128 against its `MaxStartups`. Weak: the jump
/// connection closes with the last node session using it.
type JumpSlot = Arc<tokio::sync::Mutex<JumpState>>;

/// A jump host's shared connection, and its last failure: the nodes queued behind a bastion
/// that cannot be reached take that answer instead of each waiting out the timeouts again
/// (128 nodes behind a dead bastion took 128 × the connect timeout, one after another).
#[derive(Default)]
struct JumpState {
    session: Option<Weak<Inner>>,
    /// When, where, and why the last connect failed.
    failed: Option<(Instant, String, String)>,
}

/// How long a failed jump connect is the answer for the nodes behind it.
const JUMP_FAILURE_TTL: Duration = Duration::from_secs(10);
static JUMPS: OnceLock<Mutex<HashMap<String, JumpSlot>>> = OnceLock::new();

/// The shared session to `jt`, connected on first use (or after it died).
async fn shared_jump(jt: &SshTarget, opts: &ConnectOptions, chain: Vec<(String, u16)>) -> Result<Session, SshError> {
    // A current-thread runtime (one per test) must not use a connection whose russh task runs on
    // another runtime that may shut down first; the CLI's one multi-thread runtime shares freely.
    let rt = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => String::new(),
        _ => format!("{:?}", std::thread::current().id()),
    };
    let key = format!(
        "{rt}|{:?}@{}:{:?}|via {:?}|{:?}|{:?}|{}",
        jt.user,
        jt.host,
        jt.port,
        jt.proxy_jump,
        jt.auth,
        (&jt.known_hosts, &jt.inherited_known_hosts),
        jt.accept_new_host_key
    );
    let slot =
        JUMPS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone();
    let mut held = slot.lock().await;
    if let Some(inner) = held.session.as_ref().and_then(Weak::upgrade) {
        let s = Session { name: inner.target.name.clone(), backend: Backend::Ssh(inner) };
        if !s.is_closed() {
            return Ok(s);
        }
    }
    if let Some((when, addr, message)) = &held.failed
        && when.elapsed() < JUMP_FAILURE_TTL
    {
        return Err(SshError::Connect { node: jt.name.clone(), addr: addr.clone(), message: message.clone() });
    }
    match Box::pin(Session::connect_in_chain(jt, opts, chain)).await {
        Ok(s) => {
            held.session = Some(Arc::downgrade(s.inner()));
            held.failed = None;
            Ok(s)
        }
        Err(e) => {
            // Only the network's answer is shared: a host key or auth refusal may change with
            // the next caller's options (`--accept-new-host-keys`).
            if matches!(e, SshError::Connect { .. } | SshError::Timeout { .. } | SshError::HandshakeDropped { .. }) {
                let addr = format!("{}:{}", jt.host, jt.port.unwrap_or(22));
                held.failed = Some((Instant::now(), addr, format!("{e} (the jump host's last connect, just now)")));
            }
            Err(e)
        }
    }
}

async fn connect_jump(
    target: &SshTarget,
    opts: &ConnectOptions,
    r: &Resolved,
    spec: &str,
    via: &[(String, u16)],
) -> Result<Session, SshError> {
    // `a,b,c`: reach c through b through a.
    let (chain, last) = match spec.rsplit_once(',') {
        Some((chain, last)) => (Some(chain.to_string()), last.trim()),
        None => (None, spec.trim()),
    };
    let (user, host, port) = config::parse_jump(last);
    let jt = SshTarget {
        // Shared by every node behind it: named after itself, not the first node that used it.
        name: format!("jump host {last}"),
        host,
        port,
        user,
        // Keys (not passwords) of the node, its own or from its ssh config entry, are offered to
        // the jump host as well; the jump host's config entry and the agent apply as usual.
        auth: target
            .auth
            .iter()
            .filter(|a| matches!(a, Auth::IdentityFile { .. }))
            .cloned()
            .chain(r.config_identities.iter().map(|p| Auth::IdentityFile { path: p.clone(), passphrase_env: None }))
            .collect(),
        proxy_jump: chain,
        // Host keys are checked in the node's known_hosts: the topology's file, else the node's
        // whole list (its config's `UserKnownHostsFile` files, where a `Host` alias naming both
        // the file and the ProxyJump is how labs write it, and the system's files: a key revoked
        // or changed there is refused for the bastion too; only the first file got read). A
        // new key is accepted for the jump host only when asked for it
        // (`--accept-new-host-keys`, or the jump host's own ssh config): a node's
        // `accept_new_host_key` says nothing about the bastion.
        known_hosts: target.known_hosts.clone(),
        inherited_known_hosts: if target.known_hosts.is_none() { r.known_hosts.clone() } else { Vec::new() },
        accept_new_host_key: false,
    };
    // The jump host is reached through the same chain; the target joins it so that the jump
    // host's own config cannot lead back here.
    let mut inner_chain = via.to_vec();
    inner_chain.push((target.host.clone(), r.port));
    shared_jump(&jt, opts, inner_chain).await
}

async fn handshake_auth<S>(
    cfg: Arc<russh::client::Config>,
    stream: S,
    handler: Client,
    r: &Resolved,
    target: &SshTarget,
    opts: &ConnectOptions,
    addr: &str,
) -> Result<Handle<Client>, SshError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let node = target.name.clone();
    let disconnect = handler.disconnect.clone();
    let fut = async {
        let mut handle = russh::client::connect_stream(cfg, stream, handler).await.map_err(|e| match e {
            HandlerError::HostKey(e) => *e,
            HandlerError::Russh(e) if dropped(&e) => {
                SshError::HandshakeDropped { node: node.clone(), addr: addr.to_string(), message: e.to_string() }
            }
            HandlerError::Russh(e) => {
                SshError::Connect { node: node.clone(), addr: addr.to_string(), message: format!("SSH handshake: {e}") }
            }
        })?;
        match auth::authenticate(&mut handle, r, &target.auth, opts.agent_socket.as_deref()).await {
            Ok(()) => Ok(handle),
            Err((attempts, None)) => Err(SshError::Auth {
                node: node.clone(),
                addr: addr.to_string(),
                message: format!("user {}: {}", r.user, attempts.summary()),
            }),
            // The server hung up mid-way; russh only says "Could not reach the event loop",
            // so say what the server said, and what had been tried.
            Err((attempts, Some(e))) => {
                let said = disconnect.lock().ok().and_then(|d| d.clone()).unwrap_or_else(|| e.to_string());
                let hint = if said.contains("Too many authentication failures") {
                    " (sshd's MaxAuthTries counts every key offered, ssh-agent's too: name this node's \
                     key with `identity_file`, or give it a password)"
                } else {
                    ""
                };
                Err(SshError::Auth {
                    node: node.clone(),
                    addr: addr.to_string(),
                    message: format!(
                        "user {}: the server ended the connection during authentication: {said}{hint}; tried: {}",
                        r.user,
                        attempts.summary()
                    ),
                })
            }
        }
    };
    tokio::time::timeout(opts.auth_timeout, fut).await.map_err(|_| SshError::Timeout {
        node: node.clone(),
        addr: addr.to_string(),
        phase: "SSH handshake+auth",
        after: opts.auth_timeout,
    })?
}

/// The server hung up during the version or key exchange: what sshd does to a connection past
/// its `MaxStartups` (reset, or EOF when the tunnel through a jump host carries it).
fn dropped(e: &russh::Error) -> bool {
    use std::io::ErrorKind as K;
    match e {
        russh::Error::IO(io) => {
            matches!(io.kind(), K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof | K::BrokenPipe)
        }
        russh::Error::Disconnect | russh::Error::HUP => true,
        _ => false,
    }
}

/// How long a `signal` request gets to end a command before the kill script takes over.
const SIGNAL_GRACE: Duration = Duration::from_millis(1500);

/// Kill the process group of `pid`, TERM then KILL after 3 s. sshd starts each channel's
/// command in its own session, so that group is exactly this command's tree (including `sudo`
/// and the children of a shell). (`kill -TERM -$g`: dash's builtin rejects `kill -- -$g`.)
/// Zombies count as gone: an orphan's zombie may wait a while for init to reap it.
/// Kill channels open at once per connection: with the default `max_channels` 8, exactly
/// sshd's default MaxSessions 10.
const KILL_CHANNELS: usize = 2;

fn kill_script(pid: u32) -> String {
    format!(
        "p={pid}; g=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -d' ' -f3); \
         case \"$g\" in ''|0|1) exit 0;; esac; \
         alive() {{ if command -v ps >/dev/null 2>&1; then \
         ps -e -o pgid=,stat= | awk -v g=\"$g\" '$1 == g && $2 !~ /^Z/ {{ f = 1 }} END {{ exit !f }}'; \
         else kill -0 -$g 2>/dev/null; fi; }}; \
         kill -TERM -$g 2>/dev/null || kill -TERM $p 2>/dev/null || exit 0; i=0; \
         while alive; do i=$((i+1)); \
         if [ $i -gt 30 ]; then kill -KILL -$g 2>/dev/null; break; fi; sleep 0.1; done; exit 0"
    )
}

impl Session {
    pub async fn connect(target: &SshTarget, opts: &ConnectOptions) -> Result<Session, SshError> {
        Self::connect_in_chain(target, opts, Vec::new()).await
    }

    async fn connect_in_chain(
        target: &SshTarget,
        opts: &ConnectOptions,
        chain: Vec<(String, u16)>,
    ) -> Result<Session, SshError> {
        let (conn, addr, retries) = open(target, opts, &chain).await?;
        let max = opts.max_channels.max(1);
        Ok(Session {
            name: target.name.clone(),
            backend: Backend::Ssh(Arc::new(Inner {
                addr,
                target: target.clone(),
                opts: opts.clone(),
                chain,
                conn: RwLock::new(Arc::new(conn)),
                reconnect: tokio::sync::Mutex::new(()),
                channels: Arc::new(Semaphore::new(max)),
                kills: Arc::new(Semaphore::new(KILL_CHANNELS)),
                retries: AtomicU32::new(retries),
            })),
        })
    }

    /// A session over another transport (an in-process fake host in tests).
    pub fn with_transport(name: impl Into<String>, transport: Arc<dyn Transport>) -> Session {
        Session { name: name.into(), backend: Backend::Other(transport) }
    }

    /// The russh connection state; only reached on the SSH backend (the public methods
    /// dispatch other transports before getting here).
    fn inner(&self) -> &Arc<Inner> {
        match &self.backend {
            Backend::Ssh(i) => i,
            Backend::Other(_) => unreachable!("SSH internals used on a non-SSH transport"),
        }
    }
    /// Node name (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Handshakes the server dropped and this session retried (sshd's `MaxStartups`).
    pub fn handshake_retries(&self) -> u32 {
        match &self.backend {
            Backend::Ssh(i) => i.retries.load(Ordering::Relaxed),
            Backend::Other(_) => 0,
        }
    }
    /// `host:port` actually connected to.
    pub fn addr(&self) -> &str {
        match &self.backend {
            Backend::Ssh(i) => &i.addr,
            Backend::Other(t) => t.addr(),
        }
    }

    fn conn(&self) -> Arc<Conn> {
        self.inner().conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn disconnected(&self, conn: &Conn, fallback: impl std::fmt::Display) -> SshError {
        let why = conn.disconnect.lock().ok().and_then(|d| d.clone()).unwrap_or_else(|| fallback.to_string());
        SshError::Disconnected { node: self.name.clone(), message: why }
    }

    /// Replace a dead connection with a new one (once, even if many tasks ask at the same time).
    async fn reconnect(&self, dead: &Arc<Conn>) -> Result<(), SshError> {
        let _g = self.inner().reconnect.lock().await;
        if !Arc::ptr_eq(&self.conn(), dead) {
            return Ok(()); // someone else already reconnected
        }
        let (conn, _, retries) = open(&self.inner().target, &self.inner().opts, &self.inner().chain).await?;
        self.inner().retries.fetch_add(retries, Ordering::Relaxed);
        *self.inner().conn.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(conn);
        Ok(())
    }

    /// Open a session channel and start `cmd` on it (pid wrapper included).
    async fn start(
        &self,
        cmd: &RemoteCommand,
        permit: Option<OwnedSemaphorePermit>,
        keep_stdin: bool,
    ) -> Result<RemoteChild, SshError> {
        let conn = self.conn();
        let open_timeout = self.inner().opts.connect_timeout.max(Duration::from_secs(5));
        let channel = match tokio::time::timeout(open_timeout, conn.handle.channel_open_session()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(if conn.handle.is_closed() {
                    self.disconnected(&conn, &e)
                } else {
                    SshError::Channel { node: self.name.clone(), message: format!("cannot open a channel: {e}") }
                });
            }
            Err(_) => {
                return Err(if conn.handle.is_closed() {
                    self.disconnected(&conn, "channel open timed out")
                } else {
                    SshError::Timeout {
                        node: self.name.clone(),
                        addr: self.inner().addr.clone(),
                        phase: "channel open",
                        after: open_timeout,
                    }
                });
            }
        };
        let mut wire = wrapped_wire(cmd);
        let moved;
        let cmd = match (wire.len() > WIRE_MAX && !keep_stdin).then(|| via_stdin(cmd)).flatten() {
            Some(c) => {
                moved = c;
                wire = wrapped_wire(&moved);
                &moved
            }
            None => cmd,
        };
        channel.exec(true, wire).await.map_err(|e| {
            if conn.handle.is_closed() {
                self.disconnected(&conn, &e)
            } else {
                SshError::Channel { node: self.name.clone(), message: format!("exec: {e}") }
            }
        })?;
        let (read, write) = channel.split();
        let write = Arc::new(write);
        let mut writer = None;
        if let Some(bytes) = cmd.stdin.clone() {
            // Write stdin in its own task so the remote side's output is drained meanwhile
            // (a full window on either side would otherwise deadlock).
            let w = write.clone();
            writer = Some(tokio::spawn(async move {
                w.data(&bytes[..]).await?;
                w.eof().await
            }));
        } else if !keep_stdin {
            let _ = write.eof().await;
        }
        Ok(RemoteChild {
            imp: ChildImpl::Ssh(SshChild {
                session: self.clone(),
                conn,
                read,
                write,
                _permit: permit,
                _writer: writer,
                sudo: cmd.sudo,
                single_process: cmd.single_process,
                pid: None,
                head: Vec::new(),
                pending: VecDeque::new(),
                status: None,
                signal: None,
                done: false,
                exited: false,
                signalled: false,
            }),
        })
    }

    async fn permit(&self) -> OwnedSemaphorePermit {
        self.inner().channels.clone().acquire_owned().await.expect("semaphore never closed")
    }

    async fn run_once(&self, cmd: &RemoteCommand) -> Result<Output, SshError> {
        let after = cmd.timeout.unwrap_or(self.inner().opts.command_timeout);
        let deadline = tokio::time::Instant::now() + after;
        let timed_out = || SshError::CommandTimeout { node: self.name.clone(), command: cmd.wire(), after };
        let permit = tokio::time::timeout_at(deadline, self.permit()).await.map_err(|_| timed_out())?;
        let mut child = tokio::time::timeout_at(deadline, self.start(cmd, Some(permit), false))
            .await
            .map_err(|_| timed_out())??;
        let collected = tokio::time::timeout_at(deadline, child.collect()).await;
        let out = match collected {
            Ok(r) => r?,
            Err(_) => {
                let _ = tokio::time::timeout(Duration::from_secs(10), child.kill()).await;
                return Err(timed_out());
            }
        };
        if cmd.sudo && out.status == Some(1) {
            let err = out.stderr_str();
            if err.contains("a password is required") || err.contains("a terminal is required") {
                return Err(SshError::SudoPassword { node: self.name.clone(), command: cmd.wire() });
            }
        }
        Ok(out)
    }

    /// Run to completion, capturing stdout/stderr/exit status.
    pub async fn run(&self, cmd: &RemoteCommand) -> Result<Output, SshError> {
        if let Backend::Other(t) = &self.backend {
            return transport::run(t.as_ref(), &self.name, cmd, self.default_timeout()).await;
        }
        let conn = self.conn();
        match self.run_once(cmd).await {
            Err(SshError::Disconnected { .. }) if cmd.idempotent => {
                self.reconnect(&conn).await?;
                self.run_once(cmd).await
            }
            r => r,
        }
    }
    /// Like [`Session::run`] but a nonzero exit becomes [`SshError::CommandFailed`].
    pub async fn run_ok(&self, cmd: &RemoteCommand) -> Result<Output, SshError> {
        let out = self.run(cmd).await?;
        if out.success() {
            Ok(out)
        } else {
            Err(SshError::CommandFailed {
                node: self.name.clone(),
                command: cmd.wire(),
                status: out.status.map(|s| s.to_string()).or(out.signal.clone()).unwrap_or_else(|| "?".into()),
                stderr: out.stderr_str().trim().to_string(),
            })
        }
    }
    /// Start a long-lived command and stream its output (serial followers, socat bridges).
    /// Stdin stays open (see [`RemoteChild::write_stdin`]) unless `cmd.stdin` is set. The child
    /// holds one of the session's `max_channels` slots until it is dropped.
    pub async fn spawn(&self, cmd: &RemoteCommand) -> Result<RemoteChild, SshError> {
        if let Backend::Other(t) = &self.backend {
            return Ok(RemoteChild { imp: ChildImpl::Other(t.start(cmd).await?) });
        }
        let permit = self.permit().await;
        self.start(cmd, Some(permit), true).await
    }
    /// Write `content` to `path` atomically: temp file next to it, then chmod + rename.
    pub async fn upload(&self, content: &[u8], path: &str, mode: u32, sudo: bool) -> Result<(), SshError> {
        let tmp = format!("{path}.harness-tmp-{:016x}", rand::random::<u64>());
        let mut cmd = RemoteCommand::new(["sh", "-c", UPLOAD_SCRIPT, "sh", &tmp, path, &format!("{mode:o}")])
            .stdin(content.to_vec());
        cmd.argv.push(content.len().to_string());
        cmd.sudo = sudo;
        cmd.idempotent = true;
        self.run_ok(&cmd).await.map(|_| ())
    }
    /// Write several files in ONE round trip (each atomically: temp file, chmod, rename). The
    /// contents travel base64-encoded as arguments, so this is for small files (the caller falls
    /// back to [`Session::upload`] past [`UPLOAD_MANY_MAX`] bytes in total).
    pub async fn upload_many(&self, files: &[(&[u8], &str, u32)], sudo: bool) -> Result<(), SshError> {
        let puts: Vec<Put<'_>> = files.iter().map(|&(content, path, mode)| Put::File { content, path, mode }).collect();
        self.put_many(&puts, sudo).await
    }
    /// [`Session::upload_many`] with directories and logs too, carried out in the order given,
    /// so one round trip can write a file, then create directories, then fill them.
    pub async fn put_many(&self, items: &[Put<'_>], sudo: bool) -> Result<(), SshError> {
        let tag = format!("{:016x}", rand::random::<u64>());
        let mut cmd = RemoteCommand::new(put_argv(items, &tag));
        cmd.sudo = sudo;
        // A second run would trip over the directories it created: only plain files retry.
        cmd.idempotent = items.iter().all(|i| matches!(i, Put::File { .. }));
        self.run_ok(&cmd).await.map(|_| ())
    }
    /// Close the connection politely.
    pub async fn close(&self) {
        if let Backend::Other(t) = &self.backend {
            return t.close();
        }
        let conn = self.conn();
        let _ = conn.handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    }
    pub fn is_closed(&self) -> bool {
        match &self.backend {
            Backend::Ssh(_) => self.conn().handle.is_closed(),
            Backend::Other(t) => t.is_closed(),
        }
    }

    fn default_timeout(&self) -> Duration {
        match &self.backend {
            Backend::Ssh(i) => i.opts.command_timeout,
            Backend::Other(_) => Duration::from_secs(120),
        }
    }
    /// Round-trip time of one no-op command, for diagnostics.
    pub async fn ping(&self) -> Result<Duration, SshError> {
        let t = Instant::now();
        self.run_ok(&RemoteCommand::new(["true"]).idempotent()).await?;
        Ok(t.elapsed())
    }

    /// Kill a remote pid over a fresh channel. Does not take a channel slot: it must work even
    /// when every slot is held by the commands being killed. It takes one of the
    /// [`KILL_CHANNELS`] instead, the room sshd's MaxSessions leaves above `max_channels`.
    async fn kill_pid(&self, pid: u32, sudo: bool) -> Result<(), SshError> {
        let _kill_slot = match &self.backend {
            Backend::Ssh(i) => Some(i.kills.clone().acquire_owned().await.expect("semaphore never closed")),
            Backend::Other(_) => None,
        };
        let mut cmd = RemoteCommand::sh(kill_script(pid)).timeout(Duration::from_secs(10));
        cmd.sudo = sudo;
        let mut child = self.start(&cmd, None, false).await?;
        match tokio::time::timeout(Duration::from_secs(10), child.collect()).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(SshError::CommandTimeout {
                node: self.name.clone(),
                command: cmd.wire(),
                after: Duration::from_secs(10),
            }),
        }
    }
}

/// [`Session::upload`]'s script: `sh -c UPLOAD_SCRIPT sh TMP PATH MODE SIZE`, the content on
/// stdin. umask 077: the content is never readable by others before the chmod. The size is
/// checked before the rename: a connection lost mid-transfer ends the remote `cat` with EOF and
/// status 0, and the cut file used to be renamed into place.
const UPLOAD_SCRIPT: &str = r#"umask 077; cat > "$1" || { rc=$?; rm -f "$1"; exit $rc; }
n=$(wc -c < "$1") && n=$((n)) || n=-1
if [ "$n" != "$4" ]; then rm -f "$1"; echo "upload cut short: $n of $4 bytes arrived" >&2; exit 1; fi
chmod "$3" "$1" && mv -f "$1" "$2" || { rc=$?; rm -f "$1"; exit $rc; }"#;

/// The `sh -c` argv of [`Session::put_many`]. Each run of items of one kind is one step, and
/// each step is as few processes as it can be (a host starting ten VMs pays for every fork
/// while their QEMUs start): one `mkdir` for all directories, one `chown` for all logs, and per
/// file one `base64 -d` (its content, base64, is a positional parameter: one argument may be
/// 128 KiB, the script could not hold them all) into a temp file, one `chmod` per mode, and the
/// atomic renames. A step only starts once the one before it succeeded; a failed step removes
/// the temp files.
fn put_argv(items: &[Put<'_>], tag: &str) -> Vec<String> {
    use crate::quote::quote;
    use base64::Engine as _;
    use std::fmt::Write as _;
    let tmp = |path: &str| quote(&format!("{path}.harness-tmp-{tag}"));
    let temps: Vec<String> =
        items.iter().filter_map(|i| if let Put::File { path, .. } = i { Some(tmp(path)) } else { None }).collect();
    // umask 077: no content is readable by others before its chmod.
    let mut script = format!("umask 077\nfail() {{ rc=$?; rm -f -- {}; exit $rc; }}\n", temps.join(" "));
    let mut data = Vec::new();
    for run in items.chunk_by(|a, b| std::mem::discriminant(a) == std::mem::discriminant(b)) {
        let paths: Vec<String> = run
            .iter()
            .map(|i| match i {
                Put::File { path, .. } | Put::Dir { path } | Put::Log { path } => quote(path),
            })
            .collect();
        match run[0] {
            Put::Dir { .. } => {
                let _ = writeln!(script, "mkdir -m 0755 -- {} || exit $?", paths.join(" "));
            }
            Put::Log { .. } => {
                let creates: Vec<String> = paths.iter().map(|p| format!(": > {p}")).collect();
                let _ = writeln!(script, "(set -C; {}) || exit $?", creates.join(" && "));
                let _ = writeln!(
                    script,
                    "[ -z \"${{SUDO_UID:-}}\" ] || chown -- \"$SUDO_UID\" {} || exit $?",
                    paths.join(" ")
                );
            }
            Put::File { .. } => {
                let mut by_mode: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
                let mut renames = String::new();
                for item in run {
                    let Put::File { content, path, mode } = item else { continue };
                    data.push(base64::engine::general_purpose::STANDARD.encode(content));
                    // A here-document, not `printf | base64`: no fork for the writer.
                    let _ = write!(
                        script,
                        "base64 -d > {} <<HARNESS_B64 || fail\n${{{}}}\nHARNESS_B64\n",
                        tmp(path),
                        data.len()
                    );
                    by_mode.entry(*mode).or_default().push(tmp(path));
                    let _ = writeln!(renames, "mv -f -- {} {} || fail", tmp(path), quote(path));
                }
                for (mode, files) in by_mode {
                    let _ = writeln!(script, "chmod {mode:o} -- {} || fail", files.join(" "));
                }
                script.push_str(&renames);
            }
        }
    }
    let mut argv = vec!["sh".to_string(), "-c".into(), script, "sh".into()];
    argv.extend(data);
    argv
}

/// Longest command line sent in the `exec` request itself. sshd refuses a packet over 256 KiB
/// ("Bad packet length", the connection is dropped) and hands the line to the login shell as ONE
/// argument (`bash -c LINE`), which Linux refuses over 128 KiB: a node with 40 VMs lost its
/// connection at `up`, and `down` of ~30 failed with "Argument list too long". A longer `sh -c`
/// script goes on stdin instead ([`via_stdin`]); 32 KiB leaves room for servers with smaller
/// packets.
const WIRE_MAX: usize = 32 * 1024;

/// The last line of a script sent on stdin: a comment, run only if it arrived.
const SCRIPT_END: &str = "# harness: end of script";

/// Runs the script on stdin only when it arrived whole (its last line is [`SCRIPT_END`]).
const VIA_STDIN: &str = "s=$(cat); case $s in *'\n# harness: end of script') eval \"$s\";; \
                         *) echo 'harness: the script arrived cut short; nothing ran' >&2; exit 125;; esac";

/// `cmd` (a `sh -c SCRIPT [NAME ARGS...]` without stdin of its own) as `sh -c 'eval "$(cat)"'
/// NAME`, its stdin `set -- ARGS` and the script: the same shell runs the same script with the
/// same `$0`, `$@` and pid, and no argument or packet grows with it. `None` for anything else.
fn via_stdin(cmd: &RemoteCommand) -> Option<RemoteCommand> {
    let [sh, c, script, rest @ ..] = cmd.argv.as_slice() else { return None };
    if sh != "sh" || c != "-c" || cmd.stdin.is_some() {
        return None;
    }
    let (name, args) = rest.split_first().map_or(("sh", &[][..]), |(n, a)| (n.as_str(), a));
    let mut payload = String::with_capacity(script.len() + args.iter().map(|a| a.len() + 3).sum::<usize>() + 8);
    if !args.is_empty() {
        payload.push_str("set -- ");
        payload.push_str(&crate::quote::join(args));
        payload.push('\n');
    }
    payload.push_str(script);
    // A connection lost mid-transfer ends `cat` with EOF: without the end line, the part that
    // arrived (a `mv` or `mkdir` cut mid-path still parses) would run.
    payload.push('\n');
    payload.push_str(SCRIPT_END);
    Some(RemoteCommand {
        argv: vec!["sh".into(), "-c".into(), VIA_STDIN.into(), name.into()],
        stdin: Some(payload.into_bytes()),
        ..cmd.clone()
    })
}

/// What the wrapper prints before the pid: a login shell's rc file may print lines of its own
/// first (a `~/.bashrc` without an interactive guard), and the first line used to be taken as
/// the pid: no pid, and every remote kill silently did nothing.
const PID_MARKER: &str = "harness-pid:";

/// The pid of a wrapper line: the marker may follow rc-file output that did not end its line
/// (`Welcome` + `harness-pid:42`); with no pid found every remote kill did nothing.
fn pid_in_line(line: &str) -> Option<u32> {
    line.rsplit_once(PID_MARKER).and_then(|(_, p)| p.trim().parse().ok())
}

/// Bytes of rc-file output kept while waiting for the pid line, before giving up on it.
const PID_HEAD_MAX: usize = 64 * 1024;

/// The command line actually sent: the argv behind a pid-reporting `exec`.
fn wrapped_wire(cmd: &RemoteCommand) -> String {
    if cmd.sudo {
        let argv: Vec<String> = match cmd.argv.as_slice() {
            // A script: its own `sh` prints the pid, rather than a second `sh` exec'd into it
            // (one process start less per root script; the pid is the same either way).
            [sh, c, script, rest @ ..] if sh == "sh" && c == "-c" => {
                let mut v: Vec<String> = ["sudo", "-n", "--", "sh", "-c"].map(String::from).into();
                v.push(format!("echo {PID_MARKER}$$; {script}"));
                v.extend(rest.iter().cloned());
                v
            }
            argv => {
                let mut v: Vec<String> =
                    ["sudo", "-n", "--", "sh", "-c", &format!("echo {PID_MARKER}$$; exec \"$@\""), "sh"]
                        .map(String::from)
                        .into();
                v.extend(argv.iter().cloned());
                v
            }
        };
        format!("exec {}", crate::quote::join(&argv))
    } else {
        format!("echo {PID_MARKER}$$; exec {}", crate::quote::join(&cmd.argv))
    }
}

/// Output of a [`RemoteChild`], in arrival order.
#[derive(Debug)]
pub enum ChildEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    /// Exit status (or `None` when killed by a signal); no more events follow.
    Exit(Option<u32>),
}

/// A running remote command on its own channel.
pub struct RemoteChild {
    imp: ChildImpl,
}

enum ChildImpl {
    Ssh(SshChild),
    Other(Box<dyn Channel>),
}

impl RemoteChild {
    /// Remote pid of the command (known once its first output arrived or it was killed).
    pub fn pid(&self) -> Option<u32> {
        match &self.imp {
            ChildImpl::Ssh(c) => c.pid,
            ChildImpl::Other(c) => c.pid(),
        }
    }
    /// [`RemoteChild::kill`] ended the command with an SSH `signal` request alone, starting no
    /// process on the host (false when it needed the kill script, or on other transports).
    pub fn killed_by_signal_request(&self) -> bool {
        match &self.imp {
            ChildImpl::Ssh(c) => c.signalled,
            ChildImpl::Other(_) => false,
        }
    }
    /// Signal that ended the command (after [`ChildEvent::Exit`] with `None`).
    pub fn signal(&self) -> Option<&str> {
        match &self.imp {
            ChildImpl::Ssh(c) => c.signal.as_deref(),
            ChildImpl::Other(_) => None,
        }
    }
    /// Next output chunk or the exit; `None` once the channel is closed.
    pub async fn next(&mut self) -> Option<ChildEvent> {
        match &mut self.imp {
            ChildImpl::Ssh(c) => c.next().await,
            ChildImpl::Other(c) => c.next().await,
        }
    }
    pub async fn write_stdin(&mut self, bytes: &[u8]) -> Result<(), SshError> {
        match &mut self.imp {
            ChildImpl::Ssh(c) => c.write_stdin(bytes).await,
            ChildImpl::Other(c) => c.write_stdin(bytes).await,
        }
    }
    /// Send EOF on stdin.
    pub async fn close_stdin(&mut self) -> Result<(), SshError> {
        match &mut self.imp {
            ChildImpl::Ssh(c) => c.close_stdin().await,
            ChildImpl::Other(c) => c.close_stdin().await,
        }
    }
    /// Terminate the remote process (not just the channel) and close the channel.
    pub async fn kill(&mut self) -> Result<(), SshError> {
        match &mut self.imp {
            ChildImpl::Ssh(c) => c.kill().await,
            ChildImpl::Other(c) => c.kill().await,
        }
    }
    async fn collect(&mut self) -> Result<Output, SshError> {
        match &mut self.imp {
            ChildImpl::Ssh(c) => c.collect().await,
            ChildImpl::Other(_) => unreachable!("other transports collect in transport::run"),
        }
    }
}

/// A running command on a russh channel.
struct SshChild {
    session: Session,
    conn: Arc<Conn>,
    read: ChannelReadHalf,
    write: Arc<ChannelWriteHalf<Msg>>,
    _permit: Option<OwnedSemaphorePermit>,
    _writer: Option<tokio::task::JoinHandle<Result<(), russh::Error>>>,
    sudo: bool,
    /// See [`RemoteCommand::single_process`]: a `signal` request is enough to kill it.
    single_process: bool,
    /// Remote pid, from the wrapper's first stdout line.
    pid: Option<u32>,
    /// Stdout bytes before the pid line is complete.
    head: Vec<u8>,
    pending: VecDeque<ChildEvent>,
    status: Option<u32>,
    signal: Option<String>,
    /// The channel has ended (no more messages).
    done: bool,
    /// `Exit` has been handed out.
    exited: bool,
    /// [`RemoteChild::kill`] ended it with a `signal` request alone (no kill script).
    signalled: bool,
}

impl SshChild {
    fn on_stdout(&mut self, data: Bytes) {
        if self.pid.is_some() || self.head.is_empty() && data.is_empty() {
            if !data.is_empty() {
                self.pending.push_back(ChildEvent::Stdout(data));
            }
            return;
        }
        self.head.extend_from_slice(&data);
        // Lines before the marker are the login shell's, not the command's: dropped.
        let mut start = 0;
        while let Some(nl) = self.head[start..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&self.head[start..start + nl]).trim().to_string();
            start += nl + 1;
            if let Some(pid) = pid_in_line(&line) {
                self.pid = Some(pid);
                let rest = self.head.split_off(start);
                self.head.clear();
                if !rest.is_empty() {
                    self.pending.push_back(ChildEvent::Stdout(Bytes::from(rest)));
                }
                return;
            }
        }
        if self.head.len() > PID_HEAD_MAX {
            // No wrapper line in sight (should not happen): pass everything through.
            self.pid = Some(0);
            let all = std::mem::take(&mut self.head);
            self.pending.push_back(ChildEvent::Stdout(Bytes::from(all)));
        }
    }

    fn finish(&mut self) {
        self.done = true;
        if !self.head.is_empty() {
            let all = std::mem::take(&mut self.head);
            self.pending.push_back(ChildEvent::Stdout(Bytes::from(all)));
        }
    }

    /// Read one channel message into `pending`; false once the channel has ended.
    async fn pump(&mut self) -> bool {
        if self.done {
            return false;
        }
        match self.read.wait().await {
            Some(ChannelMsg::Data { data }) => self.on_stdout(data),
            Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                if !data.is_empty() {
                    self.pending.push_back(ChildEvent::Stderr(data))
                }
            }
            Some(ChannelMsg::ExitStatus { exit_status }) => self.status = Some(exit_status),
            Some(ChannelMsg::ExitSignal { signal_name, .. }) => self.signal = Some(format!("{signal_name:?}")),
            Some(ChannelMsg::Close) | None => self.finish(),
            Some(_) => {}
        }
        true
    }

    /// Next output chunk or the exit; `None` once the channel is closed.
    pub async fn next(&mut self) -> Option<ChildEvent> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            if self.done {
                if self.exited {
                    return None;
                }
                self.exited = true;
                return Some(ChildEvent::Exit(self.status));
            }
            self.pump().await;
        }
    }

    /// Drain to the end; a channel that ends without any exit status on a dead connection is
    /// reported as [`SshError::Disconnected`].
    async fn collect(&mut self) -> Result<Output, SshError> {
        let mut out = Output { status: None, signal: None, stdout: Vec::new(), stderr: Vec::new() };
        while let Some(ev) = self.next().await {
            match ev {
                ChildEvent::Stdout(b) => out.stdout.extend_from_slice(&b),
                ChildEvent::Stderr(b) => out.stderr.extend_from_slice(&b),
                ChildEvent::Exit(_) => {}
            }
        }
        out.status = self.status;
        out.signal = self.signal.clone();
        if out.status.is_none() && out.signal.is_none() {
            // Give the session task a moment to notice a dead transport before deciding.
            for _ in 0..20 {
                if self.conn.handle.is_closed() {
                    return Err(self.session.disconnected(&self.conn, "channel ended without exit status"));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(out)
    }

    pub async fn write_stdin(&mut self, bytes: &[u8]) -> Result<(), SshError> {
        self.write.data(bytes).await.map_err(|e| self.chan_err("write stdin", e))
    }
    /// Send EOF on stdin.
    pub async fn close_stdin(&mut self) -> Result<(), SshError> {
        self.write.eof().await.map_err(|e| self.chan_err("close stdin", e))
    }

    fn chan_err(&self, what: &str, e: russh::Error) -> SshError {
        if self.conn.handle.is_closed() {
            self.session.disconnected(&self.conn, e)
        } else {
            SshError::Channel { node: self.session.name.clone(), message: format!("{what}: {e}") }
        }
    }

    /// Ask sshd to SIGTERM the command's process group (RFC 4254 `signal` request; OpenSSH
    /// does `killpg` as the user) and wait briefly for the channel to end. No process is
    /// started for it, which matters when hundreds of followers end at once. Under `sudo` the
    /// user may signal sudo itself (its real uid stays the user's) and sudo relays the TERM
    /// to its command: enough for a [`RemoteCommand::single_process`] command. False if the
    /// command is still there (an old sshd ignores the request): the caller then kills by pid.
    async fn signalled_away(&mut self) -> bool {
        if self.write.signal(russh::Sig::TERM).await.is_err() {
            return false;
        }
        let until = tokio::time::Instant::now() + SIGNAL_GRACE;
        while !self.done {
            if tokio::time::timeout_at(until, self.pump()).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Terminate the remote process (not just the channel) and close the channel.
    pub async fn kill(&mut self) -> Result<(), SshError> {
        // The pid line comes first; wait briefly for it if the command has not printed it yet.
        let until = Instant::now() + Duration::from_secs(5);
        while self.pid.is_none() && !self.done && Instant::now() < until {
            let _ = tokio::time::timeout(until - Instant::now(), self.pump()).await;
        }
        let res = match self.pid {
            Some(pid) if pid > 1 && !self.done => {
                if self.single_process && self.signalled_away().await {
                    self.signalled = true;
                    Ok(())
                } else {
                    self.session.kill_pid(pid, self.sudo).await
                }
            }
            _ => Ok(()),
        };
        let _ = self.write.close().await;
        self.done = true;
        res
    }
}

impl Drop for SshChild {
    /// A child dropped while still running is killed remotely (same pid trick as
    /// [`RemoteChild::kill`]) and its channel closed, in a background task: a forgotten
    /// `sudo tail -F` would otherwise live on, and hold one of sshd's MaxSessions slots.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (w, session, pid, sudo) = (self.write.clone(), self.session.clone(), self.pid, self.sudo);
        // The channel stays open until the kill is done: its slot is given back only then, or
        // new commands would open channels beside it and the kill's, past sshd's MaxSessions.
        let slot = self._permit.take();
        rt.spawn(async move {
            if let Some(pid) = pid.filter(|p| *p > 1) {
                let _ = session.kill_pid(pid, sudo).await;
            }
            let _ = w.close().await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::kex;

    /// Runs a [`wrapped_wire`] line in a local `bash`, with a `sudo` on PATH that just drops
    /// `-n --`: what the remote login shell would do, minus the privilege change.
    fn run_wire_locally(cmd: &RemoteCommand) -> String {
        use crate::testsupport;
        let path = testsupport::path_with("sudo", testsupport::PASSTHROUGH_SUDO);
        let out = testsupport::output(|| {
            let mut c = std::process::Command::new("bash");
            c.arg("-c").arg(wrapped_wire(cmd)).env("PATH", &path);
            c
        });
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn a_root_script_reports_its_own_pid_with_one_shell_and_keeps_its_arguments() {
        let cmd = RemoteCommand::new(["sh", "-c", "echo \"pid=$$ zero=$0 one=$1 two=$2\"", "sh", "a b", "it's"]).sudo();
        let wire = wrapped_wire(&cmd);
        assert!(!wire.contains("exec \"$@\""), "a script needs no second shell: {wire}");
        let out = run_wire_locally(&cmd);
        let mut lines = out.lines();
        let pid = lines.next().unwrap().strip_prefix(PID_MARKER).unwrap();
        assert!(pid.parse::<u32>().is_ok(), "{out}");
        assert_eq!(
            lines.next().unwrap(),
            format!("pid={pid} zero=sh one=a b two=it's"),
            "the pid printed is the script's"
        );
    }

    /// A script too long for one `exec` request, moved to stdin: the same shell (the pid line
    /// is the script's `$$`), the same `$0` and arguments, quotes and `$` literal.
    #[test]
    fn a_long_script_on_stdin_keeps_its_pid_name_and_arguments() {
        use crate::testsupport;
        let pad = format!("# {}\n", "x".repeat(1000)).repeat(200);
        let script = format!("{pad}echo \"pid=$$ zero=$0 n=$# one=$1 two=${{#2}}\"");
        let big = "y".repeat(150_000);
        for sudo in [false, true] {
            let mut cmd = RemoteCommand::new(["sh", "-c", &script, "name", "it's $HOME `x`", &big]);
            if sudo {
                cmd = cmd.sudo();
            }
            assert!(wrapped_wire(&cmd).len() > WIRE_MAX);
            let moved = via_stdin(&cmd).unwrap();
            let wire = wrapped_wire(&moved);
            assert!(wire.len() < 400, "{wire}");
            let path = testsupport::path_with("sudo", testsupport::PASSTHROUGH_SUDO);
            let payload = moved.stdin.clone().unwrap();
            // As `testsupport::output`, retried while another thread's stand-in is `Text file busy`.
            let out = (0..50)
                .map(|_| {
                    let mut child = std::process::Command::new("bash")
                        .arg("-c")
                        .arg(&wire)
                        .env("PATH", &path)
                        .stdin(std::process::Stdio::piped())
                        .stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::piped())
                        .spawn()
                        .unwrap();
                    let mut stdin = child.stdin.take().unwrap();
                    let p = payload.clone();
                    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &p));
                    let out = child.wait_with_output().unwrap();
                    let _ = writer.join().unwrap();
                    out
                })
                .find(|o| !String::from_utf8_lossy(&o.stderr).contains("Text file busy"))
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8(out.stdout).unwrap();
            let mut lines = text.lines();
            let pid = lines.next().unwrap().strip_prefix(PID_MARKER).unwrap();
            assert_eq!(lines.next(), Some(format!("pid={pid} zero=name n=2 one=it's $HOME `x` two=150000").as_str()));
        }
        // Not a script, or stdin of its own: left alone.
        assert!(via_stdin(&RemoteCommand::new(["true"])).is_none());
        assert!(VIA_STDIN.contains(SCRIPT_END));
        assert!(via_stdin(&RemoteCommand::sh("cat").stdin(b"x".to_vec())).is_none());
    }

    /// A long script goes on stdin and ran through `eval "$(cat)"`: a connection lost mid-transfer
    /// ends `cat` with EOF, and whatever part had arrived ran (a `mv` or `mkdir` cut mid-path
    /// still parses). Now nothing runs unless the end line arrived.
    #[test]
    fn regression_a_script_cut_short_on_stdin_runs_nothing() {
        let d = tempfile::tempdir().unwrap();
        let made = d.path().join("made");
        let script = format!("{}mkdir {}\ntouch {}/later", "# pad\n".repeat(10), made.display(), made.display());
        let moved = via_stdin(&RemoteCommand::new(["sh", "-c", &script])).unwrap();
        let payload = moved.stdin.clone().unwrap();
        let run = |bytes: &[u8]| {
            let mut child = std::process::Command::new("sh")
                .args(&moved.argv[1..])
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), bytes).unwrap();
            child.wait_with_output().unwrap()
        };
        // Cut right after the `mkdir` line: the old wrapper made the directory.
        let cut =
            payload.len() - SCRIPT_END.len() - "\ntouch ".len() - made.display().to_string().len() - "/later".len();
        let out = run(&payload[..cut]);
        assert_eq!(out.status.code(), Some(125));
        assert!(String::from_utf8_lossy(&out.stderr).contains("cut short"));
        assert!(!made.exists(), "part of a cut script ran");
        let out = run(&payload);
        assert!(out.status.success(), "{out:?}");
        assert!(made.join("later").exists());
    }

    /// The pid line had to start with the marker: a login shell's rc file printing without a
    /// final newline (`printf Welcome`) glued its text in front, no pid was found, and every
    /// remote kill of that command silently did nothing.
    #[test]
    fn regression_a_pid_line_after_unterminated_rc_output_is_found() {
        assert_eq!(pid_in_line("harness-pid:42"), Some(42));
        assert_eq!(pid_in_line("Welcome to the labharness-pid:42"), Some(42));
        assert_eq!(pid_in_line("harness-pid:1 harness-pid:42"), Some(42));
        assert_eq!(pid_in_line("harness-pid:x"), None);
        assert_eq!(pid_in_line("Welcome"), None);
    }

    /// A connection lost mid-upload ends the remote `cat` with EOF (status 0): the cut file was
    /// chmod'ed and renamed into place. Now the size is checked first and nothing is renamed.
    #[test]
    fn regression_an_upload_cut_short_is_not_renamed_into_place() {
        let d = tempfile::tempdir().unwrap();
        let (tmp, dest) = (d.path().join("f.tmp"), d.path().join("f"));
        let run = |stdin: &[u8], size: usize| {
            let mut c = std::process::Command::new("sh")
                .args(["-c", UPLOAD_SCRIPT, "sh", tmp.to_str().unwrap(), dest.to_str().unwrap(), "644"])
                .arg(size.to_string())
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut c.stdin.take().unwrap(), stdin).unwrap();
            c.wait_with_output().unwrap()
        };
        let out = run(&[7u8; 1000], 4096);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("upload cut short: 1000 of 4096 bytes"), "{out:?}");
        assert!(!dest.exists() && !tmp.exists());
        let out = run(&[7u8; 4096], 4096);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(std::fs::read(&dest).unwrap().len(), 4096);
        assert!(!tmp.exists());
    }

    #[test]
    fn a_root_argv_is_still_exec_ed_behind_the_pid_line() {
        let cmd = RemoteCommand::new(["sh", "-c", "echo \"pid=$$\""]).sudo();
        assert!(run_wire_locally(&cmd).lines().nth(1).unwrap().starts_with("pid="));
        let cmd = RemoteCommand::new(["printf", "%s|%s\\n", "x y", "-c"]).sudo();
        let out = run_wire_locally(&cmd);
        assert_eq!(out.lines().nth(1), Some("x y|-c"), "{out}");
    }

    #[test]
    fn kex_order_keeps_post_quantum_first_then_nistp256_before_curve25519() {
        let order = kex_order();
        let pos = |n: kex::Name| order.iter().position(|k| *k == n);
        assert_eq!(pos(kex::MLKEM768X25519_SHA256), Some(0));
        assert_eq!(pos(kex::ECDH_SHA2_NISTP256), Some(1));
        assert!(pos(kex::CURVE25519).unwrap() > 1);
        // Nothing of russh's list is lost, nothing is offered twice, and the strict-kex and
        // ext-info markers (needed against Terrapin) are still there.
        assert_eq!(order.len(), russh::Preferred::DEFAULT.kex.len() + 1);
        for k in russh::Preferred::DEFAULT.kex.iter() {
            assert_eq!(order.iter().filter(|o| *o == k).count(), 1, "{k:?}");
        }
        assert!(pos(kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT).is_some());
    }

    /// Runs a put_many script with the local `sh` (dash on Debian, as on the hosts).
    fn run_put(items: &[Put<'_>], env_uid: Option<u32>) -> std::process::Output {
        let argv = put_argv(items, "0123456789abcdef");
        let mut c = std::process::Command::new(&argv[0]);
        c.args(&argv[1..]).env_remove("SUDO_UID");
        if let Some(uid) = env_uid {
            c.env("SUDO_UID", uid.to_string());
        }
        c.output().unwrap()
    }

    #[test]
    fn put_many_script_creates_in_order_with_modes_and_binary_safe_contents() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n).to_str().unwrap().to_string();
        let (manifest, vm1, vm2, log1, log2, init1, conf2) = (
            p("manifest.json"),
            p("vm 1"),
            p("vm'2"),
            p("vm 1/serial.log"),
            p("vm'2/serial.log"),
            p("vm 1/init.sh"),
            p("vm'2/$x.conf"),
        );
        let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let items = [
            Put::File { content: b"{}", path: &manifest, mode: 0o644 },
            Put::Dir { path: &vm1 },
            Put::Dir { path: &vm2 },
            Put::Log { path: &log1 },
            Put::Log { path: &log2 },
            Put::File { content: b"#!/bin/sh\n", path: &init1, mode: 0o755 },
            Put::File { content: &bytes, path: &conf2, mode: 0o600 },
            Put::File { content: b"", path: &p("empty"), mode: 0o644 },
        ];
        let me = std::fs::metadata(d.path()).unwrap().uid();
        let out = run_put(&items, Some(me));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mode = |f: &str| std::fs::metadata(f).unwrap().permissions().mode() & 0o7777;
        assert_eq!(std::fs::read(&manifest).unwrap(), b"{}");
        assert_eq!((mode(&manifest), mode(&vm1), mode(&vm2)), (0o644, 0o755, 0o755));
        assert_eq!(std::fs::read(&conf2).unwrap(), bytes, "binary content, past one pipe buffer");
        assert_eq!((mode(&init1), mode(&conf2), mode(&p("empty"))), (0o755, 0o600, 0o644));
        assert_eq!(std::fs::read(&log1).unwrap(), b"");
        assert_eq!((mode(&log1), std::fs::metadata(&log2).unwrap().uid()), (0o600, me));
        let left: Vec<_> = walk(d.path()).into_iter().filter(|f| f.contains("harness-tmp")).collect();
        assert!(left.is_empty(), "{left:?}");

        // Existing directories and logs are errors, never reused; a failed step stops the rest.
        let later = p("later");
        let out = run_put(&[Put::Log { path: &log1 }, Put::File { content: b"x", path: &later, mode: 0o644 }], None);
        assert!(!out.status.success());
        assert!(!std::path::Path::new(&later).exists());
        let out = run_put(&[Put::Dir { path: &vm1 }, Put::File { content: b"x", path: &later, mode: 0o644 }], None);
        assert!(!out.status.success());
        assert!(!std::path::Path::new(&later).exists());
        // A file whose directory is missing fails with no temp file left anywhere.
        // And one failing after another's temp was written removes that temp too, before any
        // file was renamed into place.
        let first = p("first");
        let out = run_put(
            &[
                Put::File { content: b"x", path: &first, mode: 0o644 },
                Put::File { content: b"x", path: &p("no/such/f"), mode: 0o644 },
            ],
            None,
        );
        assert!(!out.status.success());
        assert!(!std::path::Path::new(&first).exists());
        assert!(walk(d.path()).iter().all(|f| !f.contains("harness-tmp")));
    }

    #[test]
    fn put_many_script_is_one_process_per_kind_of_step_not_per_vm() {
        let paths: Vec<String> = (1..=10).map(|i| format!("/run/harness/r/DUT1_{i}")).collect();
        let logs: Vec<String> = paths.iter().map(|p| format!("{p}/serial.log")).collect();
        let mut items: Vec<Put<'_>> = paths.iter().map(|p| Put::Dir { path: p }).collect();
        items.extend(logs.iter().map(|p| Put::Log { path: p }));
        items.extend(logs.iter().map(|p| Put::File { content: b"x", path: p, mode: 0o644 }));
        let script = &put_argv(&items, "t")[2];
        let count = |needle: &str| script.matches(needle).count();
        assert_eq!(count("mkdir "), 1, "{script}");
        assert_eq!(count("chown "), 1, "{script}");
        assert_eq!(count("chmod "), 1, "{script}");
        assert_eq!(count("base64 -d"), 10);
        assert_eq!(count("mv -f"), 10);
        assert!(script.contains("${10}"), "parameters past 9 are braced");
    }

    fn walk(dir: &std::path::Path) -> Vec<String> {
        let mut out = vec![];
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            out.push(e.path().display().to_string());
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            }
        }
        out
    }
}
