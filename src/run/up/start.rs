//! Stage 4 (outside the host lock, the node's hugepages reserved): launch every QEMU of the node
//! at once and read back its pid. A VM is recorded as launched once its QEMU has started;
//! cleanup does not depend on that record (it stops every planned VM of a directory this run
//! claimed), so a start cut short is still stopped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::node::NodeCtx;
use super::tracker::Launched;
use super::{UpError, VmState, fail};
use crate::plan::{NodePlan, VmPlan};
use crate::report::Phase;
use crate::ssh::{RemoteCommand, Session, SshError};

pub(super) async fn all(ctx: &NodeCtx, session: &Session, np: &NodePlan) -> Result<BTreeMap<String, u32>, UpError> {
    let mut starts = JoinSet::new();
    for v in np.vms.iter().cloned() {
        let (s, tracker, node) = (session.clone(), ctx.tracker.clone(), np.name.clone());
        let ev = ctx.events.for_vm(&v.name);
        starts.spawn(async move {
            ev.phase(Phase::Starting);
            tracker.set_state(&node, &v.name, VmState::Starting);
            let t = Instant::now();
            let res = start_qemu(&s, &v).await;
            if res.is_ok() {
                tracker.node(&node, |n| {
                    n.launched.push(Launched {
                        vm: v.name.clone(),
                        pidfile: v.paths.pidfile.clone(),
                        qmp: v.paths.qmp.clone(),
                        run_dir: v.paths.run_dir.clone(),
                    })
                });
            }
            tracker.timing(&node, &v.name, "start", t.elapsed().as_secs_f64());
            res.map(|pid| (v.name.clone(), pid)).map_err(|e| (v.name.clone(), e))
        });
    }
    let mut pids = BTreeMap::new();
    let mut first_err = None;
    while let Some(r) = starts.join_next().await {
        match r {
            Ok(Ok((vm, pid))) => {
                pids.insert(vm, pid);
            }
            Ok(Err((vm, e))) => {
                let msg = e.to_string();
                ctx.tracker.vm(&np.name, &vm, |r| {
                    r.state = VmState::Failed;
                    r.error = Some(msg);
                    r.failure = Some(e.failure_kind());
                });
                ctx.events.for_vm(&vm).phase(Phase::Failed);
                first_err.get_or_insert(e.context(&vm));
            }
            Err(e) => {
                first_err.get_or_insert(fail(format!("start task: {e}")));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(pids),
    }
}

/// `sudo -n qemu-system-… -daemonize -pidfile …`, then the pid from the pidfile. QEMU does not
/// daemonize while a vhost-user `server: true` socket waits for its client (the vswitch), so
/// the command has the VM's `start_timeout`; on expiry the SSH layer kills the remote process
/// group (sudo and the still undaemonized QEMU in it).
async fn start_qemu(session: &Session, v: &VmPlan) -> Result<u32, UpError> {
    // One round trip: start QEMU (exactly the planned argv), then print the pid it wrote.
    // The mark tells hugepage reservations this QEMU's memory is mapped (crate::remote::reserve).
    let script = format!(
        r#""$@" || exit $?; : > "${{0%/*}}/{}"; read -r p < "$0"; echo "$p""#,
        crate::remote::reserve::STARTED_MARK
    );
    let mut argv = vec!["sh".into(), "-c".into(), script, v.paths.pidfile.clone()];
    argv.extend(v.argv.iter().cloned());
    let cmd = RemoteCommand::new(argv).sudo().timeout(v.start_timeout);
    let out = match session.run(&cmd).await {
        Err(SshError::CommandTimeout { after, .. }) => {
            kill_undaemonized(session, v).await;
            return Err(start_timed_out(v, after));
        }
        r => r?,
    };
    if !out.success() {
        let err = out.stderr_str();
        return Err(fail(format!(
            "qemu failed to start (exit {}): {}",
            out.status.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
            err.trim()
        )));
    }
    let stdout = out.stdout_str();
    let pid = stdout.lines().last().unwrap_or("").trim();
    pid.parse::<u32>().map_err(|_| fail(format!("unreadable pidfile {}: {pid:?}", v.paths.pidfile)))
}

/// The SSH layer's kill on timeout reaches sudo's process group, not QEMU: sudo runs it on its
/// own pty (Debian's `use_pty`), and QEMU, blocked in the vhost-user accept before its main
/// loop, does not act on the SIGTERM sudo relays. SIGKILL every process whose argv holds this
/// VM's own pidfile path (QEMU and its sudo; nothing of anyone else's has it); it has no guest
/// state yet that a graceful quit could save.
async fn kill_undaemonized(session: &Session, v: &VmPlan) {
    let script = format!(
        r#"pf={pf}
ours() {{ tr '\0' '\n' < /proc/$1/cmdline 2>/dev/null | grep -qxF -- "$pf"; }}
pids=; for c in /proc/[0-9]*/cmdline; do p=${{c#/proc/}}; p=${{p%/cmdline}}; [ "$p" != $$ ] && ours "$p" && pids="$pids $p"; done
[ -z "$pids" ] || kill -KILL $pids 2>/dev/null
i=0; while [ $i -lt 40 ]; do left=; for p in $pids; do [ -d /proc/$p ] && ! grep -q '^State:.*Z' /proc/$p/status 2>/dev/null && left=1; done; [ -z "$left" ] && break; sleep 0.05; i=$((i+1)); done
true"#,
        pf = crate::quote::quote(&v.paths.pidfile)
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
