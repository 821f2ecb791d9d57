//! SSH layer against real OpenSSH sshd instances on loopback (`scripts/lab.sh`): auth methods,
//! host keys, timeouts, sudo, quoting, uploads, remote kills, ProxyJump, concurrency, reconnect.

mod common;

use std::time::{Duration, Instant};

use common::lab::{Lab, lab, opts};
use harness::ssh::ConnectOptions;
use harness::ssh::{ChildEvent, RemoteCommand, Session, SshError, SshTarget};
use harness::topology::Auth;
use std::path::Path;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn connect(t: &SshTarget) -> Session {
    Session::connect(t, &opts()).await.unwrap_or_else(|e| panic!("connect {}: {e}", t.name))
}

/// `argv` started with [`Session::spawn`], once it runs (its pid line arrived), and its pid.
async fn spawned(s: &Session, argv: &[&str]) -> (harness::ssh::RemoteChild, u32) {
    let mut child = s.spawn(&RemoteCommand::new(argv.iter().copied())).await.unwrap();
    let pid = loop {
        if let Some(p) = child.pid() {
            break p;
        }
        let _ = tokio::time::timeout(Duration::from_millis(20), child.next()).await;
    };
    (child, pid)
}

/// Whether no process of the login user matches `pattern` (`pgrep -f`) within 5 s.
async fn gone_within_5s(s: &Session, pattern: &str) -> bool {
    let script = format!(
        "for i in $(seq 50); do pgrep -u \"$(id -u)\" -f {} >/dev/null || exit 0; sleep 0.1; done; exit 1",
        harness::quote::quote(pattern)
    );
    s.run(&RemoteCommand::sh(script)).await.unwrap().success()
}

#[test]
fn session_is_shareable() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync_clone::<Session>();
}

#[test]
fn key_auth_exit_codes_and_stderr() {
    let lab = lab();
    rt().block_on(async {
        let s = connect(&lab.node(1)).await;
        let out = s.run(&RemoteCommand::sh("echo out; echo err >&2; exit 3")).await.unwrap();
        assert_eq!(out.status, Some(3));
        assert_eq!(out.stdout_str(), "out\n");
        assert_eq!(out.stderr_str(), "err\n");
        let out = s.run(&RemoteCommand::new(["id", "-un"])).await.unwrap();
        assert!(out.success());
        assert_eq!(out.stdout_str().trim(), lab.users[0]);
        let out = s.run(&RemoteCommand::new(["id", "-u"]).sudo()).await.unwrap();
        assert_eq!(out.stdout_str().trim(), "0");
        // run_ok turns a nonzero exit into a typed error carrying stderr.
        let err = s.run_ok(&RemoteCommand::sh("echo boom >&2; exit 7")).await.unwrap_err();
        match err {
            SshError::CommandFailed { node, status, stderr, .. } => {
                assert_eq!((node.as_str(), status.as_str(), stderr.as_str()), ("DUT1", "7", "boom"))
            }
            e => panic!("unexpected {e}"),
        }
        // Output written after stdin EOF and right before exit is not lost.
        let out = s.run(&RemoteCommand::sh("cat; printf tail").stdin(b"in-".to_vec())).await.unwrap();
        assert_eq!(out.stdout_str(), "in-tail");
        // A command killed by a signal reports the signal, not a status.
        let out = s.run(&RemoteCommand::sh("kill -KILL $$")).await.unwrap();
        assert_eq!(out.status, None);
        assert!(out.signal.is_some() || out.status.is_none());
        assert!(s.ping().await.unwrap() < Duration::from_secs(2));
        s.close().await;
    });
}

/// An ssh-agent listening in `dir`, holding `keys`: its socket, and a guard that ends it.
fn start_agent(dir: &std::path::Path, keys: &[&std::path::Path]) -> (std::path::PathBuf, KillOnDrop) {
    let sock = dir.join("agent.sock");
    let out = std::process::Command::new("ssh-agent").arg("-a").arg(&sock).arg("-s").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let pid: i32 = text.split("SSH_AGENT_PID=").nth(1).unwrap().split(';').next().unwrap().parse().unwrap();
    let agent = KillOnDrop(pid);
    for key in keys {
        let st = std::process::Command::new("ssh-add").arg("-q").arg(key).env("SSH_AUTH_SOCK", &sock).status();
        assert!(st.unwrap().success());
    }
    (sock, agent)
}

/// Sends SIGTERM to a pid when dropped.
struct KillOnDrop(i32);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0, libc::SIGTERM) };
    }
}

#[test]
fn agent_auth() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let (sock, _agent) = start_agent(dir.path(), &[lab.key.as_path()]);
    let mut t = lab.node(1);
    t.auth.clear(); // no key file: only the agent can authenticate
    rt().block_on(async {
        let mut o = opts();
        let err = Session::connect(&t, &o).await.err().expect("no credentials must fail");
        assert!(matches!(err, SshError::Auth { .. }), "{err}");
        o.agent_socket = Some(sock.clone());
        let s = Session::connect(&t, &o).await.unwrap();
        assert_eq!(s.run_ok(&RemoteCommand::new(["echo", "agent"])).await.unwrap().stdout_str(), "agent\n");
    });
}

