//! `harness check`: pre-flight every DUT in parallel (one SSH round trip per node), print one
//! line per node (✓/✗ on a terminal, `ok`/`FAIL` otherwise) or JSON, and exit 0 (all required
//! items pass), 1 (a requirement fails) or 3 (a node is unreachable). `--save-facts DIR` keeps
//! each node's facts for `render --facts DIR`.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;

use crate::cli::{CheckArgs, Format, GlobalArgs};
use crate::exit;
use crate::facts::Kvm;
use crate::plan::PlanOptions;
use crate::remote::check::{self, NodeReport, Status};
use crate::ssh::SshTarget;

pub async fn run(g: &GlobalArgs, a: &CheckArgs) -> anyhow::Result<u8> {
    let started = std::time::Instant::now();
    let (topo, templates) = super::load_topology(g, &a.topology)?;
    let (topo, templates) = (Arc::new(topo), Arc::new(templates));
    let opts = super::connect_options(g);
    let tasks: Vec<_> = topo
        .duts()
        .map(|node| {
            let (node, topo, templates) = (node.clone(), topo.clone(), templates.clone());
            let target = SshTarget::for_node(&topo, &node);
            let opts = opts.clone();
            tokio::spawn(async move {
                // Checked with the run id `render` shows by default: paths do not affect the checks.
                let po =
                    PlanOptions { run_id: crate::run::PLACEHOLDER_RUN_ID.into(), templates: &templates, only_vms: &[] };
                check::check_node(&target, &opts, &topo, &node, &po).await
            })
        })
        .collect();
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await?);
    }
    let mut junit_ok = true;
    if let Some(f) = &a.junit {
        let suite = format!("harness check {}", a.topology.file_name().unwrap_or_default().to_string_lossy());
        let run = crate::pipeline::junit::for_check(&suite, &reports, started.elapsed());
        if let Err(e) = super::write_report(f, crate::report::junit::to_xml(&run).as_bytes()) {
            eprintln!("harness: {e:#}");
            junit_ok = false;
        }
    }
    if let Some(dir) = &a.save_facts {
        for r in &reports {
            if let Some(f) = &r.facts {
                crate::facts::store::save(dir, &r.node, f)
                    .with_context(|| format!("saving the facts of {}", r.node))?;
            }
        }
    }
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
        Format::Text => print_text(&reports, std::io::stdout().is_terminal()),
    }
    Ok(match exit_code(&reports) {
        exit::OK if !junit_ok => exit::FAILED,
        code => code,
    })
}

fn exit_code(reports: &[NodeReport]) -> u8 {
    if reports.iter().any(|r| !r.reachable) {
        exit::UNREACHABLE
    } else if reports.iter().any(NodeReport::failed) {
        exit::FAILED
    } else {
        exit::OK
    }
}

fn mark(s: Status, tty: bool) -> &'static str {
    match (s, tty) {
        (Status::Ok, true) => "✓",
        (Status::Warn, true) => "!",
        (Status::Fail, true) => "✗",
        (Status::Ok, false) => "ok",
        (Status::Warn, false) => "warn",
        (Status::Fail, false) => "FAIL",
    }
}

/// One line per node, then an indented line for every item that is not plainly ok.
fn print_text(reports: &[NodeReport], tty: bool) {
    print!("{}", text(reports, tty));
}

/// The text of [`print_text`]. An item's detail is the host's words (sudo's and KVM's errors,
/// QEMU's version line): escaped, so a host cannot rewrite the terminal or forge a line.
fn text(reports: &[NodeReport], tty: bool) -> String {
    use crate::report::sanitize::escape_control as esc;
    use std::fmt::Write;
    let mut out = String::new();
    let width = reports.iter().map(|r| r.node.len()).max().unwrap_or(0);
    for r in reports {
        let mut line = format!("{:width$}  {:21}", r.node, r.addr);
        for it in &r.items {
            let sep = if tty { "" } else { ":" };
            line.push_str(&format!(" {}{sep}{}", mark(it.status, tty), it.name));
        }
        if let Some(accel) = &r.accel {
            line.push_str(&format!("  accel={}", accel.as_str()));
        }
        if let Some(kvm) = r.facts.as_ref().and_then(|f| f.kvm.as_ref()) {
            let state = match kvm {
                Kvm::Usable => "usable",
                Kvm::Broken(_) => "broken",
                Kvm::Unverified(_) => "unverified",
                Kvm::Absent => "absent",
            };
            line.push_str(&format!(" kvm={state}"));
        }
        if r.reachable {
            line.push_str(&format!("  ({} ms + {} ms)", r.connect_ms, r.probe_ms));
        }
        let _ = writeln!(out, "{line}");
        for it in r.items.iter().filter(|i| i.status != Status::Ok || !r.reachable) {
            let _ = writeln!(out, "{:width$}    {} {}: {}", "", mark(it.status, tty), it.name, esc(&it.detail));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::check::Item;

    /// `check` printed each item's detail raw, and the detail is what the host said (sudo's
    /// message, the KVM probe's error, QEMU's `--version` line): an escape sequence in it could
    /// rewrite the terminal, and a newline forge an `ok` line for another node.
    #[test]
    fn regression_check_escapes_what_the_hosts_say() {
        let item = |name: &str, detail: &str| Item { name: name.into(), status: Status::Fail, detail: detail.into() };
        let r = NodeReport {
            node: "DUT1".into(),
            addr: "10.0.0.2:22".into(),
            reachable: true,
            error: None,
            connect_ms: 1,
            probe_ms: 2,
            accel: None,
            items: vec![
                item("sudo", "`sudo -n true` failed: \x1b]0;pwned\x07\x1b[2Jsorry"),
                item("qemu", "/usr/bin/qemu-system-x86_64 cannot run: x\nDUT2  10.0.0.3:22  ok:ssh\r"),
            ],
            facts: None,
        };
        let out = text(&[r], false);
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert_eq!(out.lines().count(), 3, "one line per node and per failed item: {out}");
        assert!(out.contains("failed: \\u{1b}]0;pwned\\u{7}\\u{1b}[2Jsorry"), "{out}");
        assert!(out.contains("cannot run: x\\nDUT2  10.0.0.3:22  ok:ssh\\r\n"), "{out}");
    }
}
