//! Stage 1: connect, gather the host's facts, plan the node with them, claim the run directory,
//! write the manifest (state `preparing`) and only then create the VM directories (and, when
//! they are small, write the VM files in that same round trip). After this
//! stage the node's plan is final: nothing later changes it.
//!
//! The order is what makes every failure recoverable: the run directory is claimed atomically
//! with its owner file (a run id already in use is refused before anything is written), the
//! manifest exists before any VM directory, so `down` always finds what an `up` killed at any
//! instant left behind.

use std::time::Duration;

use super::node::NodeCtx;
use super::tracker::TrackedNode;
use super::{UpError, fail};
use crate::plan::{self, NodePlan};
use crate::remote::layout;
use crate::remote::{check, facts};
use crate::report::Phase;
use crate::ssh::{Put, RemoteCommand, Session, SshTarget};
use crate::topology::Accel;

/// The session, the final plan, and whether the VM files are already on the host.
pub(super) async fn prepare(ctx: &NodeCtx) -> Result<(Session, NodePlan, bool), UpError> {
    let ev = &ctx.events;
    ev.phase(Phase::Connecting);
    let session = match &ctx.connector {
        Some(c) => c.connect(&ctx.node).await?,
        None => Session::connect(&SshTarget::for_node(&ctx.topology, &ctx.node), &ctx.connect).await?,
    };
    ctx.tracker.with(|t| {
        t.nodes.insert(
            ctx.node.name.clone(),
            TrackedNode {
                session: session.clone(),
                host: ctx.node.host.clone(),
                run_root: ctx.node.run_root.clone(),
                run_dir: String::new(),
                launched: vec![],
                vm_dirs: vec![],
                claimed: false,
                hugepages_in_flight: false,
                hugepages: vec![],
                facts: None,
                plan: None,
            },
        )
    });

    ev.phase(Phase::Preparing);
    // The KVM probe boots a guest: only worth it where the plan depends on it.
    let wanted = check::wanted(&ctx.topology, &ctx.node, ctx.node.qemu.accel == Accel::Auto);
    let timeout = ctx.connect.command_timeout.max(Duration::from_secs(20));
    let facts = facts::gather(&session, &ctx.node, &wanted, timeout).await?;
    ctx.tracker.node(&ctx.node.name, |n| n.facts = Some(facts.clone()));
    let np = plan::plan_node(&ctx.topology, &ctx.node, Some(&facts), &ctx.plan_options())?
        .ok_or_else(|| fail("no VMs planned on this node"))?;
    // The plan goes into the run record however the node fails from here (no sudo, a missing
    // socket): a replay of the failed run compares against it, and without it every VM of the
    // node was "drift" (exit 5) although nothing had changed. Nothing acts on an unclaimed
    // node's plan (cleanup and artifacts look at claimed nodes only).
    ctx.tracker.node(&np.name, |n| n.plan = Some(np.clone()));
    // Every selected VM must be in the final plan: a chain the host gave no CPU layout for
    // (`lscpu -p` printed nothing) is only a note in it. Started without it, the run could
    // never be ready, and its other VMs ran on while the record was dropped.
    let missing: Vec<String> = ctx
        .topology
        .vm_names()
        .into_iter()
        .filter(|(n, v)| *n == np.name && ctx.selected(v) && !np.vms.iter().any(|p| &p.name == v))
        .map(|(_, v)| v)
        .collect();
    if !missing.is_empty() {
        let why: Vec<String> = np.unresolved.iter().map(|u| format!("{}: {}", u.what, u.shown)).collect();
        return Err(fail(format!(
            "cannot plan {} on this host ({}); nothing was changed on this host",
            missing.join(", "),
            if why.is_empty() { "not in the plan".to_string() } else { why.join("; ") }
        )));
    }
    // Every step from the claim on runs as root: without passwordless sudo, stop before anything
    // is written (a claim refused by sudo left cleanup unable to tell that nothing had started).
    if let Some(s) = facts.sudo.as_ref().filter(|s| !s.ok) {
        let why = s.error.as_deref().filter(|e| !e.is_empty()).unwrap_or("`sudo -n true` failed");
        return Err(fail(format!(
            "passwordless `sudo -n` is needed to start VMs here ({why}); nothing was changed on this host"
        )));
    }
    if np.accel_requested == Accel::Auto && np.accel == crate::plan::AccelChoice::Tcg {
        ev.info("KVM not usable here (probe failed); using TCG");
    }
    for v in np.vms.iter().filter(|v| v.numa.is_some()) {
        ev.for_vm(&v.name)
            .info(format!("guest memory bound to NUMA node {}, the node of its CPUs", v.numa.unwrap_or(0)));
    }
    // A vhost-user client socket that is not there fails now, before anything is created.
    super::start::check_client_sockets(&session, &np).await?;
    let uploaded = claim(ctx, &session, &np).await?;
    Ok((session, np, uploaded))
}