/// A node that names a password, on a server that also takes keys, with an ssh-agent holding
/// more keys than sshd's MaxAuthTries: the agent's keys were tried first, each rejection counted,
/// and sshd dropped the connection ("Too many authentication failures") before the password
/// was offered. The password now comes before the agent.
#[test]
fn regression_an_agent_full_of_keys_does_not_use_up_max_auth_tries_before_the_password() {
    use std::io::BufRead;
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    // DUTPW's sshd, on a port of its own, taking keys too, and dropping after 3 failures.
    let port = lab.pw_port + 8;
    let conf = std::fs::read_to_string(lab.dir.join("nodes/DUTPW/sshd_config")).unwrap();
    let conf: String = conf
        .lines()
        .map(|l| match l.split_whitespace().next() {
            Some("ListenAddress") => format!("ListenAddress 127.0.0.1:{port}"),
            Some("PidFile") => "PidFile none".into(),
            Some("PubkeyAuthentication") => "PubkeyAuthentication yes\nMaxAuthTries 3".into(),
            _ => l.to_string(),
        })
        .map(|l| l + "\n")
        .collect();
    let cfg = dir.path().join("sshd_config");
    std::fs::write(&cfg, conf).unwrap();
    let mut sshd = std::process::Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&cfg)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Sshd(std::process::Child);
    impl Drop for Sshd {
        fn drop(&mut self) {
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
    let stderr = sshd.stderr.take().unwrap();
    let _sshd = Sshd(sshd);
    let mut log = std::io::BufReader::new(stderr).lines();
    assert!(log.any(|l| l.is_ok_and(|l| l.contains("Server listening"))), "the test sshd did not start");
    std::thread::spawn(move || log.for_each(drop));

    let keys: Vec<std::path::PathBuf> = (0..4).map(|i| dir.path().join(format!("k{i}"))).collect();
    for key in &keys {
        let st =
            std::process::Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(key).status();
        assert!(st.unwrap().success());
    }
    let (sock, _agent) = start_agent(dir.path(), &keys.iter().map(|k| k.as_path()).collect::<Vec<_>>());
    let mut t = lab.pw_node();
    t.port = Some(port);
    t.known_hosts = Some(dir.path().join("known_hosts"));
    t.accept_new_host_key = true;
    let mut o = opts();
    o.agent_socket = Some(sock);
    rt().block_on(async {
        let s = Session::connect(&t, &o).await.unwrap_or_else(|e| panic!("{e}"));
        let out = s.run_ok(&RemoteCommand::new(["id", "-un"])).await.unwrap();
        assert_eq!(out.stdout_str().trim(), lab.pw_user);
        // Without the password the agent's keys do use up MaxAuthTries. That failure read
        // "Could not reach the event loop" (russh's words for a connection gone mid-auth): it
        // now says what sshd said, why, and what was tried.
        t.auth.clear();
        let err = Session::connect(&t, &o).await.err().expect("only wrong keys").to_string();
        assert!(err.contains("the server ended the connection during authentication"), "{err}");
        assert!(err.contains("Too many authentication failures") && err.contains("MaxAuthTries"), "{err}");
        assert!(err.contains("tried: ssh-agent key"), "{err}");
        assert!(!err.contains("event loop"), "{err}");
    });
}

#[test]
fn password_auth_and_wrong_credentials() {
    let lab = lab();
    rt().block_on(async {
        let s = connect(&lab.pw_node()).await;
        let out = s.run_ok(&RemoteCommand::new(["id", "-un"])).await.unwrap();
        assert_eq!(out.stdout_str().trim(), lab.pw_user);
        // password_env works the same way and comes before the plaintext password.
        let mut t = lab.pw_node();
        t.auth = vec![Auth::PasswordEnv("HARNESS_TEST_NO_SUCH_VAR".into()), Auth::Password("wrong".into())];
        let err = Session::connect(&t, &opts()).await.err().unwrap();
        let msg = err.to_string();
        assert!(matches!(err, SshError::Auth { .. }), "{msg}");
        assert!(msg.starts_with("DUTPW (127.0.0.1:2290): auth failed"), "{msg}");
        assert!(msg.contains("HARNESS_TEST_NO_SUCH_VAR"), "{msg}");

        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other_key");
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&other)
            .status()
            .unwrap();
        assert!(st.success());
        let mut t = lab.node(1);
        t.auth = vec![Auth::IdentityFile { path: other.clone(), passphrase_env: None }];
        let err = Session::connect(&t, &opts()).await.err().unwrap();
        let msg = err.to_string();
        assert!(matches!(err, SshError::Auth { .. }), "{msg}");
        assert!(msg.contains("DUT1") && msg.contains("other_key"), "{msg}");
    });
}

#[test]
fn unknown_host_refused_then_accepted_and_recorded() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("known_hosts");
    let mut t = lab.node(1);
    t.known_hosts = Some(kh.clone());
    rt().block_on(async {
        let err = Session::connect(&t, &opts()).await.err().unwrap();
        let msg = err.to_string();
        match &err {
            SshError::HostKeyUnknown { fingerprint, .. } => assert!(fingerprint.starts_with("SHA256:"), "{msg}"),
            e => panic!("expected HostKeyUnknown, got {e}"),
        }
        assert!(msg.contains("--accept-new-host-keys"), "{msg}");
        let mut o = opts();
        o.accept_new_host_keys = true;
        Session::connect(&t, &o).await.unwrap();
        let recorded = std::fs::read_to_string(&kh).unwrap();
        assert!(recorded.contains(&format!("[127.0.0.1]:{} ssh-ed25519 ", lab.ports[0])), "{recorded}");
        // Now known: accepted without the flag.
        Session::connect(&t, &opts()).await.unwrap();
        // The per-node flag works as well.
        let mut t2 = lab.node(2);
        t2.known_hosts = Some(kh.clone());
        t2.accept_new_host_key = true;
        Session::connect(&t2, &opts()).await.unwrap();
    });
}

#[test]
fn changed_host_key_always_refused() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake_host_key");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&fake)
        .status()
        .unwrap();
    assert!(st.success());
    let pubkey = std::fs::read_to_string(fake.with_extension("pub")).unwrap();
    let kh = dir.path().join("known_hosts");
    let line: Vec<&str> = pubkey.split_whitespace().take(2).collect();
    std::fs::write(&kh, format!("# other\n[127.0.0.1]:{} {} {}\n", lab.ports[0], line[0], line[1])).unwrap();
    let mut t = lab.node(1);
    t.known_hosts = Some(kh.clone());
    rt().block_on(async {
        let mut o = opts();
        o.accept_new_host_keys = true; // never overrides a changed key
        let err = Session::connect(&t, &o).await.err().unwrap();
        match &err {
            SshError::HostKeyChanged { line, node, .. } => assert_eq!((*line, node.as_str()), (2, "DUT1")),
            e => panic!("expected HostKeyChanged, got {e}"),
        }
        assert!(err.to_string().contains("HOST KEY CHANGED"));
    });
    assert_eq!(std::fs::read_to_string(&kh).unwrap().lines().count(), 2, "known_hosts must not be modified");
}

