//! Artifacts of a run for CI: what a person needs to understand a failure without the lab.
//!
//! ```text
//! DIR/events.jsonl  result.json  junit.xml  bundle.tar.gz  missing.txt
//! DIR/<node>/manifest.json  facts.json
//! DIR/<node>/<vm>/serial.log  argv.txt  argv.json  files/<name>  error.txt  qemu-stderr.txt
//! DIR/<node>/<vm>/collect/NN-<cmd>.txt  NN-<cmd>.json (parsed)  collect.json
//! ```
//!
//! Remote sources are read while the VMs still run (`up` calls this before cleanup, `down`
//! before stopping). Every remote read has its own timeout, so a dead guest or a wedged host
//! costs seconds, not the run; whatever could not be had is listed in `missing.txt`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use futures::future::join_all;

use super::counters::{self, Collected};
use crate::facts::HostFacts;
use crate::run::manifest::{self, FileRecord};
use crate::ssh::{RemoteCommand, Session};

/// One remote file read (serial log, manifest).
const READ_TIMEOUT: Duration = Duration::from_secs(15);
/// At most this much of the end of a serial log.
const SERIAL_MAX_BYTES: u64 = 4 << 20;

/// A VM as artifact collection sees it, from `up`'s plan and result or from a manifest.
#[derive(Debug, Clone)]
pub struct VmSource {
    pub name: String,
    pub serial_log: String,
    pub qga: Option<String>,
    pub argv: Vec<String>,
    pub files: Vec<FileRecord>,
    pub error: Option<String>,
    /// QEMU's stderr when it failed to start (it daemonizes after that, and stderr goes away).
    pub qemu_stderr: Option<String>,
    /// The guest is believed up: worth asking its agent.
    pub ready: bool,
    pub commands: Vec<Vec<String>>,
}

/// A node's share: its session, run directory, facts and VMs.
#[derive(Clone)]
pub struct NodeSource {
    pub name: String,
    pub session: Session,
    pub run_dir: String,
    pub facts: Option<HostFacts>,
    pub vms: Vec<VmSource>,
}

/// Counters of every ready VM with commands, all nodes at once: node -> vm -> outputs.
pub async fn counters(nodes: &[NodeSource]) -> BTreeMap<String, BTreeMap<String, Vec<Collected>>> {
    let per_node = join_all(nodes.iter().map(|n| async move {
        let vms = join_all(n.vms.iter().filter(|v| v.ready && !v.commands.is_empty()).map(|v| async move {
            (v.name.clone(), counters::run_all(&n.session, v.qga.as_deref(), &v.commands).await)
        }))
        .await;
        (n.name.clone(), vms.into_iter().collect::<BTreeMap<_, _>>())
    }))
    .await;
    per_node.into_iter().filter(|(_, v)| !v.is_empty()).collect()
}

/// Write every node's artifacts under `dir`; returns what is missing, one line each.
pub async fn write_nodes(
    dir: &Path,
    nodes: &[NodeSource],
    collected: &BTreeMap<String, BTreeMap<String, Vec<Collected>>>,
) -> Vec<String> {
    let empty = BTreeMap::new();
    let missing = join_all(nodes.iter().map(|n| write_node(dir, n, collected.get(&n.name).unwrap_or(&empty)))).await;
    missing.into_iter().flatten().collect()
}

async fn write_node(dir: &Path, n: &NodeSource, collected: &BTreeMap<String, Vec<Collected>>) -> Vec<String> {
    let ndir = dir.join(safe(&n.name));
    let mut missing = Vec::new();
    if let Err(e) = std::fs::create_dir_all(&ndir) {
        return vec![format!("{}: cannot create {}: {e}", n.name, ndir.display())];
    }
    match &n.facts {
        Some(f) => put(&ndir.join("facts.json"), &serde_json::to_vec_pretty(f).expect("serialisable"), &mut missing),
        None => missing.push(format!("{}/facts.json: never gathered (node not reached)", n.name)),
    }
    if !n.run_dir.is_empty() {
        let path = manifest::path(&n.run_dir, &n.name);
        match read_remote(&n.session, &path, None).await.and_then(manifest_sized) {
            Ok(b) => put(&ndir.join("manifest.json"), &b, &mut missing),
            Err(e) => missing.push(format!("{}/manifest.json: {e}", n.name)),
        }
    } else {
        missing.push(format!("{}/manifest.json: never written (node not planned)", n.name));
    }
    let per_vm = join_all(n.vms.iter().map(|v| write_vm(&ndir, &n.name, &n.session, v, collected.get(&v.name)))).await;
    missing.extend(per_vm.into_iter().flatten());
    missing
}

