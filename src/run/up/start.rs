//! Stage 4 (outside the host lock, the node's hugepages reserved): launch every QEMU of the node
//! at once, under one `sudo`, and read back each pid as it comes. A VM is recorded as launched once its QEMU has started;
//! cleanup does not depend on that record (it stops every planned VM of a directory this run
//! claimed), so a start cut short is still stopped.

use std::time::{Duration, Instant};

use super::node::NodeCtx;
use super::tracker::Launched;
use super::{UpError, VmState, fail};
use crate::plan::{NodePlan, VmPlan};
use crate::report::Phase;
use crate::ssh::{ChildEvent, RemoteCommand, Session};

/// Start every VM of the node; each VM's pid goes to `started` the moment its QEMU is up, so
/// its readiness wait begins while the node's other QEMUs are still starting (a small VM is not
/// held back by a big one's preallocation). The first failed start is the error.
pub(super) async fn all(
    ctx: &NodeCtx,
    session: &Session,
    np: &NodePlan,
    started: tokio::sync::mpsc::UnboundedSender<(VmPlan, u32)>,
) -> Result<(), UpError> {
    for v in &np.vms {
        ctx.events.for_vm(&v.name).phase(Phase::Starting);
        ctx.tracker.set_state(&np.name, &v.name, VmState::Starting);
    }
    // The manifest (with the hugepages this run changed) goes in the same round trip, written
    // before any QEMU starts: `down` finds whatever a start cut short.
    let (manifest, manifest_path) = super::record::manifest_file(ctx, np)?;
    let t = Instant::now();
    let results = start_batch(session, &np.vms, (&manifest, &manifest_path), |v, res| {
        if let Ok(pid) = res {
            // The receiver is gone only when the readiness side has already failed.
            let _ = started.send((v.clone(), *pid));
            ctx.tracker.node(&np.name, |n| {
                n.launched.push(Launched {
                    vm: v.name.clone(),
                    pidfile: v.paths.pidfile.clone(),
                    qmp: v.paths.qmp.clone(),
                    run_dir: v.paths.run_dir.clone(),
                })
            });
        }
        ctx.tracker.timing(&np.name, &v.name, "start", t.elapsed().as_secs_f64());
    })
    .await?;
    let mut first_err = None;
    for (vm, e) in results.into_iter().filter_map(|(vm, r)| Some((vm, r.err()?))) {
        let msg = e.to_string();
        ctx.tracker.vm(&np.name, &vm, |r| {
            r.state = VmState::Failed;
            r.error = Some(msg);
            r.failure = Some(e.failure_kind());
        });
        ctx.events.for_vm(&vm).phase(Phase::Failed);
        first_err.get_or_insert(e.context(&vm));
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Mark the lines [`start_script`] prints: `ok I PID` or `fail I STATUS BASE64-STDERR`.
const START_OK: &str = "ok";
const START_FAIL: &str = "fail";

/// Every QEMU of the node under ONE `sudo` (one channel, one sudo and one shell on the host
/// instead of one of each per VM), all started at once. Arguments: the manifest's path and size
/// (its content on stdin, written atomically first, and only whole: a connection lost mid-way
/// ends `cat` with EOF, and no QEMU starts unless the manifest is there), then per
/// VM, the argv length, the pidfile, then the planned argv unchanged. Each VM, in the
/// background: unless a stop has fenced its directory (`down` or cleanup got there first),
/// `qemu … -daemonize` (its stderr kept), the started mark for hugepage
/// reservations (crate::remote::reserve), then one line with the pid read from the pidfile, as
/// soon as that VM is done. A failure's QEMU stderr is cut to its last 2 KiB: the VMs' lines
/// share one pipe, and only a line under PIPE_BUF (4 KiB) is written whole.
fn start_script() -> String {
    format!(
        r#"m=$1; size=$2; shift 2
# A start that reaches the host after cleanup released the node (Ctrl-C before its pid line
# came) finds its VM directories removed: nothing is written, not even the manifest (a run
# directory kept by a sibling node would otherwise hold a run that never started). A VM only
# fenced by a stop is refused below, on its own.
k=0; next=0; for a in "$@"; do
  [ $k -eq $next ] && n=$a
  if [ $k -eq $((next + 1)) ]; then
    d=${{a%/*}}; if [ ! -d "$d" ]; then echo "stopped before QEMU was launched ($d is gone)" >&2; exit 125; fi
    next=$((next + 2 + n))
  fi
  k=$((k + 1))
done
(umask 077; cat > "$m.harness-tmp" && [ "$(wc -c < "$m.harness-tmp")" -eq "$size" ] && chmod 644 "$m.harness-tmp" && mv -f "$m.harness-tmp" "$m") || {{ rc=$?; rm -f "$m.harness-tmp"; echo "writing the manifest $m failed (cut short?)" >&2; exit $(( rc ? rc : 1 )); }}
take() {{ n=$1; shift; t=$#; k=0; for a in "$@"; do [ $k -ge $n ] && break; set -- "$@" "$a"; k=$((k + 1)); done; shift $t; "$@"; }}
start() {{
  i=$1; pf=$2; shift 2
  if [ -e "${{pf%/*}}/{fence}" ]; then echo "{fail} $i 125 $(printf %s 'stopped before QEMU was launched' | base64 -w0)"; return; fi
  if e=$(take "$@" 2>&1 >/dev/null); then
    printf '' 2>/dev/null > "${{pf%/*}}/{mark}"; read -r p < "$pf"; echo "{ok} $i $p"
  else
    rc=$?; echo "{fail} $i $rc $(printf %s "$e" | tail -c 2048 | base64 -w0)"
  fi
}}
i=0
while [ $# -ge 2 ]; do
  n=$1; pf=$2; shift 2
  start $i "$pf" "$n" "$@" &
  shift "$n"; i=$((i + 1))
done
wait"#,
        mark = crate::remote::reserve::STARTED_MARK,
        fence = crate::remote::process::STOPPING_FENCE,
        ok = START_OK,
        fail = START_FAIL,
    )
}

/// Start `vms` with [`start_script`] and wait for each one's line, each VM within its own
/// `start_timeout` (QEMU does not daemonize while a vhost-user `server: true` socket waits for
/// its client: such a VM is stopped on expiry, the others go on). `done` sees each VM's result as
/// it arrives. An error of the connection itself fails the node.
async fn start_batch(
    session: &Session,
    vms: &[VmPlan],
    (manifest, manifest_path): (&[u8], &str),
    mut done: impl FnMut(&VmPlan, &Result<u32, UpError>),
) -> Result<Vec<(String, Result<u32, UpError>)>, UpError> {
    if vms.is_empty() {
        return Ok(Vec::new());
    }
    let mut argv = vec![
        "sh".to_string(),
        "-c".into(),
        start_script(),
        "sh".into(),
        manifest_path.to_string(),
        manifest.len().to_string(),
    ];
    for v in vms {
        argv.push(v.argv.len().to_string());
        argv.push(v.paths.pidfile.clone());
        argv.extend(v.argv.iter().cloned());
    }
    let longest = vms.iter().map(|v| v.start_timeout).max().unwrap_or_default();
    let started = tokio::time::Instant::now();
    let cmd = RemoteCommand::new(argv).sudo().stdin(manifest.to_vec()).timeout(longest + Duration::from_secs(30));
    let mut child = session.spawn(&cmd).await?;
    let mut results: Vec<Option<Result<u32, UpError>>> = vms.iter().map(|_| None).collect();
    let (mut line, mut stderr) = (Vec::new(), Vec::new());
    let mut exited = false;
    while !exited {
        // The nearest deadline of a VM still starting; none left: all are done.
        let Some((next, deadline)) = vms
            .iter()
            .enumerate()
            .filter(|(i, _)| results[*i].is_none())
            .map(|(i, v)| (i, started + v.start_timeout))
            .min_by_key(|(_, d)| *d)
        else {
            break;
        };
        let Ok(ev) = tokio::time::timeout_at(deadline, child.next()).await else {
            kill_undaemonized(session, &vms[next]).await;
            let r = Err(start_timed_out(&vms[next], vms[next].start_timeout));
            done(&vms[next], &r);
            results[next] = Some(r);
            continue;
        };
        match ev {
            Some(ChildEvent::Stdout(b)) => {
                line.extend_from_slice(&b);
                while let Some(nl) = line.iter().position(|&c| c == b'\n') {
                    let l: Vec<u8> = line.drain(..=nl).collect();
                    if let Some((i, r)) = parse_start_line(&String::from_utf8_lossy(&l), vms)
                        && results[i].is_none()
                    {
                        done(&vms[i], &r);
                        results[i] = Some(r);
                    }
                }
            }
            Some(ChildEvent::Stderr(b)) => stderr.extend_from_slice(&b),
            Some(ChildEvent::Exit(_)) | None => exited = true,
        }
    }
    // Every VM has its result: the script ends right after the last line (killing it would
    // cost a kill script). Only a start still hanging after its VM timed out needs the kill.
    let ends = tokio::time::Instant::now() + Duration::from_secs(5);
    while !exited {
        match tokio::time::timeout_at(ends, child.next()).await {
            Ok(Some(ChildEvent::Stderr(b))) => stderr.extend_from_slice(&b),
            Ok(Some(ChildEvent::Exit(_)) | None) => exited = true,
            Ok(Some(ChildEvent::Stdout(_))) => {}
            Err(_) => {
                let _ = child.kill().await;
                break;
            }
        }
    }
    let why = String::from_utf8_lossy(&stderr).trim().to_string();
    // A script cut short may have lost its connection (the node is then lost, not its QEMUs
    // failed): the channel's end can arrive before the connection's, so ask.
    let lost = match results.iter().any(Option::is_none) {
        true => match session.run(&RemoteCommand::new(["true"]).timeout(Duration::from_secs(10))).await {
            Err(e) if e.is_connection_lost() => Some(e.to_string()),
            _ => None,
        },
        false => None,
    };
    Ok(vms
        .iter()
        .zip(results)
        .map(|(v, r)| {
            let r = r.unwrap_or_else(|| {
                let r = Err(match &lost {
                    Some(e) => UpError::Lost(format!("its start was cut short: {e}")),
                    None => fail(format!("the start script ended without a result for this VM: {why}")),
                });
                done(v, &r);
                r
            });
            (v.name.clone(), r)
        })
        .collect())
}

/// One line of [`start_script`]'s output: which VM, and its pid or why its QEMU failed.
fn parse_start_line(line: &str, vms: &[VmPlan]) -> Option<(usize, Result<u32, UpError>)> {
    use base64::Engine as _;
    let mut f = line.split_whitespace();
    let (kind, i) = (f.next()?, f.next()?.parse::<usize>().ok()?);
    let v = vms.get(i)?;
    let res = match kind {
        START_OK => {
            let pid = f.next().unwrap_or("");
            pid.parse::<u32>().map_err(|_| fail(format!("unreadable pidfile {}: {pid:?}", v.paths.pidfile)))
        }
        START_FAIL => {
            let rc = f.next().unwrap_or("?");
            let err = base64::engine::general_purpose::STANDARD.decode(f.next().unwrap_or("")).unwrap_or_default();
            Err(fail(format!("qemu failed to start (exit {rc}): {}", String::from_utf8_lossy(&err).trim())))
        }
        _ => return None,
    };
    Some((i, res))
}

/// A start past its `start_timeout`: QEMU, blocked in the vhost-user accept before its main
/// loop, does not act on a SIGTERM. SIGKILL the process that runs this VM's QEMU binary with
/// this VM's own pidfile path in its argv (nothing of anyone else's has it; the batch's shell,
/// whose arguments hold every VM's argv, is not a QEMU and lives on to report the other VMs);
/// it has no guest state yet that a graceful quit could save.
async fn kill_undaemonized(session: &Session, v: &VmPlan) {
    let script = format!(
        r#"pf={pf}; bin={bin}
{fns}qemu() {{ tr '\0' '\n' < /proc/$1/cmdline 2>/dev/null | {{ read -r a0 && [ "$a0" = "$bin" ]; }}; }}
carriers "$pf"; pids=; for p in $_cr; do qemu "$p" && pids="$pids $p"; done
[ -z "$pids" ] || kill -KILL $pids 2>/dev/null
i=0; while [ $i -lt 40 ]; do left=; for p in $pids; do alive "$p" && left=1; done; [ -z "$left" ] && break; sleep 0.05; i=$((i+1)); done
true"#,
        fns = crate::remote::process::ours_fns(),
        pf = crate::quote::quote(&v.paths.pidfile),
        bin = crate::quote::quote(v.argv.first().map(String::as_str).unwrap_or_default())
    );
    let _ = session.run(&RemoteCommand::sh(script).sudo().timeout(Duration::from_secs(10))).await;
}

/// Why a start command outlived `start_timeout`: a vhost-user server socket nobody connected
/// to is the usual reason, and the message says which.
fn start_timed_out(v: &VmPlan, after: Duration) -> UpError {
    let waiting: Vec<&str> =
        v.nics.iter().filter(|n| n.server == Some(true)).filter_map(|n| n.socket.as_deref()).collect();
    let secs = after.as_secs_f64();
    match waiting.first() {
        Some(sock) => fail(format!(
            "QEMU is waiting for a vhost-user client on {sock}: is the vswitch configured? \
             (not started after {secs}s, start_timeout; stopped)"
        )),
        None => fail(format!("QEMU did not start within {secs}s (start_timeout); stopped")),
    }
}

/// vhost-user `server: false` NICs: QEMU connects to the vswitch's socket at start and fails
/// late and obscurely if it is not there, so every such socket must exist beforehand.
pub(super) async fn check_client_sockets(session: &Session, np: &NodePlan) -> Result<(), UpError> {
    let client: Vec<(&str, &str)> = np
        .vms
        .iter()
        .flat_map(|v| v.nics.iter().map(move |n| (v.name.as_str(), n)))
        .filter(|(_, n)| n.server == Some(false))
        .filter_map(|(vm, n)| Some((vm, n.socket.as_deref()?)))
        .collect();
    if client.is_empty() {
        return Ok(());
    }
    let mut script = String::new();
    for (_, sock) in &client {
        script.push_str(&format!("[ -S {0} ] || echo {0}\n", crate::quote::quote(sock)));
    }
    let out = session.run_ok(&RemoteCommand::sh(script).sudo()).await?;
    let missing: Vec<String> = out.stdout_str().lines().map(str::to_string).collect();
    match client.iter().find(|(_, s)| missing.iter().any(|m| m == s)) {
        Some((vm, sock)) => Err(fail(format!(
            "{vm}: vhost-user socket {sock} does not exist (server: false: QEMU connects to the vswitch's \
             socket): start the vswitch first"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batch script run by a real `sh`: two "QEMUs" (shell commands standing in for them),
    /// one writing its pidfile, one failing with a message; each gets its own line, in its own
    /// slot, with the argv boundaries kept (an argument of the second is never the first's).
    #[test]
    fn start_script_reports_each_vm_by_its_index() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let (pf0, pf1, pf2) =
            (dir.path().join("a/qemu.pid"), dir.path().join("b/qemu.pid"), dir.path().join("c/qemu.pid"));
        for pf in [&pf0, &pf1, &pf2] {
            std::fs::create_dir_all(pf.parent().unwrap()).unwrap();
        }
        // A stop got to the third VM first: its QEMU must not be launched.
        std::fs::write(pf2.with_file_name(crate::remote::process::STOPPING_FENCE), b"").unwrap();
        let (pf0, pf1, pf2) = (pf0.to_str().unwrap(), pf1.to_str().unwrap(), pf2.to_str().unwrap());
        let ok_vm = ["sh", "-c", "echo 4242 > \"$0\"; echo chatter", pf0];
        let bad_vm = ["sh", "-c", "echo \"boom $0\" >&2; exit 3", "it's"];
        let fenced_vm = ["sh", "-c", "echo launched > \"$0\"", pf2];
        let manifest = dir.path().join("manifest-DUT1.json");
        let content = b"{\"run_id\": \"r\"}";
        let run_with = |manifest: &std::path::Path, sent: &[u8], size: usize| {
            let mut cmd = std::process::Command::new("sh");
            cmd.arg("-c").arg(start_script()).arg("sh").arg(manifest).arg(size.to_string());
            cmd.arg(ok_vm.len().to_string()).arg(pf0).args(ok_vm);
            cmd.arg(bad_vm.len().to_string()).arg(pf1).args(bad_vm);
            cmd.arg(fenced_vm.len().to_string()).arg(pf2).args(fenced_vm);
            output_with_stdin(cmd, sent)
        };
        let run = |manifest: &std::path::Path| run_with(manifest, content, content.len());
        let out = run(&manifest);
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
        lines.sort();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            lines,
            vec![
                format!("fail 1 3 {}", b64("boom it's")),
                format!("fail 2 125 {}", b64("stopped before QEMU was launched")),
                "ok 0 4242".to_string()
            ]
        );
        assert!(!std::path::Path::new(pf2).exists(), "a fenced VM's QEMU was launched");
        let started = |pf: &str| std::path::Path::new(pf).with_file_name(crate::remote::reserve::STARTED_MARK).exists();
        assert!(started(pf0) && !started(pf1), "only a started VM is marked");
        // The manifest from stdin, written before the first QEMU, world-readable like the rest.
        assert_eq!(std::fs::read_to_string(&manifest).unwrap(), "{\"run_id\": \"r\"}");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&manifest).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o644);
        // A manifest that cannot be written starts nothing.
        std::fs::remove_file(pf0).unwrap();
        std::fs::remove_file(std::path::Path::new(pf0).with_file_name(crate::remote::reserve::STARTED_MARK)).unwrap();
        let out = run(&dir.path().join("no/such/manifest.json"));
        assert!(!out.status.success() && out.stdout.is_empty(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("writing the manifest"), "{out:?}");
        assert!(!std::path::Path::new(pf0).exists(), "no QEMU started");
        // Regression: a manifest cut short (the connection lost mid-stdin ends `cat` with EOF,
        // status 0) replaced the good one and the QEMUs started; `down` then found an unreadable
        // manifest and left them. Now the size is checked: nothing replaced, nothing started.
        let out = run_with(&manifest, &content[..5], content.len());
        assert!(!out.status.success() && out.stdout.is_empty(), "{out:?}");
        assert_eq!(std::fs::read_to_string(&manifest).unwrap(), "{\"run_id\": \"r\"}", "the manifest was replaced");
        assert!(!std::path::Path::new(pf0).exists(), "no QEMU started");
    }

    /// A start request that reached the host after cleanup had stopped the VMs and released
    /// the node (Ctrl-C before its pid line) wrote the manifest again: with a sibling node's
    /// files keeping the run directory, a run that never started stayed behind. A removed VM
    /// directory now stops the batch before anything is written.
    #[test]
    fn regression_a_start_after_its_stop_writes_no_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("manifest-DUT1.json");
        let vm_dir = dir.path().join("DUT1_1");
        let pf = vm_dir.join("qemu.pid");
        let pf = pf.to_str().unwrap();
        let launched = dir.path().join("launched");
        let qemu = ["sh", "-c", "touch \"$0\"", launched.to_str().unwrap()];
        assert!(!vm_dir.exists());
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(start_script()).arg("sh").arg(&manifest).arg("2");
        cmd.arg(qemu.len().to_string()).arg(pf).args(qemu);
        let out = output_with_stdin(cmd, b"{}");
        assert_eq!(out.status.code(), Some(125), "{out:?}");
        assert!(!manifest.exists(), "the manifest was written again");
        assert!(!launched.exists(), "QEMU was launched");
    }

    /// The VMs' result lines share one pipe; a failure line carrying a long QEMU stderr (over
    /// PIPE_BUF once in base64) was not written whole, and other VMs' `ok` lines vanished inside
    /// it. The stderr is cut to its last 2 KiB: every VM gets its own parsable line.
    #[test]
    fn regression_a_long_qemu_error_does_not_swallow_other_vms_lines() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("m.json");
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(start_script()).arg("sh").arg(&manifest).arg("2");
        let loud = ["sh", "-c", "head -c 60000 /dev/zero | tr '\\0' x >&2; echo THE-END >&2; exit 1"];
        for i in 0..12 {
            let pf = dir.path().join(format!("{i}/qemu.pid"));
            std::fs::create_dir_all(pf.parent().unwrap()).unwrap();
            let pf = pf.to_str().unwrap().to_string();
            if i % 4 == 0 {
                cmd.arg(loud.len().to_string()).arg(&pf).args(loud);
            } else {
                let ok = ["sh", "-c", "echo 77 > \"$0\"", &pf];
                cmd.arg(ok.len().to_string()).arg(&pf).args(ok);
            }
        }
        let out = output_with_stdin(cmd, b"{}");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut seen: Vec<usize> = text.lines().map(|l| l.split(' ').nth(1).unwrap().parse().unwrap()).collect();
        seen.sort();
        assert_eq!(seen, (0..12).collect::<Vec<_>>(), "{text}");
        for l in text.lines() {
            assert!(l.len() < 4096, "a line of {} bytes", l.len());
            if l.starts_with("fail") {
                use base64::Engine as _;
                let e = base64::engine::general_purpose::STANDARD.decode(l.split(' ').nth(3).unwrap()).unwrap();
                assert!(String::from_utf8_lossy(&e).ends_with("THE-END"), "the end of the error was kept");
            }
        }
    }

    fn output_with_stdin(mut cmd: std::process::Command, stdin: &[u8]) -> std::process::Output {
        use std::io::Write as _;
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A script that exits without reading its stdin (it cannot open the manifest) makes
        // the write EPIPE, a flaky failure under load, not a fault of the script.
        match child.stdin.take().unwrap().write_all(stdin) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            r => r.unwrap(),
        }
        child.wait_with_output().unwrap()
    }
}