/// Regression: a host known only by a key of another type, and a host key marked `@revoked`,
/// both counted as unknown, so `--accept-new-host-keys` recorded and trusted them.
#[test]
fn regression_host_key_type_change_and_revoked_key_accepted_as_new() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("known_hosts");
    let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDXa2c0ubcSvcHGjH1R1bP3JisidmPov2FBb04SRvq+MAp2ARa8lFOM2FehwaSHHH5yfDbyAJRQRTV0ZHaGyrkhPH9kjwU9ezpIM8CFNelnKncEQgmnYi9CgD9SqNGG8tosaFk3dclsuHoH8utUP/Mh5BfLYXgvqjg8NAp9siAVZw==";
    let mut t = lab.node(1);
    t.known_hosts = Some(kh.clone());
    let mut o = opts();
    o.accept_new_host_keys = true;
    rt().block_on(async {
        // The lab's sshd has only an ed25519 host key; known_hosts says RSA.
        std::fs::write(&kh, format!("[127.0.0.1]:{}\t{}\n", lab.ports[0], rsa.replace(' ', "\t"))).unwrap();
        match Session::connect(&t, &o).await.err() {
            Some(SshError::HostKeyTypeChanged(c)) if c.line == 1 => {}
            r => panic!("expected HostKeyTypeChanged, got {r:?}"),
        }
        assert_eq!(std::fs::read_to_string(&kh).unwrap().lines().count(), 1, "known_hosts must not be modified");
        // The real key, revoked.
        let real = std::fs::read_to_string(&lab.known_hosts).unwrap();
        let entry = real.lines().find(|l| l.starts_with(&format!("[127.0.0.1]:{} ", lab.ports[0]))).unwrap();
        std::fs::write(&kh, format!("@revoked {entry}\n")).unwrap();
        match Session::connect(&t, &o).await.err() {
            Some(SshError::HostKeyRevoked { line: 1, .. }) => {}
            r => panic!("expected HostKeyRevoked, got {r:?}"),
        }
        assert_eq!(std::fs::read_to_string(&kh).unwrap().lines().count(), 1, "known_hosts must not be modified");
    });
}

#[test]
fn unreachable_port_fails_fast_with_phase() {
    let lab = lab();
    let mut t = lab.node(1);
    t.port = Some(2299);
    rt().block_on(async {
        let start = Instant::now();
        let err = Session::connect(&t, &opts()).await.err().unwrap();
        assert!(start.elapsed() < Duration::from_secs(1), "took {:?}", start.elapsed());
        assert!(matches!(err, SshError::Connect { .. }), "{err}");
        assert!(err.to_string().starts_with("DUT1 (127.0.0.1:2299): connect failed"), "{err}");
    });
}

#[test]
fn sudo_wanting_a_password_is_a_typed_error() {
    let lab = lab();
    rt().block_on(async {
        let s = connect(&lab.sudopw_node()).await;
        assert!(s.run_ok(&RemoteCommand::new(["true"])).await.is_ok());
        let err = s.run(&RemoteCommand::new(["true"]).sudo()).await.unwrap_err();
        assert!(matches!(err, SshError::SudoPassword { .. }), "{err}");
        assert!(err.to_string().contains("DUTSUDOPW"));
    });
}

const ADVERSARIAL: &[&str] = &[
    "plain",
    "",
    "two words",
    "it's",
    "\"double\"",
    "$(touch /tmp/harness-pwned)",
    "`id`",
    "$HOME",
    "line1\nline2",
    "  lead and trail  ",
    "*",
    "/etc/*",
    "semi;colon",
    "a|b&c>d<e",
    "back\\slash",
    "tab\there",
    "~",
    "-n",
    "ünïcødé",
    "'",
    "''",
    "\\'",
];

#[test]
fn adversarial_arguments_arrive_literally() {
    let lab = lab();
    rt().block_on(async {
        let s = connect(&lab.node(1)).await;
        for sudo in [false, true] {
            let mut argv = vec!["printf".to_string(), "%s\\0".to_string()];
            argv.extend(ADVERSARIAL.iter().map(|a| a.to_string()));
            let mut cmd = RemoteCommand::new(argv);
            cmd.sudo = sudo;
            let out = s.run_ok(&cmd).await.unwrap();
            let got: Vec<&[u8]> = out.stdout.split(|&b| b == 0).collect();
            let want: Vec<&[u8]> = ADVERSARIAL.iter().map(|a| a.as_bytes()).chain([&b""[..]]).collect();
            assert_eq!(got, want, "sudo={sudo}");
        }
        // The script form quotes the script as one argument as well.
        let out = s.run_ok(&RemoteCommand::sh("printf '%s|' \"$0\" \"$1\"")).await.unwrap();
        assert_eq!(out.stdout_str(), "sh||");
    });
    assert!(!std::path::Path::new("/tmp/harness-pwned").exists());
}

fn sha256_local(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, bytes).unwrap();
    let out = std::process::Command::new("sha256sum").arg(&p).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

