//! Stage 1: connect, gather the host's facts, plan the node with them, create the run
//! directories. After this stage the node's plan is final: nothing later changes it.

use std::time::Duration;

use super::node::NodeCtx;
use super::tracker::TrackedNode;
use super::{UpError, fail};
use crate::plan::{self, NodePlan};
use crate::quote::quote;
use crate::remote::{check, facts};
use crate::report::Phase;
use crate::ssh::{RemoteCommand, Session, SshTarget};
use crate::topology::Accel;

pub(super) async fn prepare(ctx: &NodeCtx) -> Result<(Session, NodePlan), UpError> {
    let ev = &ctx.events;
    ev.phase(Phase::Connecting);
    let target = SshTarget::for_node(&ctx.topology, &ctx.node);
    let session = Session::connect(&target, &ctx.connect).await?;
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
    if np.accel_requested == Accel::Auto && np.accel == crate::plan::AccelChoice::Tcg {
        ev.info("KVM not usable here (probe failed); using TCG");
    }
    for v in np.vms.iter().filter(|v| v.numa.is_some()) {
        ev.for_vm(&v.name)
            .info(format!("guest memory bound to NUMA node {}, the node of its CPUs", v.numa.unwrap_or(0)));
    }
    // Recorded before the directories exist, so cleanup removes them whatever happens next.
    ctx.tracker.node(&np.name, |n| {
        n.run_dir = np.run_dir.clone();
        n.vm_dirs = np.vms.iter().map(|v| v.paths.run_dir.clone()).collect();
        n.plan = Some(np.clone());
    });
    let mut script = format!("set -e\nmkdir -p -m 0755 {}\n", quote(&np.run_dir));
    for v in &np.vms {
        script.push_str(&format!("mkdir -p -m 0755 {}\n", quote(&v.paths.run_dir)));
    }
    session.run_ok(&RemoteCommand::sh(script).sudo()).await?;
    super::start::check_client_sockets(&session, &np).await?;
    Ok((session, np))
}