async fn write_vm(
    ndir: &Path,
    node: &str,
    session: &Session,
    v: &VmSource,
    collected: Option<&Vec<Collected>>,
) -> Vec<String> {
    let vdir = ndir.join(safe(&v.name));
    // The VM's directory holds this run's files only: an artifacts directory reused by a nightly
    // job kept yesterday's error.txt beside today's passing VM. (A symlink is removed, not
    // followed.)
    let _ = std::fs::remove_dir_all(&vdir);
    let mut missing = Vec::new();
    let what = |f: &str| format!("{node}/{}/{f}", v.name);
    if let Err(e) = std::fs::create_dir_all(vdir.join("files")) {
        return vec![format!("{}: {e}", what(""))];
    }
    let argv_txt = v.argv.iter().map(|a| crate::quote::quote(a)).collect::<Vec<_>>().join(" \\\n    ") + "\n";
    put(&vdir.join("argv.txt"), argv_txt.as_bytes(), &mut missing);
    put(&vdir.join("argv.json"), &serde_json::to_vec_pretty(&v.argv).expect("serialisable"), &mut missing);
    for f in &v.files {
        let name = safe(f.path.rsplit('/').next().unwrap_or(&f.path));
        put(&vdir.join("files").join(name), f.content.as_bytes(), &mut missing);
    }
    if let Some(e) = &v.error {
        put(&vdir.join("error.txt"), format!("{e}\n").as_bytes(), &mut missing);
    }
    if let Some(s) = &v.qemu_stderr {
        put(&vdir.join("qemu-stderr.txt"), s.as_bytes(), &mut missing);
    }
    match read_remote(session, &v.serial_log, Some(SERIAL_MAX_BYTES)).await {
        Ok(b) => put(&vdir.join("serial.log"), &b, &mut missing),
        Err(e) => missing.push(format!("{}: {e}", what("serial.log"))),
    }
    if !v.commands.is_empty() {
        match collected {
            Some(c) => write_collected(&vdir, c, &what, &mut missing),
            None => missing.push(format!("{}: not run: the VM was not ready", what("collect/"))),
        }
    }
    missing
}

fn write_collected(vdir: &Path, c: &[Collected], what: &dyn Fn(&str) -> String, missing: &mut Vec<String>) {
    let cdir = vdir.join("collect");
    if let Err(e) = std::fs::create_dir_all(&cdir) {
        missing.push(format!("{}: {e}", what("collect/")));
        return;
    }
    for (i, out) in c.iter().enumerate() {
        let stem = out.file_stem(i);
        if let Some(e) = &out.error {
            missing.push(format!("{}: {}: {e}", what(&format!("collect/{stem}")), out.argv.join(" ")));
        }
        put(&cdir.join(format!("{stem}.txt")), out.stdout.as_bytes(), missing);
        if !out.stderr.is_empty() {
            put(&cdir.join(format!("{stem}.stderr.txt")), out.stderr.as_bytes(), missing);
        }
        if let Some(p) = &out.parsed {
            put(&cdir.join(format!("{stem}.json")), &serde_json::to_vec_pretty(p).expect("serialisable"), missing);
        }
    }
    put(&vdir.join("collect.json"), &serde_json::to_vec_pretty(c).expect("serialisable"), missing);
}

/// Most of a manifest read into the artifacts (one byte more is read to tell).
const MANIFEST_MAX_BYTES: u64 = 16 << 20;

/// A manifest is kilobytes: a host file that is not one (corrupt, or hostile) must not fill
/// the jumpbox's artifacts; read with `head -c` one byte past the limit, refused past it.
fn manifest_sized(b: Vec<u8>) -> Result<Vec<u8>, String> {
    if b.len() as u64 > MANIFEST_MAX_BYTES { Err(format!("larger than {MANIFEST_MAX_BYTES} bytes")) } else { Ok(b) }
}

