//! One module per subcommand: glue between parsed arguments and the library.

pub mod bundle;
pub mod check;
pub mod down;
pub mod exec;
pub mod guest_exec;
pub mod logs;
pub mod ping;
pub mod render;
pub mod replay;
pub mod status;
pub mod up;
pub mod validate;

use std::path::Path;

use crate::cli::{GlobalArgs, Progress};
use crate::exit;
use crate::report::Style;
use crate::run::manifest::VmRecord;
use crate::ssh::{ConnectOptions, Session, SshError, SshTarget};
use crate::templates::{TemplateError, Templates};
use crate::topology::{Topology, TopologyError};

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Templates per `--templates`.
pub fn templates(g: &GlobalArgs) -> Result<Templates, TemplateError> {
    match &g.templates {
        Some(dir) => Templates::with_dir(dir),
        None => Ok(Templates::embedded()),
    }
}

/// Load a topology with the templates from `--templates` (for `vnf` checks).
pub fn load_topology(g: &GlobalArgs, path: &Path) -> anyhow::Result<(Topology, Templates)> {
    let templates = templates(g)?;
    let topo = crate::topology::load(path, &templates)?;
    Ok((topo, templates))
}

/// Progress style from `--progress`.
pub fn style(g: &GlobalArgs) -> Style {
    match g.progress {
        Progress::Auto => Style::auto(),
        Progress::Bars => Style::Bars,
        Progress::Plain => Style::Plain,
        Progress::Never => Style::Never,
    }
}

/// A topology path as recorded in manifests: absolute, symlinks resolved where possible.
pub fn absolute(path: &Path) -> String {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
}

/// Write a report file the user named (`--junit`), creating its directory as `--artifacts`
/// does. Whole or not at all: a CI step reading it must never get a truncated XML, and a failed
/// write must not destroy the previous report.
pub fn write_report(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::run::record::write_atomically(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// SSH options from the global flags.
pub fn connect_options(g: &GlobalArgs) -> ConnectOptions {
    let mut o = ConnectOptions {
        connect_timeout: g.connect_timeout,
        auth_timeout: g.auth_timeout,
        command_timeout: g.command_timeout,
        accept_new_host_keys: g.accept_new_host_keys,
        max_parallel: g.max_parallel,
        ..ConnectOptions::default()
    };
    match &g.ssh_config {
        Some(p) if p.as_os_str() == "none" => o.ssh_config = None,
        Some(p) => o.ssh_config = Some(p.clone()),
        None => {}
    }
    o
}

/// `NODE: error` for a per-node error, without repeating the node when the error names it
/// already (SSH errors start with `NODE (host:port): …`).
pub fn node_error(node: &str, e: &str) -> String {
    if e.starts_with(&format!("{node}:")) || e.starts_with(&format!("{node} (")) {
        e.to_string()
    } else {
        format!("{node}: {e}")
    }
}

/// A plan error about a VM of `vms:`, as a topology diagnostic at that VM's entry
/// (`file:line:col: vms[i]: …`); other errors unchanged. Everything a plan refuses is an input
/// problem, so it should point into the file like the loader's errors do.
pub fn positioned(topo: &Topology, err: crate::plan::PlanError) -> anyhow::Error {
    use crate::plan::PlanError;
    let vm = match &err {
        PlanError::Invalid { vm, .. } | PlanError::Template { vm, .. } => Some(vm.as_str()),
        _ => None,
    };
    match vm.and_then(|v| topo.written.get(v)) {
        Some(w) => anyhow::Error::from(TopologyError::Invalid(vec![crate::topology::Diagnostic {
            file: topo.path.clone(),
            line: w.line,
            column: w.column,
            key: w.key.clone(),
            message: err.to_string(),
        }])),
        None => err.into(),
    }
}

/// Map an error that reached the CLI edge to its exit code.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<TopologyError>()
            || cause.is::<TemplateError>()
            || cause.is::<crate::plan::PlanError>()
            || cause.is::<crate::facts::store::FactsError>()
        {
            return exit::INVALID_INPUT;
        }
        if cause.downcast_ref::<crate::pipeline::bundle::BundleError>().is_some_and(|b| b.is_bad_input()) {
            return exit::INVALID_INPUT;
        }
        // A guest-exec error wraps its SSH error transparently: not a cause of its own.
        let ssh = cause.downcast_ref::<SshError>().or(match cause.downcast_ref() {
            Some(crate::run::guest::GuestExecError::Ssh(e)) => Some(e),
            _ => None,
        });
        if let Some(e) = ssh {
            // Lost mid-run counts as unreachable (README exit code 3), as in `up` and `down`.
            return if e.is_unreachable() || e.is_connection_lost() { exit::UNREACHABLE } else { exit::FAILED };
        }
    }
    exit::FAILED
}

