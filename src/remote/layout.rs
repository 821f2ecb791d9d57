//! Where a run lives on a node, computed, never read back: `<run_root>/<run_id>/<vm>/…`.
//!
//! `up` plans these paths; `down`, `status` and cleanup recompute them from the node's
//! `run_root` plus a validated run id and VM name instead of trusting paths written in a
//! manifest (a tampered or corrupted manifest must not make root kill, unmount or delete
//! anything else). The run directory carries an owner file, written when `up` claims the
//! directory: its first line is the claiming invocation's nonce (so the nodes of one run
//! sharing a host accept each other, and a second `up` with the same id is refused), its second
//! line who started the run (so `down` can clean a directory left without a manifest).

use crate::quote::quote;

/// The owner file inside a run directory.
pub const OWNER_FILE: &str = ".owner";

/// Why `run_id` cannot name a run directory, or `None`.
pub fn run_id_problem(run_id: &str) -> Option<&'static str> {
    let ok = !run_id.is_empty()
        && run_id.len() <= 128
        && run_id != "."
        && run_id != ".."
        && !run_id.starts_with('.')
        && run_id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    (!ok).then_some("use only letters, digits, `-`, `_` and `.`, not starting with `.`, at most 128 characters")
}

/// Why `name` cannot be a VM or node name in a path, or `None` (the topology's own rule).
pub fn name_problem(name: &str) -> Option<String> {
    crate::topology::validate::name_problem(name)
}

/// `<run_root>/<run_id>` for a valid run id.
pub fn run_dir(run_root: &str, run_id: &str) -> Result<String, String> {
    if let Some(p) = run_id_problem(run_id) {
        return Err(format!("run id {run_id:?}: {p}"));
    }
    let root = run_root.trim_end_matches('/');
    if !root.starts_with('/') || root.split('/').any(|c| c == "." || c == "..") {
        return Err(format!("run_root {run_root:?} is not an absolute, normalised path"));
    }
    Ok(format!("{root}/{run_id}"))
}

/// The paths of one VM, recomputed the way the plan computes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    pub name: String,
    pub dir: String,
    pub pidfile: String,
    pub qmp: String,
    pub qga: String,
    pub serial_log: String,
}

pub fn vm_paths(run_dir: &str, vm: &str) -> Result<VmPaths, String> {
    if let Some(p) = name_problem(vm) {
        return Err(format!("VM name {vm:?} {p}"));
    }
    let dir = format!("{run_dir}/{vm}");
    Ok(VmPaths {
        name: vm.to_string(),
        pidfile: format!("{dir}/qemu.pid"),
        qmp: format!("{dir}/qmp.sock"),
        qga: format!("{dir}/qga.sock"),
        serial_log: format!("{dir}/serial.log"),
        dir,
    })
}

/// The hugepage journal of one node of a run: what the allocation did, written on the host as
/// it does it (see [`crate::remote::hugepages::allocate_script`]).
pub fn hugepage_journal(run_dir: &str, node: &str) -> String {
    format!("{run_dir}/hugepages-{node}.journal")
}

/// Shell function `safe_dir DIR`: true when DIR exists, is a real directory (symlinks resolved)
/// and resolves to exactly `realpath(run_root)/<rest>`: nothing outside the run root, no symlink
/// leading elsewhere. Define `root` before use (`root=<run_root>`).
pub fn safe_dir_fn() -> &'static str {
    r#"safe_dir() { [ -d "$1" ] && [ ! -L "$1" ] && rr=$(realpath -e -- "$root" 2>/dev/null) && r=$(realpath -e -- "$1" 2>/dev/null) && [ "$r" = "$rr/${1#"$root"/}" ] && [ "${1#"$root"/}" != "$1" ]; }
"#
}

