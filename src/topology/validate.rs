//! Checks and defaults that span several VMs: `qemu_id` assignment and uniqueness per node,
//! default and unique names, and host resources that two VMs on one node cannot share
//! (CPUs, vfio-pci devices, vhost-user sockets, forwarded host ports).
//!
//! Also the checks at the security boundary: values that become remote paths, file lines or
//! socat addresses ([`name_problem`], [`run_root_problem`], [`socket_path_problem`],
//! [`template_value_problem`]). A topology file is input, not trusted configuration: a node
//! name like `../../etc/cron.d/x` or a `vars` value with a newline must never reach a host.

use std::collections::{BTreeMap, BTreeSet};

use super::cx::{Cx, LoadedChain, VmDraft};
use super::model::{Vm, Written};
use super::yaml::Pos;

/// Longest node or VM name: it becomes a directory name (at most 255 bytes) below the run
/// directory, with room to spare for what is added to it.
pub const MAX_NAME_LEN: usize = 64;

/// Why `s` cannot be a node or VM name, or `None`. Names become directories on the hosts, lines
/// of the guest's init script and terminal output: letters, digits, `_`, `-` and `.`, not
/// starting with `.` (no `..`, no hidden files).
pub(crate) fn name_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".into());
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || "_-.".contains(*c))) {
        return Some(format!("may only contain letters, digits, `_`, `-` and `.` (found {})", describe(c)));
    }
    if s.starts_with('.') {
        return Some("must not start with `.`".into());
    }
    if s.len() > MAX_NAME_LEN {
        return Some(format!("is longer than {MAX_NAME_LEN} characters"));
    }
    None
}

/// Why `s`, a valid name, cannot be a VM's: its directory sits beside the run's own files
/// (`manifest-<node>.json`, `hugepages-<node>.journal`), which the host's scripts find by name.
fn vm_name_problem(s: &str) -> Option<String> {
    let reserved = (s.starts_with("manifest-") && s.ends_with(".json"))
        || (s.starts_with("hugepages-") && s.ends_with(".journal"));
    reserved.then(|| "is the name of a run file (`manifest-*.json`, `hugepages-*.journal`)".to_string())
}

/// `3c:fd:fe:aa:bb:01`: six pairs of hex digits separated by `:`.
pub(crate) fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A character as messages show it: control and space characters by code point, so that the
/// message itself stays one printable line.
fn describe(c: char) -> String {
    if c.is_control() || c.is_whitespace() { format!("U+{:04X}", c as u32) } else { format!("`{c}`") }
}

/// Sticky world-writable directories: another user can create (or symlink) our run directory
/// there before we do.
const WORLD_WRITABLE: &[&str] = &["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock"];

/// Why `s` cannot be a `run_root`, or `None`. It is the parent of every run directory that
/// `down` later removes as root, and the QMP/QGA sockets below it are reached through socat:
/// a normalised absolute path, not `/`, not in a world-writable directory, socat-safe.
pub(crate) fn run_root_problem(s: &str) -> Option<String> {
    if !s.starts_with('/') {
        return Some(format!("must be an absolute path (found `{}`)", s.escape_debug()));
    }
    if s == "/" {
        return Some("must not be `/`".into());
    }
    if let Some(what) = crate::quote::socat_unsafe_char(s) {
        return Some(format!("must not contain {what}: the sockets below it are reached through socat"));
    }
    if let Some(p) = normalised_problem(s) {
        return Some(p);
    }
    if let Some(w) = WORLD_WRITABLE.iter().find(|w| s == **w || s.starts_with(&format!("{w}/"))) {
        return Some(format!("must not be in the world-writable {w}: another user could plant the run directory"));
    }
    // A kernel guest sees the host's / over 9p and mounts its own file systems on these: a run
    // directory below one is hidden from the guest (its startup.conf and .exec never found).
    if let Some(m) = GUEST_MOUNTS.iter().find(|m| s == **m || s.starts_with(&format!("{m}/"))) {
        return Some(format!(
            "must not be in {m}: a kernel guest mounts its own file system there and would not see the run directory"
        ));
    }
    None
}

