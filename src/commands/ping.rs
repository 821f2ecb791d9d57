//! `harness ping VM`: guest-agent round trips over one persistent socat channel.
//!
//! Shows that a VM's agent answers, and how fast: the same path `up` uses (SSH channel →
//! `sudo socat` → QGA socket → isa-serial/virtio-serial → qemu-ga), synced once with
//! `guest-sync-delimited`, then `guest-ping` `--count` times.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cli::{Format, GlobalArgs, PingArgs};
use crate::exit;
use crate::run::bridge::Bridge;
use crate::run::qga::Qga;

pub async fn run(g: &GlobalArgs, a: &PingArgs) -> anyhow::Result<u8> {
    let super::LocatedVm { session: s, node, vm, run_id, run_root } =
        super::locate_vm(g, a.topology.as_deref(), a.run.as_deref(), &a.vm).await?;
    let run_root = run_root.as_str();
    if vm.qga.is_none() {
        bail!("VM {} has no guest agent channel (qga: false)", a.vm)
    }
    let sock = super::live_agent_socket(&s, run_root, &run_id, &a.vm).await?;
    let mut bridge = Bridge::unix_socket(&s, &sock).await?;
    let mut qga = Qga::new(bridge.stream());
    qga.sync(Duration::from_secs(5)).await.context("guest-sync-delimited")?;
    let mut rtts = Vec::with_capacity(a.count as usize);
    for _ in 0..a.count {
        let t = Instant::now();
        qga.ping(Duration::from_secs(5)).await.context("guest-ping")?;
        rtts.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    drop(qga);
    bridge.close().await;
    s.close().await;
    let mut sorted = rtts.clone();
    sorted.sort_by(|x, y| x.total_cmp(y));
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let (min, max) = (sorted.first().copied().unwrap_or(0.0), sorted.last().copied().unwrap_or(0.0));
    match a.format {
        Format::Json => println!(
            "{}",
            serde_json::json!({"vm": a.vm, "node": node, "count": a.count, "median_ms": median, "min_ms": min, "max_ms": max, "rtt_ms": rtts})
        ),
        Format::Text => println!(
            "{} on {}: {} guest-ping round trips, median {median:.2} ms, min {min:.2} ms, max {max:.2} ms",
            a.vm, node, a.count
        ),
    }
    Ok(exit::OK)
}
