//! `harness replay BUNDLE`: plan a bundle's frozen topology again with fresh host facts (on the
//! same hosts, or on the nodes of `--topology NEW.yaml`), show every argv and file difference
//! against the plan that ran, refuse to start on drift unless `--allow-drift`, then run `up`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

use super::up::{self, UpInput};
use crate::cli::{GlobalArgs, ReplayArgs};
use crate::exit;
use crate::facts::FactsByNode;
use crate::pipeline::{bundle, drift};
use crate::plan::{self, PlanOptions};
use crate::remote::{check, facts};
use crate::ssh::{Session, SshTarget};
use crate::templates::Templates;
use crate::topology::{Accel, Topology};

pub async fn run(g: &GlobalArgs, a: &ReplayArgs) -> anyhow::Result<u8> {
    let tmp = tempfile::tempdir().context("a temporary directory for the bundle")?;
    let root = bundle::unpack(&a.bundle, tmp.path())?;
    let meta = bundle::read_meta(&root)?;
    let (templates, templates_dir) = templates(g, &root)?;
    let frozen_text = bundle::read_member(&root, "topology.yaml")?;
    let withheld = bundle::is_withheld(frozen_text.as_bytes());
    let (text, path) = match &a.topology {
        // Withheld (secrets it could not redact): nothing of it to replay; the VMs must come
        // from a topology given here, and the drift check against the bundle's plan still holds.
        None if withheld => {
            eprintln!(
                "error: the bundle keeps no topology (it held secrets that could not be redacted): give it with --topology TOPOLOGY.yaml"
            );
            return Ok(exit::INVALID_INPUT);
        }
        None => (frozen_text, meta.topology_path.clone()),
        Some(new) => match std::fs::read_to_string(new) {
            Err(e) => {
                eprintln!("error: reading {}: {e}", new.display());
                return Ok(exit::INVALID_INPUT);
            }
            Ok(new_text) if withheld => {
                eprintln!(
                    "harness: the bundle keeps no topology: planning {} whole (nodes and VMs); drift is measured against the bundle's plan",
                    new.display()
                );
                (new_text, new.clone())
            }
            Ok(_) => (with_nodes_of(&frozen_text, new)?, new.clone()),
        },
    };
    let topology = crate::topology::load_str(&text, &path, &templates)?;
    let vms = if a.vms.is_empty() { meta.only_vms.clone() } else { a.vms.clone() };
    if let Some(n) = redacted_node(&topology, &vms) {
        bail!(
            "node {n}: the bundle does not carry its password or private key (redacted): give the nodes with \
             --topology NEW.yaml (password_env or identity_file keep secrets out of bundles)"
        );
    }
    // A bundle is a file from elsewhere: what it says is printed with its control characters
    // made visible, never sent to the terminal raw.
    let esc = |s: &str| crate::report::sanitize::escape_control(s).into_owned();
    eprintln!(
        "replaying run {} (harness {} {}, {}), planned by: {}",
        esc(&meta.run_id),
        esc(&meta.harness_version),
        esc(&meta.git_revision),
        esc(&meta.topology_path.display().to_string()),
        esc(&meta.command_line.join(" "))
    );

    let opts = PlanOptions { run_id: meta.run_id.clone(), templates: &templates, only_vms: &vms };
    // Input errors (a `--vm` the bundle does not have, a VM the plan refuses) exit 2 before any
    // host is asked, as for `up`.
    plan::build(&topology, &FactsByNode::new(), &opts).map_err(|e| super::positioned(&topology, e))?;
    let facts = gather(g, &topology, &vms).await?;
    let fresh: Value = serde_json::from_str(&plan::render::json(&plan::build(&topology, &facts, &opts)?)?)?;
    let frozen: Value = serde_json::from_str(&bundle::read_member(&root, "plan.json")?).map_err(|e| {
        bundle::BundleError::Member { path: a.bundle.clone(), member: "plan.json", message: e.to_string() }
    })?;
    let drift = drift::diff(&frozen, &fresh, &vms);
    if drift.is_empty() {
        eprintln!("no drift: every argv and file is as the bundle's plan");
    } else {
        // A closed pipe (`| head`) must not turn into a panic.
        let text = drift.join("\n");
        let _ = writeln!(std::io::stdout(), "{}", crate::report::sanitize::escape_control_lines(&text));
    }
    if !drift.is_empty() && !a.allow_drift {
        eprintln!("refusing to start: the plan differs from the bundle's (see above); --allow-drift to run anyway");
        return Ok(exit::DRIFT);
    }
    if a.dry_run {
        return Ok(exit::OK);
    }
    let (topology_path, text) = if a.topology.is_some() {
        (PathBuf::from(super::absolute(&path)), text)
    } else {
        let state = crate::run::record::state_dir(g.state_dir.as_deref());
        let copy =
            crate::run::record::run_dir(&state, a.run_id.as_deref().unwrap_or(&meta.run_id)).join("topology.yaml");
        match recorded_path_if_same(&path, text.as_bytes()) {
            Some(p) => (p, text),
            // `down --run` will read the record's copy, in the state directory: its relative
            // key and known_hosts paths must still name the files beside the original.
            None => {
                let text = with_absolute_local_paths(&text, &path);
                (copy, text)
            }
        }
    };
    let input = UpInput {
        topology_path,
        topology_bytes: text.into_bytes(),
        topology,
        templates,
        templates_dir,
        run_id: a.run_id.clone().unwrap_or(meta.run_id),
        vms,
        format: a.format,
        pipeline: a.pipeline.clone(),
    };
    up::execute(g, input).await
}

