//! `harness validate`: load and check a topology file without touching any host.
//!
//! Prints `FILE: ok (N nodes, M DUTs, K VMs)` on success. On errors the `TopologyError` goes back
//! to the CLI edge, which prints every diagnostic (one per line, `file:line:col: key: message`)
//! and exits with `exit::INVALID_INPUT`. Plaintext passwords are accepted for CSIT compatibility
//! but warned about on stderr, naming the key and never the value.

use std::io::Write;
use std::path::Path;

use crate::cli::{GlobalArgs, ValidateArgs};
use crate::exit;
use crate::facts::FactsByNode;
use crate::plan::{self, PlanOptions};
use crate::topology::{self, Auth, Topology};

pub fn run(g: &GlobalArgs, a: &ValidateArgs) -> anyhow::Result<u8> {
    let (topo, templates) = super::load_topology(g, &a.topology)?;
    // What `render` and `up` would refuse is refused here too: plan it (no host facts needed
    // for that), and report a plan error at the VM it concerns.
    let opts = PlanOptions { run_id: crate::run::PLACEHOLDER_RUN_ID.into(), templates: &templates, only_vms: &[] };
    plan::build(&topo, &FactsByNode::new(), &opts).map_err(|e| super::positioned(&topo, e))?;
    report(&a.topology, &topo, &mut std::io::stdout().lock(), &mut std::io::stderr().lock())?;
    Ok(exit::OK)
}

/// The command with the VNF check supplied by the caller (tests, tools without templates).
pub fn run_with(
    path: &Path,
    has_vnf: &dyn Fn(&str) -> bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let topo = topology::load_with(path, has_vnf)?;
    report(path, &topo, out, err)?;
    Ok(exit::OK)
}

/// Warnings to `err`, the summary line to `out`.
pub fn report(path: &Path, topo: &Topology, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<()> {
    for node in &topo.nodes {
        if node.auth.iter().any(|a| matches!(a, Auth::Password(_))) {
            writeln!(
                err,
                "warning: {}: nodes.{}.password: plaintext password in the topology file; \
                 prefer `password_env` or `identity_file`",
                path.display(),
                node.name
            )?;
        }
    }
    writeln!(
        out,
        "{}: ok ({} nodes, {} DUTs, {} VMs)",
        path.display(),
        topo.nodes.len(),
        topo.duts().count(),
        topo.vm_names().len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
        let p = dir.path().join("t.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn ok_summary_and_password_warning_without_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            "nodes:\n  TG: {type: TG, host: h}\n  DUT1: {type: DUT, host: h, password: s3cret}\n\
             vms:\n  - {node: DUT1, ready_markers: [up]}\n",
        );
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(&p, &|_| true, &mut out, &mut err).unwrap();
        assert_eq!(code, exit::OK);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out, format!("{}: ok (2 nodes, 1 DUTs, 1 VMs)\n", p.display()));
        let err = String::from_utf8(err).unwrap();
        assert!(err.contains("nodes.DUT1.password"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn errors_map_to_invalid_input_with_one_line_per_diagnostic() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "nodes:\n  DUT1: {type: DUT, host: h, port: 0}\nvms:\n  - {node: DUT9, qga: true}\n");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let e = run_with(&p, &|_| true, &mut out, &mut err).unwrap_err();
        assert_eq!(crate::commands::exit_code_for(&e), exit::INVALID_INPUT);
        let text = format!("{e:#}");
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert!(text.starts_with(&format!("2 error(s) in topology {}:\n", p.display())), "{text}");
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with(&format!("{}:2:36", p.display()))
                && lines[0].ends_with("t.yaml:2:36: nodes.DUT1.port: expected a port number (1-65535)"),
            "{text}"
        );
        assert!(lines[1].contains("t.yaml:4:12: vms[0].node: no node `DUT9`"), "{text}");
        assert!(out.is_empty());
    }

    #[test]
    fn unreadable_file_is_invalid_input() {
        let e = run_with(Path::new("/nonexistent/t.yaml"), &|_| true, &mut Vec::new(), &mut Vec::new()).unwrap_err();
        assert_eq!(crate::commands::exit_code_for(&e), exit::INVALID_INPUT);
    }
}