/// Where the guest's init mounts (besides `/run` and `/tmp`, which it handles).
const GUEST_MOUNTS: &[&str] = &["/mnt", "/proc", "/sys", "/dev"];

/// Why `s` cannot be a socket path the VM's QEMU or socat is given, or `None`. Normalised, so
/// that two spellings of one socket (`/run/vpp//a`, `/run/vpp/./a`) are seen as one.
pub(crate) fn socket_path_problem(s: &str) -> Option<String> {
    if let Some(what) = crate::quote::socat_unsafe_char(s) {
        return Some(format!(
            "must not contain {what}: socket paths are parsed as socat and QEMU options (`,` `:` `!` quotes ...)"
        ));
    }
    normalised_problem(s)
}

/// `s` is not a normalised path: `//`, a trailing `/`, or `.`/`..` components.
fn normalised_problem(s: &str) -> Option<String> {
    if s.contains("//") || (s.len() > 1 && s.ends_with('/')) {
        return Some(format!("must be a normalised path without `//` or a trailing `/` (found `{s}`)"));
    }
    if s.split('/').any(|c| c == "." || c == "..") {
        return Some(format!("must not contain `.` or `..` components (found `{s}`)"));
    }
    None
}

/// Directories a hugetlbfs mount would hide the host's own files in (or their parents).
const SYSTEM_DIRS: &[&str] = &[
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc", "/root", "/run", "/sbin", "/srv",
    "/sys", "/tmp", "/usr", "/var", "/mnt", "/media",
];

/// Why `s` cannot be a hugetlbfs mount point (`hugepages.mounts`), or `None`: the kernel writes
/// whitespace in `/proc/mounts` as octal escapes (the host's mount would not be recognised),
/// and the host's hugepage journal, which says what to unmount, is one space-separated line per
/// entry.
/// It is also where `allocate: true` mounts hugetlbfs as root: an absolute, normalised path, not
/// a system directory (`/etc`, `/run`, ...) that the mount would hide; the host refuses a
/// non-empty directory too.
pub(crate) fn mount_path_problem(s: &str) -> Option<String> {
    if let Some(c) = s.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Some(format!(
            "must not contain whitespace or control characters (found {}): /proc/mounts escapes them",
            describe(c)
        ));
    }
    if !s.starts_with('/') {
        return Some(format!("must be an absolute path (found `{s}`)"));
    }
    if let Some(p) = normalised_problem(s) {
        return Some(p);
    }
    if SYSTEM_DIRS.contains(&s) || s.starts_with("/proc/") || s.starts_with("/sys/") {
        return Some(format!("must not be the system directory {s}: hugetlbfs mounted there would hide it"));
    }
    None
}

/// Why `s` cannot be a template value (`vars`), or `None`: a newline would add lines to
/// startup.conf or the `.exec` file, and other control characters have no business there.
pub(crate) fn template_value_problem(s: &str) -> Option<String> {
    let c = s.chars().find(|c| c.is_control() && *c != '\t')?;
    Some(format!(
        "must not contain control characters (found U+{:04X}); template values are written into config lines",
        c as u32
    ))
}

/// Report [`template_value_problem`] at `pos`.
pub(crate) fn check_template_value(cx: &mut Cx, pos: Pos, key: &str, value: &str) {
    if let Some(m) = template_value_problem(value) {
        cx.err(pos, key, m);
    }
}

/// `run_root` as written if it is acceptable; otherwise report at `pos` and use the default.
pub(crate) fn check_run_root(cx: &mut Cx, pos: Pos, key: &str, value: String) -> String {
    match run_root_problem(&value) {
        None => value,
        Some(m) => {
            cx.err(pos, key, m);
            "/run/harness".to_string()
        }
    }
}