/// The recorded topology path, when the file there is still the bundle's topology byte for
/// byte, or is once its secrets are redacted as the bundle's were (so `down TOPOLOGY` finds the
/// run, and `down` has the passwords). Another file at that path (another jumpbox, or the file
/// edited since) must not become the run's topology: `down --run` would read its nodes.
fn recorded_path_if_same(recorded: &Path, frozen: &[u8]) -> Option<PathBuf> {
    std::fs::read(recorded)
        .ok()
        .filter(|b| b == frozen || bundle::redact_secrets(b) == frozen)
        .map(|_| PathBuf::from(super::absolute(recorded)))
}

/// `text` with each node's relative `identity_file` and `known_hosts` made absolute against
/// `file`'s directory (as the loader resolves them); unchanged if there is none (or it is not
/// YAML serde can rewrite).
fn with_absolute_local_paths(text: &str, file: &Path) -> String {
    let Ok(mut doc) = serde_yaml::from_str::<serde_yaml::Value>(text) else { return text.to_string() };
    let dir = file.parent().unwrap_or(Path::new(""));
    let mut changed = false;
    if let Some(nodes) = doc.get_mut("nodes").and_then(serde_yaml::Value::as_mapping_mut) {
        for node in nodes.values_mut().filter_map(serde_yaml::Value::as_mapping_mut) {
            for key in ["identity_file", "known_hosts"] {
                if let Some(serde_yaml::Value::String(p)) = node.get_mut(key)
                    && !p.starts_with('/')
                    && !p.starts_with('~')
                {
                    *p = dir.join(&*p).display().to_string();
                    changed = true;
                }
            }
        }
    }
    match changed.then(|| serde_yaml::to_string(&doc)) {
        Some(Ok(t)) => t,
        _ => text.to_string(),
    }
}

/// `--templates` when given (a deliberate change, shown as drift), else the bundle's overlay
/// copies, else the embedded templates.
fn templates(g: &GlobalArgs, root: &Path) -> anyhow::Result<(Templates, Option<PathBuf>)> {
    let dir = match &g.templates {
        Some(d) => Some(d.clone()),
        None => Some(root.join("templates")).filter(|d| d.is_dir()),
    };
    Ok(match dir {
        Some(d) => (Templates::with_dir(&d)?, Some(d)),
        None => (Templates::embedded(), None),
    })
}