#[test]
fn upload_is_binary_safe_atomic_and_large() {
    let lab = lab();
    rt().block_on(async {
        let s = connect(&lab.node(1)).await;
        let home = s.run_ok(&RemoteCommand::sh("printf %s \"$HOME\"")).await.unwrap().stdout_str();
        let all: Vec<u8> = (0..=255u8).collect();
        let p = format!("{home}/bytes.bin");
        s.upload(&all, &p, 0o640, false).await.unwrap();
        let back = s.run_ok(&RemoteCommand::new(["cat", &p])).await.unwrap();
        assert_eq!(back.stdout, all);
        let mode = s.run_ok(&RemoteCommand::new(["stat", "-c", "%a %U", &p])).await.unwrap().stdout_str();
        assert_eq!(mode.trim(), format!("640 {}", lab.users[0]));

        // 8 MiB of pseudo-random bytes: far larger than the 2 MiB SSH window.
        let mut big = vec![0u8; 8 << 20];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for b in big.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 24) as u8;
        }
        let p = format!("{home}/big.bin");
        let t = Instant::now();
        s.upload(&big, &p, 0o600, false).await.unwrap();
        let took = t.elapsed();
        let sum = s.run_ok(&RemoteCommand::new(["sha256sum", &p])).await.unwrap().stdout_str();
        assert_eq!(sum.split_whitespace().next().unwrap(), sha256_local(&big), "upload took {took:?}");
        // No temp files left next to the targets.
        let ls = s.run_ok(&RemoteCommand::new(["ls", "-a", &home])).await.unwrap().stdout_str();
        assert!(!ls.contains("harness-tmp"), "{ls}");
        s.run_ok(&RemoteCommand::new(["rm", "-f", &p, &format!("{home}/bytes.bin")])).await.unwrap();

        // Under sudo into a root-only directory.
        let dir = format!("/root/harness-upload-test-{}", std::process::id());
        s.run_ok(&RemoteCommand::new(["install", "-d", "-m", "0700", &dir]).sudo()).await.unwrap();
        let p = format!("{dir}/conf file");
        s.upload(b"root-owned\n", &p, 0o644, true).await.unwrap();
        let st = s.run_ok(&RemoteCommand::new(["stat", "-c", "%a %U", &p]).sudo()).await.unwrap().stdout_str();
        assert_eq!(st.trim(), "644 root");
        // Without sudo the same target is refused, and nothing is left behind.
        let err = s.upload(b"x", &p, 0o644, false).await.unwrap_err();
        assert!(matches!(err, SshError::CommandFailed { .. }), "{err}");
        let content = s.run_ok(&RemoteCommand::new(["cat", &p]).sudo()).await.unwrap().stdout_str();
        assert_eq!(content, "root-owned\n");
        s.run_ok(&RemoteCommand::new(["rm", "-rf", &dir]).sudo()).await.unwrap();
    });
}

/// A command that outlives its timeout is killed on the remote host, with and without sudo.
#[test]
fn timed_out_command_is_killed_remotely() {
    let lab = lab();
    rt().block_on(async {
        let s = connect(&lab.node(1)).await;
        for sudo in [false, true] {
            let pidfile = format!("/tmp/harness-kill-test-{}-{sudo}", std::process::id());
            // A shell with a child: the whole process group must go.
            let mut cmd = RemoteCommand::sh(format!("echo $$ > {pidfile}; sleep 300 & echo $! >> {pidfile}; wait"))
                .timeout(Duration::from_millis(1500));
            cmd.sudo = sudo;
            let t = Instant::now();
            let err = s.run(&cmd).await.unwrap_err();
            assert!(matches!(err, SshError::CommandTimeout { .. }), "{err}");
            assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
            let pids = s.run_ok(&RemoteCommand::new(["cat", &pidfile])).await.unwrap().stdout_str();
            let pids: Vec<&str> = pids.split_whitespace().collect();
            assert_eq!(pids.len(), 2);
            for pid in &pids {
                // A killed orphan stays a zombie until init reaps it, which can take seconds under
                // load; a zombie has exited (kill -0 would still succeed on it).
                let gone = RemoteCommand::sh(format!(
                    "for i in $(seq 50); do s=$(sed -n 's/^State:[[:space:]]*\\(.\\).*/\\1/p' /proc/{pid}/status 2>/dev/null); \
                     [ -z \"$s\" ] || [ \"$s\" = Z ] && exit 0; sleep 0.1; done; exit 1"
                ));
                let out = s.run(&gone.sudo()).await.unwrap();
                assert!(out.success(), "pid {pid} still alive (sudo={sudo})");
            }
            s.run_ok(&RemoteCommand::new(["rm", "-f", &pidfile]).sudo()).await.unwrap();
        }
    });
}