/// Assign ids and names, then check what VMs on one node (or in the file) must not share.
/// The chains' VMs come first: their ids (`1..=C×N` on the node), names and sockets are CSIT's
/// and fixed, so a `vms:` entry must keep clear of them and an automatic id skips them.
pub(crate) fn finish_vms(
    cx: &mut Cx,
    mut drafts: Vec<VmDraft>,
    chains: &[LoadedChain],
) -> (Vec<Vm>, BTreeMap<String, Written>) {
    let duplicate_id = assign_ids(cx, &mut drafts, chains);
    check_names(cx, &drafts, chains, &duplicate_id);
    check_resources(cx, &drafts, chains);
    let written = drafts
        .iter()
        .map(|d| {
            let w = Written { line: d.spans.pos.line, column: d.spans.pos.column, key: d.spans.path.clone() };
            (d.vm.name.clone(), w)
        })
        .collect();
    (drafts.into_iter().map(|d| d.vm).collect(), written)
}

/// `qemu_id` per VM (explicit, else the node's next free one) and the default names. Returns
/// the drafts whose explicit id is a duplicate (their default names repeat that problem).
fn assign_ids(cx: &mut Cx, drafts: &mut [VmDraft], chains: &[LoadedChain]) -> BTreeSet<usize> {
    // Explicit ids first, so an automatic id never takes one written later in the file.
    let mut used: BTreeMap<(String, u32), String> = BTreeMap::new();
    for c in chains {
        for (q, _) in c.def.vm_ids() {
            used.insert((c.def.spec.node.clone(), q), c.owner());
        }
    }
    let mut duplicate_id = BTreeSet::new();
    for (i, d) in drafts.iter().enumerate() {
        if let Some(id) = d.explicit_id {
            let key = (d.vm.node.clone(), id);
            if let Some(first) = used.get(&key) {
                duplicate_id.insert(i);
                let pos = d.spans.qemu_id.unwrap_or(d.spans.pos);
                cx.err(
                    pos,
                    &format!("{}.qemu_id", d.spans.path),
                    format!("qemu_id {id} is already used on node {} by {first}", d.vm.node),
                );
            } else {
                used.insert(key, d.spans.path.clone());
            }
        }
    }
    for d in drafts.iter_mut() {
        let id = match d.explicit_id {
            Some(id) => id,
            None => {
                let free = (1..=255u32).find(|i| !used.contains_key(&(d.vm.node.clone(), *i)));
                let Some(id) = free else {
                    cx.err(d.spans.pos, &d.spans.path, format!("no free qemu_id (1-255) left on node {}", d.vm.node));
                    continue;
                };
                used.insert((d.vm.node.clone(), id), d.spans.path.clone());
                id
            }
        };
        d.vm.qemu_id = id;
        if !d.explicit_name {
            d.vm.name = format!("{}_{}", d.vm.node, id);
        }
    }
    duplicate_id
}

/// Name rules the alphabet check leaves, socket path characters, and unique names.
fn check_names(cx: &mut Cx, drafts: &[VmDraft], chains: &[LoadedChain], duplicate_id: &BTreeSet<usize>) {
    // The loader checks the alphabet of explicit names. This adds what the alphabet allows but
    // a name must not be (a leading `.`, too long), for default `<node>_<id>` names too: a
    // 64-character node name with `qemu_id: 200` made a 68-character name that validated, and
    // then neither `up`'s cleanup nor `down` could build its paths, so its QEMU was left running.
    for d in drafts {
        // A default name of a node whose own name is bad repeats that node's error.
        if !d.explicit_name && name_problem(&d.vm.node).is_some() {
            continue;
        }
        if let Some(m) = name_problem(&d.vm.name).or_else(|| vm_name_problem(&d.vm.name)) {
            let (pos, key, m) = match (d.explicit_name, d.spans.name) {
                (true, Some(p)) => (p, format!("{}.name", d.spans.path), m),
                (true, None) => (d.spans.pos, format!("{}.name", d.spans.path), m),
                (false, _) => (
                    d.spans.pos,
                    d.spans.path.clone(),
                    format!("the default name `{}` {m}: give the VM a `name`", d.vm.name),
                ),
            };
            cx.err(pos, &key, m);
        }
        for (sock, pos, key) in &d.spans.sockets {
            if let Some(m) = socket_path_problem(sock) {
                cx.err(*pos, key, m);
            }
        }
    }

    for c in chains.iter().filter(|c| name_problem(&c.def.spec.node).is_none()) {
        if let Some((name, m)) = c.def.vm_ids().into_iter().find_map(|(_, n)| name_problem(&n).map(|m| (n, m))) {
            let pos = Pos { line: c.def.line, column: c.def.column };
            cx.err(pos, &c.def.path, format!("the chain's VM name `{name}` {m}: use a shorter node name"));
        }
    }

    let chain_owners: Vec<String> = chains.iter().map(LoadedChain::owner).collect();
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    let chain_names: Vec<(String, usize)> =
        chains.iter().enumerate().flat_map(|(i, c)| c.def.vm_ids().into_iter().map(move |(_, n)| (n, i))).collect();
    for (n, i) in &chain_names {
        names.insert(n, &chain_owners[*i]);
    }
    for (i, d) in drafts.iter().enumerate() {
        // A default name repeats a duplicate id: that is one problem, already reported.
        if duplicate_id.contains(&i) && !d.explicit_name {
            continue;
        }
        if let Some(first) = names.get(d.vm.name.as_str()) {
            let (pos, key) = match d.spans.name {
                Some(p) => (p, format!("{}.name", d.spans.path)),
                None => (d.spans.pos, d.spans.path.clone()),
            };
            cx.err(pos, &key, format!("VM name `{}` is already used by {first}", d.vm.name));
        } else {
            names.insert(&d.vm.name, &d.spans.path);
        }
    }
}