/// `sudo head` of a remote file (at most one byte over [`MANIFEST_MAX_BYTES`]), or the last
/// `max` bytes, bounded by [`READ_TIMEOUT`].
async fn read_remote(session: &Session, path: &str, max: Option<u64>) -> Result<Vec<u8>, String> {
    let argv: Vec<String> = match max {
        Some(m) => vec!["tail".into(), "-c".into(), m.to_string(), path.into()],
        None => vec!["head".into(), "-c".into(), (MANIFEST_MAX_BYTES + 1).to_string(), path.into()],
    };
    let cmd = RemoteCommand::new(argv).sudo().timeout(READ_TIMEOUT);
    match tokio::time::timeout(READ_TIMEOUT + Duration::from_secs(5), session.run(&cmd)).await {
        Err(_) => Err(format!("no answer within {READ_TIMEOUT:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(o)) if o.success() => Ok(o.stdout),
        Ok(Ok(o)) => Err(o.stderr_str().trim().to_string()),
    }
}

/// Each file whole or not at all: an upload step must not publish a truncated one as complete.
fn put(path: &Path, bytes: &[u8], missing: &mut Vec<String>) {
    if let Err(e) = crate::run::record::write_atomically(path, bytes) {
        missing.push(format!("{}: {e}", path.display()));
    }
}

/// A node or VM name as one path component (names are validated, but a path must never
/// escape the artifacts directory whatever they hold).
pub fn safe(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    if s.is_empty() || s.chars().all(|c| c == '.') { "_".into() } else { s }
}

/// `missing.txt`: one line per missing source (an empty file when nothing is missing).
pub fn write_missing(dir: &Path, missing: &[String]) -> std::io::Result<()> {
    let text: String = missing.iter().map(|m| format!("{m}\n")).collect();
    crate::run::record::write_atomically(&dir.join("missing.txt"), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An artifacts directory reused by a nightly job kept a VM's stale files: yesterday's
    /// `error.txt` sat beside today's run, where the VM passed. Each VM's directory is this
    /// run's alone now.
    #[test]
    fn regression_a_reused_artifacts_directory_keeps_no_stale_vm_files() {
        let d = tempfile::tempdir().unwrap();
        let host = crate::ssh::fake::FakeHost::new("DUT1", |_| crate::ssh::fake::Reply::ok("serial\n"));
        let session = Session::with_transport("DUT1", host as std::sync::Arc<dyn crate::ssh::Transport>);
        let vm = |error: Option<&str>| VmSource {
            name: "DUT1_1".into(),
            serial_log: "/run/harness/r/DUT1_1/serial.log".into(),
            qga: None,
            argv: vec!["qemu".into()],
            files: vec![],
            error: error.map(str::to_string),
            qemu_stderr: None,
            ready: error.is_none(),
            commands: vec![],
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(write_vm(d.path(), "DUT1", &session, &vm(Some("boot timeout")), None));
        assert!(d.path().join("DUT1_1/error.txt").exists());
        let missing = rt.block_on(write_vm(d.path(), "DUT1", &session, &vm(None), None));
        assert!(missing.is_empty(), "{missing:?}");
        assert!(!d.path().join("DUT1_1/error.txt").exists(), "yesterday's error.txt is still there");
        assert!(d.path().join("DUT1_1/serial.log").exists());
    }

    /// The manifest was read whole with `sudo cat` and buffered: a huge file in its place
    /// went into the jumpbox's memory and artifacts. Read with `head -c` and refused past 16 MiB.
    #[test]
    fn regression_an_oversized_manifest_is_not_collected() {
        assert!(manifest_sized(vec![b'x'; MANIFEST_MAX_BYTES as usize + 1]).is_err());
        assert!(manifest_sized(vec![b'x'; 100]).is_ok());
    }

    #[test]
    fn names_never_escape() {
        assert_eq!(safe("DUT1_1"), "DUT1_1");
        assert_eq!(safe("../x"), ".._x");
        assert_eq!(safe(".."), "_");
        assert_eq!(safe("a/b c"), "a_b_c");
    }
}