#[test]
fn spawn_streams_and_kill_stops_the_remote_process() {
    let lab = lab();
    rt().block_on(async {
        let s = connect(&lab.node(1)).await;
        // Interactive: write, read the echo, close stdin, get the exit status.
        let mut child = s.spawn(&RemoteCommand::new(["cat"])).await.unwrap();
        child.write_stdin(b"hello\n").await.unwrap();
        let mut got = Vec::new();
        while got != b"hello\n" {
            match child.next().await.unwrap() {
                ChildEvent::Stdout(b) => got.extend_from_slice(&b),
                e => panic!("unexpected {e:?}"),
            }
        }
        child.close_stdin().await.unwrap();
        match child.next().await.unwrap() {
            ChildEvent::Exit(st) => assert_eq!(st, Some(0)),
            e => panic!("unexpected {e:?}"),
        }
        assert!(child.next().await.is_none());

        // A follower under sudo, killed remotely.
        let f = format!("/tmp/harness-spawn-test-{}", std::process::id());
        s.run_ok(&RemoteCommand::new(["sh", "-c", "echo first > \"$1\"", "sh", &f])).await.unwrap();
        let mut tail =
            s.spawn(&RemoteCommand::new(["tail", "-n", "+1", "-F", &f]).sudo().single_process()).await.unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"first\n") {
            match tokio::time::timeout(Duration::from_secs(5), tail.next()).await.unwrap().unwrap() {
                ChildEvent::Stdout(b) => got.extend_from_slice(&b),
                ChildEvent::Stderr(_) => {}
                e => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(got, b"first\n");
        let pid = tail.pid().expect("pid known").to_string();
        tail.kill().await.unwrap();
        let alive = s.run(&RemoteCommand::new(["kill", "-0", &pid]).sudo()).await.unwrap();
        assert!(!alive.success(), "tail {pid} survived kill()");
        // The SSH `signal` request did it (sudo relays the TERM): no kill script was needed.
        assert!(tail.killed_by_signal_request(), "kill() fell back to the kill script");
        s.run_ok(&RemoteCommand::new(["rm", "-f", &f])).await.unwrap();
    });
}

#[test]
fn proxy_jump_through_another_node() {
    let lab = lab();
    rt().block_on(async {
        let mut t = lab.node(2);
        t.proxy_jump = Some(format!("{}@127.0.0.1:{}", lab.users[0], lab.ports[0]));
        let s = connect(&t).await;
        let out = s.run_ok(&RemoteCommand::new(["id", "-un"])).await.unwrap();
        assert_eq!(out.stdout_str().trim(), lab.users[1]);
        // The jump host is really used: a target port only "reachable" through it fails there.
        let mut bad = t.clone();
        bad.port = Some(2299);
        let err = Session::connect(&bad, &opts()).await.err().unwrap();
        assert!(err.to_string().contains("jump host"), "{err}");
        // A jump host that refuses us is named in the error.
        let mut badjump = lab.node(2);
        badjump.proxy_jump = Some(format!("nobody@127.0.0.1:{}", lab.ports[0]));
        let err = Session::connect(&badjump, &opts()).await.err().unwrap();
        assert!(matches!(err, SshError::Auth { .. }) && err.to_string().contains("jump host"), "{err}");
    });
}

#[test]
fn concurrent_commands_share_one_connection() {
    let lab = lab();
    rt().block_on(async {
        let s = connect(&lab.node(1)).await;
        let t = Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { s.run_ok(&RemoteCommand::sh(format!("sleep 1; echo {i}"))).await })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.unwrap().unwrap().stdout_str(), format!("{i}\n"));
        }
        assert!(t.elapsed() < Duration::from_secs(3), "8 × sleep 1 took {:?}", t.elapsed());
        // More tasks than channel slots: queued, not refused by sshd's MaxSessions.
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { s.run_ok(&RemoteCommand::new(["echo", &i.to_string()])).await })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.unwrap().unwrap().stdout_str(), format!("{i}\n"));
        }
    });
}

/// Killing the server side of our connection: reported as Disconnected; an idempotent command
/// reconnects once and succeeds.
#[test]
fn dropped_connection_is_reported_and_idempotent_commands_reconnect() {
    let lab = lab();
    rt().block_on(async {
        let s = connect(&lab.node(1)).await;
        for idempotent in [false, true] {
            // The login shell's parent is this connection's sshd process.
            let ppid = s.run_ok(&RemoteCommand::sh("ps -o ppid= -p $PPID")).await.unwrap().stdout_str();
            let sshd_pid: i32 = ppid.trim().parse().unwrap();
            let comm = std::fs::read_to_string(format!("/proc/{sshd_pid}/cmdline")).unwrap();
            assert!(comm.starts_with("sshd: "), "{comm}");
            unsafe { libc::kill(sshd_pid, libc::SIGKILL) };
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut cmd = RemoteCommand::new(["echo", "again"]);
            cmd.idempotent = idempotent;
            match s.run(&cmd).await {
                Ok(out) => {
                    assert!(idempotent, "non-idempotent command must not be retried");
                    assert_eq!(out.stdout_str(), "again\n");
                }
                Err(e) => {
                    assert!(!idempotent, "idempotent command must reconnect: {e}");
                    assert!(matches!(e, SshError::Disconnected { .. }), "{e}");
                    // Reconnect for the next round.
                    s.run(&RemoteCommand::new(["true"]).idempotent()).await.unwrap();
                }
            }
        }
    });
}

/// `harness check`'s probe against a real node: one round trip, facts match the local host
/// (the lab's sshd runs on this machine), and the fit verdicts follow the VMs asked for.
#[test]
fn check_probe_against_lab_node() {
    use harness::facts::Kvm;
    use harness::plan::{AccelChoice, PlanOptions};
    use harness::remote::check::{self as probe, Status};
    use harness::remote::facts::parse_cpu_list;
    let lab = lab();
    let node = common::lab::topo_node(lab, 1);
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let online = parse_cpu_list(&online).unwrap();
    let t = harness::templates::Templates::embedded();
    let po = PlanOptions { run_id: "r".into(), templates: &t, only_vms: &[] };
    let last = *online.last().unwrap();
    rt().block_on(async {
        let fits = common::lab::vm("DUT1", 1, 256, vec![0]);
        let offline = common::lab::vm("DUT1", 2, 256, vec![last + 1]);
        let both = harness::plan::fixture::topology(vec![node.clone()], vec![fits.clone(), offline]);
        let r = probe::check_node(&lab.node(1), &opts(), &both, &node, &po).await;
        assert!(r.reachable, "{:?}", r.error);
        let f = r.facts.as_ref().unwrap();
        assert!(f.sudo.as_ref().unwrap().ok);
        assert_eq!(f.cpus_online.as_ref(), Some(&online));
        let version = f.qemu.as_ref().and_then(|q| q.version.as_deref()).unwrap_or("");
        assert!(version.starts_with("QEMU emulator version"), "{f:?}");
        let dev = std::path::Path::new("/dev/kvm").exists();
        match &f.kvm {
            Some(Kvm::Absent) => assert!(!dev),
            Some(Kvm::Usable | Kvm::Broken(_)) => assert!(dev),
            k => panic!("with sudo and qemu the KVM probe must run: {k:?}"),
        }
        let want = if f.kvm == Some(Kvm::Usable) { AccelChoice::Kvm } else { AccelChoice::Tcg };
        assert_eq!(r.accel, Some(want));
        assert!(f.hugepages.as_ref().unwrap().pools.contains_key(&2048), "{f:?}");
        let item = |n: &str| r.items.iter().find(|i| i.name == n).unwrap_or_else(|| panic!("no item {n}"));
        assert_eq!(item("cpus").status, Status::Fail, "CPU {} is not online", last + 1);
        assert_eq!(item("socat").status, Status::Ok);
        assert!(r.failed());
        let one = harness::plan::fixture::topology(vec![node.clone()], vec![fits]);
        let r = probe::check_node(&lab.node(1), &opts(), &one, &node, &po).await;
        assert_eq!(r.items.iter().find(|i| i.name == "cpus").unwrap().status, Status::Ok);

        // Unreachable: reported, not an error.
        let mut t = lab.node(1);
        t.port = Some(2299);
        let r = probe::check_node(&t, &opts(), &one, &node, &po).await;
        assert!(!r.reachable && r.error.as_deref().unwrap_or("").contains("connect failed"), "{:?}", r.error);
    });
}