/// Per node: CPUs, passthrough devices, sockets and host ports belong to one VM only.
fn check_resources(cx: &mut Cx, drafts: &[VmDraft], chains: &[LoadedChain]) {
    let chain_owners: Vec<String> = chains.iter().map(LoadedChain::owner).collect();
    let mut cpus: BTreeMap<(&str, u32), &str> = BTreeMap::new();
    let mut vfio: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    let mut sockets: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    let mut ports: BTreeMap<(&str, u16), &str> = BTreeMap::new();
    let mut disks: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for (c, owner) in chains.iter().zip(&chain_owners) {
        for s in &c.sockets {
            sockets.insert((&c.def.spec.node, s), owner);
        }
    }
    for d in drafts {
        let node = d.vm.node.as_str();
        let owner = d.spans.path.as_str();
        let mut mine = BTreeSet::new();
        for (i, (c, pos)) in d.vm.cpus.iter().flatten().zip(&d.spans.cpus).enumerate() {
            if !mine.insert(*c) {
                continue; // listed twice in one VM: reported while loading
            }
            if let Some(first) = cpus.get(&(node, *c)) {
                cx.err(*pos, &format!("{owner}.cpus[{i}]"), format!("CPU {c} on {node} is already used by {first}"));
            } else {
                cpus.insert((node, *c), owner);
            }
        }
        for (addr, pos, key) in &d.spans.vfio {
            if let Some(first) = vfio.insert((node, addr), owner) {
                cx.err(*pos, key, format!("PCI device {addr} on {node} is already passed to {first}"));
                vfio.insert((node, addr), first);
            }
        }
        for (sock, pos, key) in &d.spans.sockets {
            if let Some(first) = sockets.insert((node, sock), owner) {
                cx.err(*pos, key, format!("socket {sock} on {node} is already used by {first}"));
                sockets.insert((node, sock), first);
            }
        }
        // A writable disk in two VMs: QEMU's image locking is off (`file.locking=off`), so
        // both would write it and corrupt it. A cdrom is read-only and may be shared.
        let image = match &d.vm.boot {
            crate::topology::Boot::Image { image, .. } => Some(image.as_str()),
            _ => None,
        };
        let writable = image.into_iter().chain(d.vm.drives.iter().filter(|dr| !dr.cdrom).map(|dr| dr.file.as_str()));
        for file in writable {
            if let Some(first) = disks.insert((node, file), owner) {
                if first != owner {
                    cx.err(
                        d.spans.pos,
                        owner,
                        format!("disk {file} on {node} is already used by {first} (two QEMUs would write it)"),
                    );
                }
                disks.insert((node, file), first);
            }
        }
        for (port, pos, key) in &d.spans.host_ports {
            if let Some(first) = ports.insert((node, *port), owner) {
                cx.err(*pos, key, format!("host port {port} on {node} is already forwarded for {first}"));
                ports.insert((node, *port), first);
            }
        }
    }
}
