//! `harness logs VM [TOPOLOGY] [--run ID] [-f]`: print or follow a VM's serial log.

use std::io::Write;

use anyhow::bail;

use crate::cli::{GlobalArgs, LogsArgs};
use crate::exit;
use crate::run::down;
use crate::ssh::{ChildEvent, RemoteCommand, Session, SshTarget};

pub async fn run(g: &GlobalArgs, a: &LogsArgs) -> anyhow::Result<u8> {
    let (topo, mut sel) = super::down::resolve(g, a.topology.as_deref(), a.run.as_deref())?;
    sel.topology = None;
    let opts = super::connect_options(g);
    for node in topo.duts() {
        // Only nodes that run this VM in the topology, if it is there; else ask all.
        if topo.vms.iter().any(|v| v.name == a.vm) && !topo.vms.iter().any(|v| v.name == a.vm && v.node == node.name) {
            continue;
        }
        let s = Session::connect(&SshTarget::from_node(node), &opts).await?;
        let mut found: Vec<_> = down::discover(&s, &node.name, &node.run_root)
            .await?
            .into_iter()
            .flatten()
            .filter(|m| sel.matches(m))
            .flat_map(|m| m.vms.into_iter().map(move |v| (m.created_unix, m.run_id.clone(), v)))
            .filter(|(_, _, v)| v.name == a.vm)
            .collect();
        found.sort_by_key(|(t, _, _)| *t);
        let Some((_, run_id, vm)) = found.pop() else {
            s.close().await;
            continue;
        };
        eprintln!("== {} {} run {run_id}: {}", node.name, vm.name, vm.serial_log);
        let mut argv = vec!["tail".to_string(), "-c".into(), "+0".into()];
        if a.follow {
            argv.extend(["-F".into(), "-s".into(), "0.2".into()]);
            if let Some(pid) = vm.pid {
                argv.push(format!("--pid={pid}"));
            }
        }
        argv.push(vm.serial_log.clone());
        let mut child =
            s.spawn(&RemoteCommand::new(argv).sudo().timeout(std::time::Duration::from_secs(365 * 86400))).await?;
        let mut out = std::io::stdout();
        let mut code = exit::OK;
        loop {
            tokio::select! {
                ev = child.next() => match ev {
                    Some(ChildEvent::Stdout(b)) => { out.write_all(&b)?; out.flush()?; }
                    Some(ChildEvent::Stderr(b)) => { std::io::stderr().write_all(&b)?; }
                    Some(ChildEvent::Exit(st)) => { if st != Some(0) { code = exit::FAILED; } break; }
                    None => break,
                },
                _ = tokio::signal::ctrl_c() => { let _ = child.kill().await; break; }
            }
        }
        s.close().await;
        return Ok(code);
    }
    bail!("VM {} not found in any run on the topology's nodes", a.vm)
}