/// Hashed known_hosts entries (`ssh-keygen -H`) are honoured.
#[test]
fn hashed_known_hosts_entries() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("known_hosts");
    std::fs::copy(&lab.known_hosts, &kh).unwrap();
    let st = std::process::Command::new("ssh-keygen").arg("-q").arg("-H").arg("-f").arg(&kh).output().unwrap();
    assert!(st.status.success(), "{st:?}");
    let text = std::fs::read_to_string(&kh).unwrap();
    assert!(text.lines().all(|l| l.starts_with("|1|")), "{text}");
    let mut t = lab.node(2);
    t.known_hosts = Some(kh);
    rt().block_on(async {
        let s = connect(&t).await;
        assert!(s.run_ok(&RemoteCommand::new(["true"])).await.is_ok());
    });
}

/// `~/.ssh/config`-style file: HostName, Port, User, IdentityFile, UserKnownHostsFile and
/// ProxyJump of a `Host` alias are honoured; the topology names only the alias.
#[test]
fn ssh_config_alias_with_proxy_jump() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config");
    let (t, o) = dut2_alias_via_jump(lab, &cfg, "");
    rt().block_on(async {
        let s = Session::connect(&t, &o).await.unwrap();
        assert_eq!(s.addr(), format!("127.0.0.1:{}", lab.ports[1]));
        let out = s.run_ok(&RemoteCommand::new(["id", "-un"])).await.unwrap();
        assert_eq!(out.stdout_str().trim(), lab.users[1]);
    });
}

/// `cfg`: an ssh config whose `Host dut2-alias` reaches lab node 2 through node 1 as its jump
/// host, with the lab's key and known_hosts (and `extra` lines); the target naming that alias
/// and options reading that config.
fn dut2_alias_via_jump(lab: &Lab, cfg: &Path, extra: &str) -> (SshTarget, ConnectOptions) {
    std::fs::write(
        cfg,
        format!(
            "Host dut2-alias\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n  UserKnownHostsFile {}\n{extra}  ProxyJump {}@127.0.0.1:{}\n",
            lab.ports[1],
            lab.users[1],
            lab.key.display(),
            lab.known_hosts.display(),
            lab.users[0],
            lab.ports[0]
        ),
    )
    .unwrap();
    let t = SshTarget {
        name: "DUT2".into(),
        host: "dut2-alias".into(),
        port: None,
        user: None,
        auth: vec![],
        proxy_jump: None,
        known_hosts: None,
        inherited_known_hosts: Vec::new(),
        accept_new_host_key: false,
    };
    let mut o = opts();
    o.ssh_config = Some(cfg.to_path_buf());
    (t, o)
}

/// A jump host was checked against only the first file of its node's known_hosts list: a
/// bastion key revoked (or known as another key) in the system's files, or in a later
/// `UserKnownHostsFile`, was accepted. It is judged against the node's whole list now.
#[test]
fn regression_a_jump_host_key_revoked_in_the_system_files_is_refused() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let (cfg, global) = (dir.path().join("config"), dir.path().join("ssh_known_hosts"));
    let bastion = format!("[127.0.0.1]:{}", lab.ports[0]);
    let line = std::fs::read_to_string(&lab.known_hosts)
        .unwrap()
        .lines()
        .find(|l| l.starts_with(&format!("{bastion} ")))
        .expect("the bastion's key in the lab's known_hosts")
        .to_string();
    std::fs::write(&global, format!("@revoked {line}\n")).unwrap();
    let (t, o) = dut2_alias_via_jump(lab, &cfg, &format!("  GlobalKnownHostsFile {}\n", global.display()));
    rt().block_on(async {
        let e = Session::connect(&t, &o).await.err().expect("a revoked bastion key was accepted");
        assert!(e.to_string().contains("revoked"), "{e}");
    });
}

/// Nodes behind a bastion that accepts TCP but never speaks were connected one after another,
/// each waiting out the handshake timeout again: N nodes took N × the timeout (128 nodes behind
/// a dead bastion, minutes). The nodes queued behind the first attempt take its answer now.
#[test]
fn regression_nodes_behind_a_silent_jump_host_fail_together_not_one_by_one() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and holds every connection, says nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    let lab = lab();
    let mut o = opts();
    o.auth_timeout = Duration::from_secs(1);
    let targets: Vec<SshTarget> = (0..6)
        .map(|i| {
            let mut t = lab.node(1);
            t.name = format!("DUT{i}");
            t.proxy_jump = Some(format!("nobody@127.0.0.1:{port}"));
            t
        })
        .collect();
    let t0 = std::time::Instant::now();
    let results = rt().block_on(futures::future::join_all(targets.iter().map(|t| Session::connect(t, &o))));
    let took = t0.elapsed();
    assert!(results.iter().all(|r| r.is_err()), "a node behind a silent bastion connected");
    assert!(took < Duration::from_secs(4), "6 nodes took {took:?}: one handshake timeout after another");
}