/// Shell function `claimed DIR NONCE`: the run directory's owner file names this invocation.
pub fn claimed_fn() -> String {
    format!(
        "claimed() {{ _claimed_by=; [ -f \"$1/{o}\" ] && [ ! -L \"$1/{o}\" ] && {{ read -r _claimed_by < \"$1/{o}\"; }} 2>/dev/null; [ -n \"$_claimed_by\" ] && [ \"$_claimed_by\" = \"$2\" ]; }}\n",
        o = OWNER_FILE
    )
}

/// Script claiming `<run_root>/<run_id>` for this invocation (`nonce`) atomically: a private
/// directory with the owner file is renamed into place, so the run directory never exists
/// without its owner. Another node of the same invocation finds its own nonce and goes on; any
/// other existing directory is refused (exit 17): the run id is in use.
///
/// The owner file's lines: the nonce, `started_by`, and the topology path (base64: any path,
/// one line), so `down TOPOLOGY` cleans a manifest-less directory only of its own topology.
pub fn claim_script(
    run_root: &str,
    run_dir: &str,
    node: &str,
    nonce: &str,
    started_by: &str,
    topology: &str,
) -> String {
    use base64::Engine as _;
    let tmp = format!("{}/.claim-{nonce}-{node}", run_root.trim_end_matches('/'));
    let topology = base64::engine::general_purpose::STANDARD.encode(topology);
    format!(
        r#"set -e
root={root}; rd={rd}; tmp={tmp}; nonce={nonce}
{claimed}mkdir -p -m 0755 "$root"
# Every run directory is created, written and removed below the root as root: a root another
# user owns or may write to (made before us, or in a shared directory) lets them plant
# symlinks there.
set -- $(stat -c '%u %a' -- "$root"); m=000$2; m=${{m#"${{m%???}}"}}
if [ -L "$root" ] || [ "$1" != "$(id -u)" ] || case "$m" in ?[2367]?|??[2367]) true;; *) false;; esac; then
  echo "run_root $root is a symlink, not owned by uid $(id -u) or writable by others (owner uid $1, mode $2): another user could plant files in it; make it a directory owned by root, mode 0755" >&2; exit 1
fi
if [ ! -e "$rd" ] && [ ! -L "$rd" ]; then
  rm -rf -- "$tmp"; mkdir -m 0755 "$tmp"
  # A failed write (a full disk) must not leave the private directory behind.
  printf '%s\n%s\n%s\n' "$nonce" {by} {topology} > "$tmp/{o}" || {{ rm -rf -- "$tmp"; exit 1; }}
  mv -T -- "$tmp" "$rd" 2>/dev/null || rm -rf -- "$tmp"
fi
claimed "$rd" "$nonce" || {{ echo "run id already in use on this host: $rd exists (another run; \`harness status\` shows it)" >&2; exit 17; }}
"#,
        root = quote(run_root),
        rd = quote(run_dir),
        tmp = quote(&tmp),
        nonce = quote(nonce),
        by = quote(started_by),
        topology = quote(&topology),
        claimed = claimed_fn(),
        o = OWNER_FILE,
    )
}