/// Where a VM of some run lives: a session to its node, the node's name, the run and its record.
pub struct LocatedVm {
    pub session: Session,
    pub node: String,
    pub run_id: String,
    /// The node's run root (paths of the VM are recomputed from it, not read from the record).
    pub run_root: String,
    pub vm: VmRecord,
}

/// A dead QEMU is named as such, not reported as a closed channel by the bridge.
/// Returns the VM's guest agent socket (recomputed, not read from the manifest).
pub(crate) async fn live_agent_socket(s: &Session, run_root: &str, run_id: &str, vm: &str) -> anyhow::Result<String> {
    use crate::remote::{layout, process};
    let rd = layout::run_dir(run_root, run_id).map_err(anyhow::Error::msg)?;
    let paths = layout::vm_paths(&rd, vm).map_err(anyhow::Error::msg)?;
    let out = s.run_ok(&crate::ssh::RemoteCommand::sh(process::probe_script(&paths.pidfile)).sudo()).await?;
    match process::parse_probe(&out.stdout_str()) {
        (true, _) => Ok(paths.qga),
        (false, Some(pid)) => anyhow::bail!("VM {vm} (run {run_id}): qemu (pid {pid}) is not running"),
        (false, None) => anyhow::bail!("VM {vm} (run {run_id}): qemu is not running (no pid recorded)"),
    }
}

/// Find VM `name` in the newest matching run on the topology's DUTs (from the hosts' manifests).
/// Only the node the topology puts the VM on is asked, when the topology names it.
pub async fn locate_vm(
    g: &GlobalArgs,
    topology: Option<&Path>,
    run: Option<&str>,
    name: &str,
) -> anyhow::Result<LocatedVm> {
    let (topo, mut sel) = down::resolve(g, topology, run)?;
    // Read-only lookups: any run of the topology's nodes (a CI agent's too), the caller's first.
    sel.topology = None;
    sel.started_by = None;
    let me = crate::run::started_by();
    let opts = connect_options(g);
    let planned_on = topo.vm_names().into_iter().find(|(_, v)| v == name).map(|(n, _)| n);
    for node in topo.duts() {
        if planned_on.as_ref().is_some_and(|n| n != &node.name) {
            continue;
        }
        let session = Session::connect(&SshTarget::for_node(&topo, node), &opts).await?;
        let manifests: Vec<_> = crate::run::down::discover(&session, &node.name, &node.run_root)
            .await?
            .into_iter()
            .flatten()
            .filter(|m| sel.matches(m))
            .collect();
        if let Some((run_id, vm)) = newest_with_vm(manifests, name, &me) {
            return Ok(LocatedVm { session, node: node.name.clone(), run_id, run_root: node.run_root.clone(), vm });
        }
        session.close().await;
    }
    anyhow::bail!("VM {name} not found in any run on the topology's nodes")
}