/// The frozen topology with its `nodes:` (and `metadata:`) replaced by NEW's: the same VMs on
/// other hosts. Comments of the frozen file are lost; positions in errors refer to this text.
fn with_nodes_of(frozen: &str, new: &Path) -> anyhow::Result<String> {
    let new_text = std::fs::read_to_string(new).with_context(|| format!("reading {}", new.display()))?;
    let mut doc: serde_yaml::Value = serde_yaml::from_str(frozen).context("the bundle's topology.yaml")?;
    let other: serde_yaml::Value = serde_yaml::from_str(&new_text).with_context(|| format!("{}", new.display()))?;
    // Indexing a YAML value that is not a mapping panics: say what is wrong instead.
    if !doc.is_mapping() {
        bail!("the bundle's topology.yaml is not a mapping of `nodes:`, `vms:` ...");
    }
    for key in ["nodes", "metadata"] {
        if let Some(v) = other.get(key) {
            doc[key] = v.clone();
        }
    }
    Ok(serde_yaml::to_string(&doc)?)
}

/// A node replay would connect to (one of the selected VMs' nodes, or the jump host named by
/// one) whose password or private key the bundle holds only as [`crate::pipeline::bundle::REDACTED`].
fn redacted_node(topo: &Topology, vms: &[String]) -> Option<String> {
    let selected = selected_nodes(topo, vms);
    let selected = |n: &str| selected.iter().any(|s| s == n);
    let jumps: Vec<&str> = topo.duts().filter(|n| selected(&n.name)).filter_map(|n| n.proxy_jump.as_deref()).collect();
    let reached = |n: &str| selected(n) || jumps.iter().any(|j| j.split(['@', ':']).any(|part| part == n));
    topo.nodes
        .iter()
        .filter(|n| reached(&n.name))
        .find(|n| {
            n.auth.iter().any(|a| {
                matches!(a, crate::topology::Auth::Password(s) | crate::topology::Auth::PrivateKeyPem(s)
                    if s == crate::pipeline::bundle::REDACTED)
            })
        })
        .map(|n| n.name.clone())
}

/// The nodes with a selected VM (`vms:` entries and chain VMs alike, as `up` counts them).
fn selected_nodes(topo: &Topology, vms: &[String]) -> Vec<String> {
    let mut nodes: Vec<String> =
        topo.vm_names().into_iter().filter(|(_, v)| vms.is_empty() || vms.contains(v)).map(|(n, _)| n).collect();
    nodes.dedup();
    nodes
}