/// Regression: `Host *` + `ProxyJump X` made the connection to X jump through X again, until
/// the stack overflowed (SIGABRT in every command). The jump host's own ProxyJump is ignored.
#[test]
fn regression_proxy_jump_host_star_recursion() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config");
    std::fs::write(
        &cfg,
        format!(
            "Host *\n  IdentityFile {}\n  UserKnownHostsFile {}\n  ProxyJump {}@127.0.0.1:{}\n",
            lab.key.display(),
            lab.known_hosts.display(),
            lab.users[0],
            lab.ports[0]
        ),
    )
    .unwrap();
    let mut t = lab.node(2);
    t.known_hosts = None;
    let mut o = opts();
    o.ssh_config = Some(cfg);
    rt().block_on(async {
        let s = Session::connect(&t, &o).await.unwrap();
        let out = s.run_ok(&RemoteCommand::new(["id", "-un"])).await.unwrap();
        assert_eq!(out.stdout_str().trim(), lab.users[1]);
    });
}

/// Dropping a running child kills it remotely and frees its session: 25 dropped children (more
/// than the lab sshd's MaxSessions 20) leave no process behind and the connection keeps working.
#[test]
fn dropped_children_are_killed_and_free_their_sessions() {
    let lab = lab();
    rt().block_on(async {
        let s = connect(&lab.node(1)).await;
        for _ in 0..25 {
            // Once it runs (its pid line arrived), drop it.
            let (child, pid) = spawned(&s, &["sleep", "3013"]).await;
            assert!(pid > 1);
            drop(child);
        }
        assert!(gone_within_5s(&s, "sleep 301[3]").await, "dropped children still running");
        assert_eq!(s.run_ok(&RemoteCommand::new(["echo", "alive"])).await.unwrap().stdout_str(), "alive\n");
    });
}

/// CSIT's `priv_key:` carries the PEM text itself; it authenticates like a key file.
#[test]
fn csit_priv_key_pem_text_authenticates() {
    let lab = lab();
    let pem = std::fs::read_to_string(common::lab::lab_dir().join("ssh/id_ed25519")).unwrap();
    let mut t = lab.node(1);
    t.auth = vec![Auth::PrivateKeyPem(pem)];
    rt().block_on(async {
        let s = connect(&t).await;
        let out = s.run(&RemoteCommand::new(["true"])).await.unwrap();
        assert!(out.success());
        s.close().await;
        // A garbled PEM is reported as unreadable, not as a crash.
        let mut bad = lab.node(1);
        bad.auth = vec![Auth::PrivateKeyPem("-----BEGIN OPENSSH PRIVATE KEY-----\nnope\n".into())];
        let mut o = opts();
        o.agent_socket = None;
        match Session::connect(&bad, &o).await {
            Err(SshError::Auth { message, .. }) => assert!(message.contains("priv_key"), "{message}"),
            Ok(_) => panic!("garbled key must not authenticate"),
            Err(e) => panic!("unexpected {e}"),
        }
    });
}

/// A password-only server that offers keyboard-interactive and not "password" (PAM-style): the
/// password is answered at the prompt; a wrong one is an auth error naming the node.
#[test]
fn keyboard_interactive_password_server() {
    let lab = lab();
    rt().block_on(async {
        let s = connect(&lab.kbd_node()).await;
        let out = s.run(&RemoteCommand::new(["id", "-un"])).await.unwrap();
        assert_eq!(out.stdout_str().trim(), lab.kbd_user);
        s.close().await;
        let mut bad = lab.kbd_node();
        bad.auth = vec![Auth::Password("wrong".into())];
        match Session::connect(&bad, &opts()).await {
            Err(SshError::Auth { node, message, .. }) => {
                assert_eq!(node, "DUTKBD");
                assert!(message.contains("keyboard-interactive"), "{message}");
            }
            Ok(_) => panic!("a wrong password must not log in"),
            Err(e) => panic!("unexpected {e}"),
        }
    });
}

/// The host lock's holder was reniced to -20, but where the kernel groups tasks by session
/// (autogroup, Debian's default) nice only ranks tasks within one session: every daemonized
/// QEMU is a session of its own, and the holder, in sshd's session, got 1/(QEMUs + 1) of the CPU
/// (32 lab nodes × 4 tiny VMs: the holds summed to 7.1 s). Its session's autogroup is raised
/// now; this checks both, as the script sees them through sshd and sudo.
#[test]
fn regression_lock_holder_renice_was_void_across_session_autogroups() {
    use harness::remote::lock::{LOCK_DIR, locked_script};
    let lab = lab();
    let scratch = tempfile::tempdir().unwrap();
    let probe = "cat /proc/$$/autogroup 2>/dev/null || echo 'no autogroup'; echo \"nice $(ps -o ni= -p $$)\"\n";
    let script =
        locked_script(probe, "ssh.rs test", Duration::from_secs(5)).replace(LOCK_DIR, scratch.path().to_str().unwrap());
    let has_autogroup = std::path::Path::new("/proc/self/autogroup").exists();
    rt().block_on(async {
        let s = connect(&lab.node(1)).await;
        let out = s.run_ok(&RemoteCommand::sh(script).sudo()).await.unwrap().stdout_str();
        assert!(out.lines().any(|l| l.split_whitespace().eq(["nice", "-20"])), "process nice: {out}");
        if has_autogroup {
            // "/autogroup-N nice -20"
            assert!(out.lines().any(|l| l.starts_with("/autogroup-") && l.ends_with(" nice -20")), "autogroup: {out}");
        } else {
            eprintln!("kernel without autogroup: only the process nice is checked");
        }
        s.close().await;
    });
}