/// The run to read VM `name` from: the newest of `me`'s runs that has it, else the newest of
/// anyone's (a CI agent's run, when the engineer has none of their own).
fn newest_with_vm(manifests: Vec<crate::run::manifest::Manifest>, name: &str, me: &str) -> Option<(String, VmRecord)> {
    manifests
        .into_iter()
        .flat_map(|m| {
            let key = (m.started_by == me, m.created_unix);
            let run_id = m.run_id;
            m.vms.into_iter().filter(|v| v.name == name).map(move |v| (key, run_id.clone(), v))
        })
        .max_by_key(|(key, _, _)| *key)
        .map(|(_, run_id, v)| (run_id, v))
}

#[cfg(test)]
mod locate_tests {
    use super::*;

    /// `logs`, `ping` and `guest-exec` with a topology and no `--run` looked only at the
    /// caller's own runs: a VM that `status` listed from a CI agent's run was "not found".
    /// Any run now counts, the caller's own first, newest first.
    #[test]
    fn regression_a_vm_of_another_users_run_is_found() {
        let m = |run: &str, by: &str, t: u64| {
            let text = format!(
                r#"{{"format":1,"run_id":"{run}","node":"DUT1","host":"h","topology":"/t.yaml","started_by":"{by}","created_unix":{t},"run_dir":"/run/harness/{run}","vms":[{{"name":"DUT1_1","qemu_id":1,"run_dir":"d","pidfile":"p","serial_log":"s","qmp":"q","qga":null,"state":"ready","pid":7,"pinned":[],"guest_interfaces":[]}}],"hugepages":[]}}"#
            );
            serde_json::from_str::<crate::run::manifest::Manifest>(&text).unwrap()
        };
        let pick = |ms: Vec<_>| newest_with_vm(ms, "DUT1_1", "me@box").map(|(r, _)| r);
        assert_eq!(pick(vec![m("ci-1", "ci@agent", 5)]).as_deref(), Some("ci-1"));
        assert_eq!(pick(vec![m("ci-1", "ci@agent", 5), m("ci-2", "ci@agent", 9)]).as_deref(), Some("ci-2"));
        assert_eq!(pick(vec![m("ci-2", "ci@agent", 9), m("mine", "me@box", 3)]).as_deref(), Some("mine"));
        assert_eq!(newest_with_vm(vec![m("ci-1", "ci@agent", 5)], "DUT1_9", "me@box"), None);
    }
}

#[cfg(test)]
mod exit_code_tests {
    use super::*;

    /// `guest-exec` turned its error into a string, and a transparent wrapper hides the SSH
    /// error from the cause chain anyway: an unreachable node exited 1, not 3.
    #[test]
    fn regression_a_guest_exec_ssh_error_keeps_its_exit_code() {
        let ssh = || SshError::Connect { node: "DUT1".into(), addr: "127.0.0.1:22".into(), message: "refused".into() };
        let e = anyhow::Error::new(crate::run::guest::GuestExecError::Ssh(ssh())).context("VM DUT1_1 on DUT1");
        assert_eq!(exit_code_for(&e), exit::UNREACHABLE);
        assert_eq!(exit_code_for(&anyhow::Error::new(ssh())), exit::UNREACHABLE);
        let other = anyhow::Error::new(crate::run::guest::GuestExecError::NoAgent);
        assert_eq!(exit_code_for(&other), exit::FAILED);
    }
}

#[cfg(test)]
mod report_tests {
    use super::*;
    use std::io::Read as _;

    /// `--junit FILE` was written in place (truncate, then write): a CI step reading it during
    /// the write saw a truncated XML, and a write that failed half-way left one for good.
    #[test]
    fn regression_a_report_is_replaced_whole_not_rewritten_in_place() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("out/junit.xml");
        write_report(&path, b"<old/>").unwrap();
        // A reader that opened the previous report keeps reading it whole.
        let mut reader = std::fs::File::open(&path).unwrap();
        write_report(&path, b"<testsuites>new</testsuites>").unwrap();
        let mut seen = String::new();
        reader.read_to_string(&mut seen).unwrap();
        assert_eq!(seen, "<old/>");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "<testsuites>new</testsuites>");
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["junit.xml"], "no temporary file left");
    }
}
