//! `Qga::exec` against the real `qemu-ga` binary (Debian qemu-guest-agent, the agent our lab
//! guests run), listening on a Unix socket in a temp dir on this host instead of a virtio port.
//! The fake agent in the unit tests only proves we match our reading of the protocol; this
//! proves we match the agent. A missing `qemu-ga` fails the tests: `scripts/install-deps.sh`
//! installs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::run::qga::{ExitStatus, Qga, QgaError};
use tokio::net::UnixStream;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A `qemu-ga` process we started; stopped (by its pid) when dropped.
struct Agent {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn qemu_ga() -> PathBuf {
    // Debian installs it in /usr/sbin, which is not on every user's PATH.
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("qemu-ga"))
        .find(|p| p.is_file())
        .expect("qemu-ga not found: install the Debian package qemu-guest-agent (scripts/install-deps.sh)")
}

fn start_agent(extra: &[&str]) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qga.sock");
    let child = Command::new(qemu_ga())
        .arg("--method=unix-listen")
        .arg(format!("--path={}", sock.display()))
        // Its own pidfile and state dir, so it neither needs root nor meets another agent's.
        .arg(format!("--pidfile={}", dir.path().join("qga.pid").display()))
        .arg(format!("--statedir={}", dir.path().display()))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start qemu-ga");
    let mut agent = Agent { child, sock, _dir: dir };
    wait_for_socket(&mut agent);
    agent
}

fn wait_for_socket(agent: &mut Agent) {
    let t0 = Instant::now();
    while !agent.sock.exists() {
        if let Some(st) = agent.child.try_wait().unwrap() {
            panic!("qemu-ga exited before listening: {st}");
        }
        assert!(t0.elapsed() < TIMEOUT, "qemu-ga did not create {}", agent.sock.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// qemu-ga binds its socket (the file appears) a moment before it listens: a connect in that
/// window is refused (this failed CI once), so refusals are retried until TIMEOUT.
async fn connect(sock: &Path) -> Qga<UnixStream> {
    let t0 = Instant::now();
    loop {
        match UnixStream::connect(sock).await {
            Ok(s) => return Qga::new(s),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && t0.elapsed() < TIMEOUT => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => panic!("connect to qemu-ga at {}: {e}", sock.display()),
        }
    }
}

#[tokio::test]
async fn real_agent_runs_echo() {
    let agent = start_agent(&[]);
    let mut qga = connect(&agent.sock).await;
    let out = qga.exec("echo", &["hi".to_string()], TIMEOUT).await.unwrap();
    assert_eq!(out.status, ExitStatus::Code(0));
    assert!(out.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert!(out.stderr.is_empty());
    assert!(!out.stdout_truncated && !out.stderr_truncated);
}

#[tokio::test]
async fn real_agent_reports_stderr_exit_code_and_signal() {
    let agent = start_agent(&[]);
    let mut qga = connect(&agent.sock).await;
    let script = "printf 'out\\n'; printf 'err\\n' >&2; sleep 0.3; exit 7";
    let out = qga.exec("/bin/sh", &["-c".into(), script.into()], TIMEOUT).await.unwrap();
    assert_eq!(out.status, ExitStatus::Code(7));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");

    // The same channel keeps working, and a signal comes through as such.
    let out = qga.exec("/bin/sh", &["-c".into(), "kill -KILL $$".into()], TIMEOUT).await.unwrap();
    assert_eq!(out.status, ExitStatus::Signal(9));
}

#[tokio::test]
async fn real_agent_missing_program_is_a_command_error() {
    let agent = start_agent(&[]);
    let mut qga = connect(&agent.sock).await;
    let err = qga.exec("/nonexistent/program", &[], TIMEOUT).await.unwrap_err();
    match err {
        QgaError::Command { cmd, desc, .. } => {
            assert_eq!(cmd, "guest-exec");
            assert!(desc.contains("No such file"), "{desc}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn real_agent_with_guest_exec_blocked_says_so() {
    let agent = start_agent(&["--block-rpcs=guest-exec"]);
    let mut qga = connect(&agent.sock).await;
    let err = qga.exec("echo", &["hi".to_string()], TIMEOUT).await.unwrap_err();
    match &err {
        QgaError::ExecDisabled { cmd, desc } => {
            assert_eq!(cmd, "guest-exec");
            assert!(desc.contains("disabled"), "{desc}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("--block-rpcs guest-exec"), "{err}");
    // The agent is still fine for everything else.
    qga.ping(TIMEOUT).await.unwrap();
}