/// A root script with its arguments past 256 KiB: sshd dropped the connection ("Bad packet
/// length", a node with 40 VMs lost it at `up`), and past 128 KiB the login shell could not
/// be started ("Argument list too long", `down` of ~30 VMs on a node). Such a script now goes
/// on stdin; it runs as root with its arguments intact, and the connection lives on.
#[test]
fn regression_a_script_longer_than_an_ssh_packet_runs_with_its_arguments() {
    let lab = lab();
    rt().block_on(async {
        let s = connect(&lab.node(1)).await;
        let pad = format!("# {}\n", "x".repeat(1000)).repeat(300);
        let script = format!("{pad}echo \"$(id -un) $0 $# $1 ${{#2}}\"");
        let big = "y".repeat(120_000);
        for sudo in [false, true] {
            let mut cmd = RemoteCommand::new(["sh", "-c", &script, "name", "it's $HOME", &big]);
            if sudo {
                cmd = cmd.sudo();
            }
            let out = s.run(&cmd).await.unwrap();
            assert!(out.success(), "{}", out.stderr_str());
            let user = if sudo { "root" } else { lab.users[0].as_str() };
            assert_eq!(out.stdout_str(), format!("{user} name 2 it's $HOME 120000\n"));
        }
        // A timeout still kills it: the pid reported is the script's own shell.
        let slow = format!("{pad}sleep 37.125");
        let t = Instant::now();
        let err =
            s.run(&RemoteCommand::new(["sh", "-c", &slow]).sudo().timeout(Duration::from_secs(1))).await.unwrap_err();
        assert!(matches!(err, SshError::CommandTimeout { .. }), "{err}");
        assert!(t.elapsed() < Duration::from_secs(15));
        let left = s.run(&RemoteCommand::sh("pgrep -f '^sleep 37.125$' || true")).await.unwrap();
        assert!(s.ping().await.is_ok());
        assert_eq!(left.stdout_str(), "", "the slow script's sleep still runs");
        s.close().await;
    });
}

/// A node's `accept_new_host_key: true` was passed on to its jump host: an unknown (possibly
/// spoofed) bastion key was recorded without the user relaxing checks for the bastion. Now
/// the jump host's unknown key is refused unless asked for it (`--accept-new-host-keys`).
#[test]
fn regression_a_nodes_accept_new_host_key_does_not_extend_to_its_jump_host() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("known_hosts");
    let jump_port = lab.ports[0];
    rt().block_on(async {
        // Learn only the target's key (node 2), through a direct connection.
        let mut direct = lab.node(2);
        direct.known_hosts = Some(kh.clone());
        direct.accept_new_host_key = true;
        Session::connect(&direct, &opts()).await.unwrap().close().await;
        let mut t = direct.clone();
        t.proxy_jump = Some(format!("{}@127.0.0.1:{jump_port}", lab.users[0]));
        let err = Session::connect(&t, &opts()).await.err().expect("the jump host's unknown key was accepted");
        assert!(matches!(err, SshError::HostKeyUnknown { .. }), "{err}");
        assert!(err.to_string().contains("jump host"), "{err}");
        let recorded = std::fs::read_to_string(&kh).unwrap();
        assert!(!recorded.contains(&format!("[127.0.0.1]:{jump_port} ")), "jump host key recorded: {recorded}");
        // Asked for explicitly, it is accepted and recorded.
        let mut o = opts();
        o.accept_new_host_keys = true;
        Session::connect(&t, &o).await.unwrap().close().await;
        assert!(std::fs::read_to_string(&kh).unwrap().contains(&format!("[127.0.0.1]:{jump_port} ")));
    });
}

/// A dropped child gave its channel slot back at once, while its channel stayed open until the
/// kill (one more channel, which took no slot) was done: twelve followers dropped and twelve
/// new commands made up to 36 sessions, past sshd's MaxSessions (20 here, 10 by default), and
/// commands or kills were refused. The slot is now held until the channel is closed, and kill
/// channels have a budget of their own (2: the room above the default 8 slots).
#[test]
fn regression_dropped_children_keep_their_channel_slot_until_killed() {
    let lab = lab();
    rt().block_on(async {
        let mut o = opts();
        o.max_channels = 12; // plus 2 kill channels: 14, within the lab sshd's MaxSessions 20
        let s = Session::connect(&lab.node(1), &o).await.unwrap();
        let mut children = Vec::new();
        for _ in 0..12 {
            children.push(spawned(&s, &["sleep", "3017"]).await.0);
        }
        drop(children);
        let tasks: Vec<_> = (0..12)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { s.run_ok(&RemoteCommand::sh(format!("sleep 0.5; echo {i}"))).await })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let out = task.await.unwrap().unwrap_or_else(|e| panic!("command {i} refused: {e}"));
            assert_eq!(out.stdout_str(), format!("{i}\n"));
        }
        assert!(gone_within_5s(&s, "sleep 301[7]").await, "dropped children still running");
    });
}

/// A login user whose `~/.bashrc` prints (no interactive guard; bash sources it for commands
/// sshd starts): its first line was taken as the wrapper's pid line, so the command's output
/// began with the rc text and the real pid, and every remote kill (timeouts, Ctrl-C, dropped
/// followers) silently did nothing. The pid line now carries a marker; rc lines are dropped.
#[test]
fn regression_a_chatty_bashrc_neither_pollutes_output_nor_disables_kills() {
    let lab = lab();
    let t = lab.node(2);
    let home = lab.dir.join("home").join(&lab.users[1]);
    let rc = home.join(".bashrc");
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    std::fs::write(&rc, "echo rc-noise from bashrc\necho 4242\n").unwrap();
    let _rc = Remove(rc);
    rt().block_on(async {
        let s = connect(&t).await;
        let out = s.run_ok(&RemoteCommand::new(["echo", "hi"])).await.unwrap();
        assert_eq!(out.stdout_str(), "hi\n");
        let out = s.run_ok(&RemoteCommand::sh("echo root script").sudo()).await.unwrap();
        assert_eq!(out.stdout_str(), "root script\n");
        let (mut child, pid) = spawned(&s, &["sleep", "3019"]).await;
        assert_ne!(pid, 4242, "the rc's number was taken as the pid");
        assert!(std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep\0")), "pid {pid}");
        child.kill().await.unwrap();
        assert!(gone_within_5s(&s, "sleep 301[9]").await, "the killed child still runs");
    });
}