/// Fresh facts of every node with a selected VM, gathered as `up` gathers them.
async fn gather(g: &GlobalArgs, topo: &Topology, vms: &[String]) -> anyhow::Result<FactsByNode> {
    let opts = super::connect_options(g);
    let selected = selected_nodes(topo, vms);
    let selected = |n: &str| selected.iter().any(|s| s == n);
    let tasks = topo.duts().filter(|n| selected(&n.name)).map(|node| {
        let opts = opts.clone();
        async move {
            let s = Session::connect(&SshTarget::for_node(topo, node), &opts).await?;
            let wanted = check::wanted(topo, node, node.qemu.accel == Accel::Auto);
            let timeout = opts.command_timeout.max(std::time::Duration::from_secs(20));
            let f = facts::gather(&s, node, &wanted, timeout).await;
            s.close().await;
            Ok::<_, crate::ssh::SshError>((node.name.clone(), f?))
        }
    });
    let mut out = FactsByNode::new();
    for r in futures::future::join_all(tasks).await {
        let (name, f) = r?;
        out.insert(name, f);
    }
    if out.is_empty() {
        bail!("no VMs to replay");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replay ran with the recorded topology path whenever a file existed there: on another
    /// jumpbox (or after an edit) that file is another topology, and the run's record then
    /// pointed `down --run` at its nodes. The path is kept only for the same bytes.
    #[test]
    fn regression_replay_records_the_topology_path_only_if_it_still_holds_the_bundles_topology() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lab.yaml");
        assert_eq!(recorded_path_if_same(&p, b"nodes: {}\n"), None, "no file there");
        std::fs::write(&p, b"nodes: {other: {}}\n").unwrap();
        assert_eq!(recorded_path_if_same(&p, b"nodes: {}\n"), None, "another topology there");
        std::fs::write(&p, b"nodes: {}\n").unwrap();
        assert_eq!(recorded_path_if_same(&p, b"nodes: {}\n"), Some(p.clone()));
        // The original of a bundle whose secrets were redacted: the same topology.
        let secret = b"nodes:\n  DUT1: {type: DUT, host: h, password: hunter2}\n";
        std::fs::write(&p, secret).unwrap();
        assert_eq!(recorded_path_if_same(&p, &bundle::redact_secrets(secret)), Some(p.clone()));
    }

    /// Replay chose its nodes from `vms:` entries only: a chain's VMs (CSIT's main case) had no
    /// node, so no facts were gathered and replay said "no VMs to replay" (or, with `vms:` on
    /// another node, every chain VM was drift), and a chain node's redacted password went
    /// unnoticed. Chain VMs count as `up` counts them now.
    #[test]
    fn regression_replay_selects_the_nodes_of_chain_vms() {
        let text = "nodes:\n  DUT1: {type: DUT, host: h, password: \"<redacted>\"}\n  DUT2: {type: DUT, host: h2}\n\
                    chains:\n  - {node: DUT1, nf_chains: 1, nf_nodes: 2, vnf: vppip4_2vhostvr1024, vs_dtc: 1, nf_dtc: 1,\n\
                    \x20    tg_macs: [\"3c:fd:fe:aa:bb:01\", \"3c:fd:fe:aa:bb:02\"]}\n";
        let topo = crate::topology::load_str_with(text, std::path::Path::new("t.yaml"), &|_| true).unwrap();
        assert_eq!(selected_nodes(&topo, &[]), ["DUT1"]);
        assert_eq!(selected_nodes(&topo, &["DUT1_2".into()]), ["DUT1"]);
        assert!(selected_nodes(&topo, &["DUT9_1".into()]).is_empty());
        assert_eq!(redacted_node(&topo, &[]).as_deref(), Some("DUT1"));
    }

    /// Replay of a run whose topology file had changed recorded the bundle's copy, in the state
    /// directory, as the run's topology: `down --run` then resolved a relative `identity_file`
    /// or `known_hosts` there, failed auth or the host key check, and left the VMs running.
    /// The copy names them absolutely.
    #[test]
    fn regression_a_replayed_runs_copy_keeps_relative_key_paths_working() {
        let text = "nodes:\n  DUT1: {type: DUT, host: h, identity_file: keys/lab, known_hosts: kh}\n  DUT2: {type: DUT, host: h, identity_file: /abs/k, known_hosts: ~/kh}\n";
        let out = with_absolute_local_paths(text, Path::new("/lab/topo/lab.yaml"));
        let topo = crate::topology::load_str_with(&out, Path::new("/state/runs/r1/topology.yaml"), &|_| true).unwrap();
        let d1 = &topo.nodes[0];
        assert_eq!(d1.known_hosts.as_deref(), Some(Path::new("/lab/topo/kh")));
        assert!(
            matches!(&d1.auth[0], crate::topology::Auth::IdentityFile { path, .. } if path == Path::new("/lab/topo/keys/lab"))
        );
        let d2 = &topo.nodes[1];
        assert!(matches!(&d2.auth[0], crate::topology::Auth::IdentityFile { path, .. } if path == Path::new("/abs/k")));
        // Nothing relative: the bytes stay as they were.
        let plain = "nodes:\n  DUT1: {type: DUT, host: h}\n";
        assert_eq!(with_absolute_local_paths(plain, Path::new("/lab/lab.yaml")), plain);
    }

    /// A bundle whose topology.yaml is a list, replayed with `--topology`: a panic (serde_yaml's
    /// `IndexMut` on a non-mapping) instead of an error.
    #[test]
    fn regression_a_frozen_topology_that_is_not_a_mapping_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let new = d.path().join("new.yaml");
        std::fs::write(&new, "nodes: {DUT1: {type: DUT, host: h}}\n").unwrap();
        let e = with_nodes_of("- a\n- b\n", &new).unwrap_err().to_string();
        assert!(e.contains("not a mapping"), "{e}");
        assert!(with_nodes_of("vms: []\n", &new).unwrap().contains("DUT1"));
    }
}