/// Exit status of [`claim_script`] when the run id is taken.
pub const CLAIM_TAKEN: u32 = 17;

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> std::process::Output {
        std::process::Command::new("sh").arg("-c").arg(script).output().unwrap()
    }

    #[test]
    fn run_ids_and_names_are_path_components() {
        assert!(run_dir("/run/harness", "r1").is_ok());
        for bad in ["", ".", "..", "../etc", "a/b", ".hidden", "a b", "x\ny"] {
            assert!(run_dir("/run/harness", bad).is_err(), "{bad:?}");
        }
        assert!(run_dir("relative", "r1").is_err());
        assert!(run_dir("/run/../etc", "r1").is_err());
        assert_eq!(run_dir("/run/harness/", "r1").unwrap(), "/run/harness/r1");
        assert!(vm_paths("/run/harness/r1", "../x").is_err());
        assert!(vm_paths("/run/harness/r1", "a/b").is_err());
        assert_eq!(vm_paths("/run/harness/r1", "DUT1_1").unwrap().pidfile, "/run/harness/r1/DUT1_1/qemu.pid");
    }

    /// Defect 1: a second `up` with a live run id must be refused; the nodes of one run (same
    /// nonce) sharing a host accept each other.
    #[test]
    fn regression_reused_run_id_is_refused_but_sibling_nodes_share_the_claim() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let (root, rd) = (root.to_str().unwrap(), format!("{}/r1", root.to_str().unwrap()));
        let a1 = sh(&claim_script(root, &rd, "DUT1", "nonceA", "me@h", "/t/a.yaml"));
        assert!(a1.status.success(), "{a1:?}");
        let a2 = sh(&claim_script(root, &rd, "DUT2", "nonceA", "me@h", "/t/a.yaml"));
        assert!(a2.status.success(), "sibling node refused: {a2:?}");
        let b = sh(&claim_script(root, &rd, "DUT1", "nonceB", "me@h", "/t/a.yaml"));
        assert_eq!(b.status.code(), Some(CLAIM_TAKEN as i32));
        assert!(String::from_utf8_lossy(&b.stderr).contains("already in use"));
        // An unowned directory (made by anything else) is refused too.
        std::fs::create_dir(format!("{root}/r2")).unwrap();
        let c = sh(&claim_script(root, &format!("{root}/r2"), "DUT1", "nonceC", "me@h", "/t/a.yaml"));
        assert_eq!(c.status.code(), Some(CLAIM_TAKEN as i32));
        let owner = std::fs::read_to_string(format!("{rd}/.owner")).unwrap();
        assert_eq!(owner, "nonceA\nme@h\nL3QvYS55YW1s\n", "nonce, owner, topology (base64)");
    }

    /// The claim accepted any existing `run_root`: one another user had made (in a shared
    /// directory such as the world-writable /run/lock, which validation let through) was theirs to
    /// fill with symlinks that root then wrote through (`.stopping -> /etc/shadow`). A root that
    /// is a symlink, someone else's, or writable by group or others is now refused.
    #[test]
    fn regression_a_run_root_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let claim = |root: &str| sh(&claim_script(root, &format!("{root}/r1"), "DUT1", "n", "me@h", "/t/a.yaml"));
        for (name, mode) in [("open", 0o777), ("sticky", 0o1777), ("group", 0o775), ("other", 0o757)] {
            let root = d.path().join(name);
            std::fs::create_dir(&root).unwrap();
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(mode)).unwrap();
            let out = claim(root.to_str().unwrap());
            assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
            assert!(String::from_utf8_lossy(&out.stderr).contains("writable by others"), "{out:?}");
            assert!(!root.join("r1").exists(), "{name}: claimed anyway");
        }
        let link = d.path().join("link");
        std::os::unix::fs::symlink(d.path().join("open"), &link).unwrap();
        assert_eq!(claim(link.to_str().unwrap()).status.code(), Some(1));
        let fine = d.path().join("fine");
        std::fs::create_dir(&fine).unwrap();
        std::fs::set_permissions(&fine, std::fs::Permissions::from_mode(0o1755)).unwrap();
        assert!(claim(fine.to_str().unwrap()).status.success());
        assert!(crate::topology::validate::run_root_problem("/run/lock/harness").is_some());
        assert!(crate::topology::validate::run_root_problem("/var/lock/h").is_some());
    }

    #[test]
    fn safe_dir_refuses_symlinks_and_escapes() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("r1/vm")).unwrap();
        std::fs::create_dir_all(d.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(d.path().join("elsewhere"), root.join("r1/link")).unwrap();
        let root = root.to_str().unwrap();
        let check =
            |p: &str| sh(&format!("root={}\n{}safe_dir {}", quote(root), safe_dir_fn(), quote(p))).status.success();
        assert!(check(&format!("{root}/r1/vm")));
        assert!(!check(&format!("{root}/r1/link")));
        assert!(!check(&format!("{root}/r1/vm/../../../elsewhere")));
        assert!(!check(&format!("{root}//")));
        assert!(!check(root));
    }
}