/// Claim `<run_root>/<run_id>`, write the `preparing` manifest, then create each VM directory
/// with a plain `mkdir` (an existing one is an error, never reused) and its empty serial log.
/// True when the VM files went along (see [`super::upload::small_files`]).
async fn claim(ctx: &NodeCtx, session: &Session, np: &NodePlan) -> Result<bool, UpError> {
    // Recorded before the claim is sent, so cleanup asks the host whatever happens next.
    ctx.tracker.node(&np.name, |n| {
        n.run_dir = np.run_dir.clone();
        n.vm_dirs = np.vms.iter().map(|v| v.paths.run_dir.clone()).collect();
        n.plan = Some(np.clone());
        n.claimed = true;
    });
    let by = crate::run::started_by();
    let script =
        layout::claim_script(&ctx.node.run_root, &np.run_dir, &np.name, &ctx.tracker.nonce, &by, &ctx.topology_path);
    let out = session.run(&RemoteCommand::sh(script).sudo()).await?;
    if !out.success() {
        let err = out.stderr_str();
        return Err(match out.status {
            Some(layout::CLAIM_TAKEN) => {
                UpError::RunIdInUse(format!("{} (choose another --run-id, or stop that run first)", err.trim()))
            }
            _ => {
                let msg = format!("creating the run directory {}: {}", np.run_dir, err.trim());
                fail(full_hint(session, &msg, &ctx.node.run_root).await)
            }
        });
    }
    crate::run::testpause::at("claimed", &np.name).await;
    // One round trip, in this order: the manifest, the VM directories, and (when small, the
    // usual case) the VM files. Each step only starts once the one before it succeeded.
    let (manifest, manifest_path) = super::record::manifest_file(ctx, np)?;
    let mut puts = vec![Put::File { content: &manifest, path: &manifest_path, mode: 0o644 }];
    // The serial log exists before QEMU opens it (`append=on` keeps its owner): the login
    // user's readiness follower then reads it without a sudo per VM.
    // Directories, then logs: each kind is then one command on the host, not one per VM.
    puts.extend(np.vms.iter().map(|v| Put::Dir { path: &v.paths.run_dir }));
    puts.extend(np.vms.iter().map(|v| Put::Log { path: &v.paths.serial_log }));
    let files = super::upload::small_files(np);
    puts.extend(files.iter().flatten().map(|&(content, path, mode)| Put::File { content, path, mode }));
    match session.put_many(&puts, true).await {
        Ok(()) => {}
        // A lost connection is a lost node (exit 3), not a write that failed.
        Err(e) if e.is_connection_lost() || e.is_unreachable() => return Err(e.into()),
        Err(e) => return Err(fail(full_hint(session, &e.to_string(), &ctx.node.run_root).await)),
    }
    Ok(files.is_some())
}

/// A failed write under `run_root`, with the likely cause when its file system is full (the
/// shell's own message may only say "I/O error"): asks the host how much room is left.
pub(super) async fn full_hint(session: &Session, msg: &str, run_root: &str) -> String {
    let df = RemoteCommand::new(["df", "-Pk", run_root]).timeout(Duration::from_secs(10));
    let avail_kb = match session.run(&df).await {
        Ok(o) => o.stdout_str().lines().nth(1).and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok()),
        Err(_) => None,
    };
    if msg.contains("No space left on device") || avail_kb.is_some_and(|kb| kb < 64) {
        let left = avail_kb.map(|kb| format!(" ({kb} KiB free)")).unwrap_or_default();
        format!("{msg}\n    hint: the file system holding run_root {run_root} is full{left}")
    } else {
        msg.to_string()
    }
}
