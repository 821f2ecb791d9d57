//! Conversion of the marked YAML tree into the typed model, collecting every problem.
//!
//! Each value is checked where it is read, so a diagnostic points at the offending key or value.
//! Invalid values fall back to `None` (not to a default) so that checks depending on them are
//! skipped instead of producing follow-up noise. Checks that span several VMs live in
//! [`super::validate`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::TopologyError;
use super::chain_load;
use super::cx::{Cx, Fields};
use super::model::*;
use super::validate;
use super::vm;
use super::yaml::{self, Node as YNode, Pos, Value, join};

/// `~` and `~/x` become the home directory; relative paths are taken from the topology's directory.
fn local_path(s: &str, file: &Path) -> PathBuf {
    let home = || dirs::home_dir().unwrap_or_else(|| PathBuf::from("/"));
    if s == "~" {
        home()
    } else if let Some(rest) = s.strip_prefix("~/") {
        home().join(rest)
    } else {
        let p = PathBuf::from(s);
        if p.is_absolute() { p } else { file.parent().unwrap_or(Path::new("")).join(p) }
    }
}

const TOP_KEYS: &[&str] = &["metadata", "nodes", "vms", "chains", "unique_macs"];

const NODE_KEYS: &[&str] = &[
    // CSIT
    "type",
    "subtype",
    "model",
    "host",
    "arch",
    "port",
    "username",
    "password",
    "priv_key",
    "interfaces",
    "uio_driver",
    "cryptodev",
    "bus",
    "eventdev",
    "num_rx_queues",
    "num_tx_queues",
    "honeycomb",
    "cpuinfo",
    // harness
    "identity_file",
    "identity_passphrase_env",
    "password_env",
    "proxy_jump",
    "known_hosts",
    "accept_new_host_key",
    "hugepages",
    "qemu",
    "run_root",
];

const IFACE_KEYS: &[&str] = &[
    "link",
    "driver",
    "name",
    "pci_address",
    "mac_address",
    "model",
    "vlan",
    "ip4_address",
    "ip6_address",
    "numa_node",
];

/// Load and validate `text`; `has_vnf(name)` says whether a `vpp*` VNF has its `.exec` template.
pub fn load(text: &str, file: &Path, has_vnf: &dyn Fn(&str) -> bool) -> Result<Topology, TopologyError> {
    let mut cx = Cx { file, diags: Vec::new() };
    let parsed = yaml::parse(text);
    for e in &parsed.errors {
        cx.err(e.pos, &e.path, e.message.clone());
    }
    let topo = match &parsed.root {
        Some(root) => convert(&mut cx, root, has_vnf),
        None if parsed.errors.is_empty() => {
            cx.err(Pos { line: 1, column: 1 }, "", "empty topology file: expected a map with `nodes:`");
            None
        }
        None => None,
    };
    match topo {
        Some(t) if cx.diags.is_empty() => Ok(t),
        _ => {
            // File order, so the first problem in the file comes first.
            cx.diags.sort_by_key(|d| (d.line, d.column));
            Err(TopologyError::Invalid(cx.diags))
        }
    }
}

/// Whether some node of `text`, read as [`load`] reads it, has one of `keys` with a value
/// other than null or `except`; `None` when the loader would not read the text at all. The run
/// record's secret redaction asks this so that what it keeps is judged by the parser that
/// decides what a node's password is, not only by the one that redacted it.
pub(crate) fn nodes_have_other_values(text: &str, keys: &[&str], except: &str) -> Option<bool> {
    let parsed = yaml::parse(text);
    if !parsed.errors.is_empty() {
        return None;
    }
    let Some(Value::Map(top)) = parsed.root.map(|r| r.value) else { return Some(false) };
    let nodes = top.iter().filter(|(k, _)| k.as_scalar() == Some("nodes")).filter_map(|(_, v)| match &v.value {
        Value::Map(nodes) => Some(nodes),
        _ => None,
    });
    let other = |v: &YNode| !v.is_null() && v.as_scalar() != Some(except);
    Some(nodes.flatten().any(|(_, node)| match &node.value {
        Value::Map(e) => e.iter().any(|(k, v)| k.as_scalar().is_some_and(|k| keys.contains(&k)) && other(v)),
        _ => false,
    }))
}

fn convert(cx: &mut Cx, root: &YNode, has_vnf: &dyn Fn(&str) -> bool) -> Option<Topology> {
    let top = cx.fields(root, "", root.pos, TOP_KEYS)?;
    let unique_macs = top.get("unique_macs").and_then(|n| cx.boolean(n, "unique_macs")).unwrap_or(false);

    let mut nodes = Vec::new();
    if let Some(n) = top.required(cx, "nodes")
        && let Some(entries) = cx.map(n, "nodes")
    {
        for (k, v) in entries {
            let Some(name) = k.as_scalar() else {
                cx.err(k.pos, "nodes", "node names must be plain strings");
                continue;
            };
            if let Some(m) = validate::name_problem(name) {
                cx.err(k.pos, "nodes", format!("node name `{}` {m}", name.escape_debug()));
                continue;
            }
            if let Some(node) = convert_node(cx, name, k.pos, v) {
                nodes.push(node);
            }
        }
    }
    // Every node written and its `type` as written, even for nodes with other errors, so that the
    // VMs on a node with a bad `host` (say) are still checked.
    let node_types: BTreeMap<String, Option<NodeType>> = match top.get("nodes").map(|n| &n.value) {
        Some(Value::Map(entries)) => entries
            .iter()
            .filter_map(|(k, v)| Some((k.as_scalar()?, v)))
            .map(|(name, v)| {
                let t = match &v.value {
                    Value::Map(e) => {
                        e.iter().find(|(k, _)| k.as_scalar() == Some("type")).and_then(|(_, t)| t.as_scalar())
                    }
                    _ => None,
                };
                let t = t.filter(|t| !t.is_empty()).map(|t| match t {
                    "DUT" => NodeType::Dut,
                    "TG" => NodeType::Tg,
                    _ => NodeType::Other,
                });
                (name.to_string(), t)
            })
            .collect(),
        _ => BTreeMap::new(),
    };

    let mut drafts = Vec::new();
    if let Some(v) = top.get("vms")
        && let Some(items) = cx.seq(v, "vms")
    {
        for (i, item) in items.iter().enumerate() {
            let path = format!("vms[{i}]");
            if let Some(d) = vm::convert_vm(cx, &path, item, &nodes, &node_types, has_vnf) {
                drafts.push(d);
            }
        }
    }
    let chains = top.get("chains").map(|v| chain_load::convert_chains(cx, v, &nodes, &node_types, has_vnf));
    let chains = chains.unwrap_or_default();
    let (vms, written) = validate::finish_vms(cx, drafts, &chains);
    let chains = chains.into_iter().map(|c| c.def).collect();
    Some(Topology { path: cx.file.to_path_buf(), nodes, vms, unique_macs, chains, written })
}

fn convert_node(cx: &mut Cx, name: &str, key_pos: Pos, n: &YNode) -> Option<Node> {
    let path = join("nodes", name);
    let f = cx.fields(n, &path, key_pos, NODE_KEYS)?;
    let node_type = match f.required(cx, "type").and_then(|v| cx.string(v, &f.path("type"))) {
        Some(t) if t == "DUT" => Some(NodeType::Dut),
        Some(t) if t == "TG" => Some(NodeType::Tg),
        Some(_) => Some(NodeType::Other),
        None => None,
    };
    let host = f.required(cx, "host").and_then(|v| cx.string(v, &f.path("host")));
    let port = f.get("port").and_then(|v| cx.int(v, &f.path("port"), 1, 65535, "a port number (1-65535)"));
    let username = f.get("username").and_then(|v| cx.string(v, &f.path("username")));

    let mut auth = Vec::new();
    let passphrase_env =
        f.get("identity_passphrase_env").and_then(|v| cx.string(v, &f.path("identity_passphrase_env")));
    if let Some(v) = f.get("identity_file") {
        if let Some(s) = cx.string(v, &f.path("identity_file")) {
            auth.push(Auth::IdentityFile { path: local_path(&s, cx.file), passphrase_env });
        }
    } else if passphrase_env.is_some() {
        cx.err(f.key_pos("identity_passphrase_env"), &f.path("identity_passphrase_env"), "needs `identity_file`");
    }
    if let Some(s) = f.get("priv_key").and_then(|v| cx.lines(v, &f.path("priv_key"))) {
        auth.push(Auth::PrivateKeyPem(s));
    }
    if let Some(s) = f.get("password_env").and_then(|v| cx.string(v, &f.path("password_env"))) {
        auth.push(Auth::PasswordEnv(s));
    }
    if let Some(s) = f.get("password").and_then(|v| cx.string(v, &f.path("password"))) {
        auth.push(Auth::Password(s));
    }

    let proxy_jump = f.get("proxy_jump").and_then(|v| cx.string(v, &f.path("proxy_jump")));
    let known_hosts =
        f.get("known_hosts").and_then(|v| cx.string(v, &f.path("known_hosts"))).map(|s| local_path(&s, cx.file));
    let accept_new_host_key =
        f.get("accept_new_host_key").and_then(|v| cx.boolean(v, &f.path("accept_new_host_key"))).unwrap_or(false);
    let arch = match f.get("arch").and_then(|v| cx.choice(v, &f.path("arch"), &["x86_64", "aarch64"])) {
        Some("aarch64") => Arch::Aarch64,
        _ => Arch::X86_64,
    };
    let hugepages = hugepages(cx, &f);
    let qemu = qemu_config(cx, &f);
    let run_root = match f.get("run_root").and_then(|v| cx.abs_path(v, &f.path("run_root"))) {
        Some(r) => validate::check_run_root(cx, f.get("run_root").unwrap().pos, &f.path("run_root"), r),
        None => "/run/harness".to_string(),
    };

    let interfaces = csit_interfaces(cx, &f);
    // Scalars CSIT keeps at node level: only their shape is checked.
    for key in ["subtype", "model", "uio_driver"] {
        if let Some(v) = f.get(key) {
            cx.string(v, &f.path(key));
        }
    }
    for key in ["num_rx_queues", "num_tx_queues"] {
        if let Some(v) = f.get(key) {
            cx.int(v, &f.path(key), 0, u32::MAX as u64, "a non-negative integer");
        }
    }

    Some(Node {
        name: name.to_string(),
        node_type: node_type?,
        host: host?,
        port: port.map(|p| p as u16),
        username,
        auth,
        proxy_jump,
        known_hosts,
        accept_new_host_key,
        arch,
        hugepages,
        qemu,
        run_root,
        interfaces,
    })
}

/// CSIT's `interfaces:` of a node (port name → port); kept for reference (vif MACs, NUMA).
fn csit_interfaces(cx: &mut Cx, f: &Fields) -> BTreeMap<String, CsitInterface> {
    let mut interfaces = BTreeMap::new();
    if let Some(v) = f.get("interfaces")
        && let Some(entries) = cx.map(v, &f.path("interfaces"))
    {
        for (k, v) in entries {
            // Port names are looked up (`vhost1`...) and shown like any other string.
            let Some(port) = cx.string(k, &f.path("interfaces")) else { continue };
            if let Some(fp) = cx.fields(v, &join(&f.path("interfaces"), &port), k.pos, IFACE_KEYS) {
                let mac_address = fp.get("mac_address").and_then(|v| {
                    let mac = cx.string(v, &fp.path("mac_address"))?;
                    // It becomes a chain VM's `vif1_mac`/`vif2_mac` (testpmd's `--eth-peer`).
                    if validate::is_mac(&mac) {
                        return Some(mac);
                    }
                    cx.err(
                        v.pos,
                        &fp.path("mac_address"),
                        format!("`{mac}` is not a MAC address like `3c:fd:fe:aa:bb:01`"),
                    );
                    None
                });
                let mut s = |key: &str| fp.get(key).and_then(|v| cx.string(v, &fp.path(key)));
                let mut iface = CsitInterface {
                    mac_address,
                    pci_address: s("pci_address"),
                    link: s("link"),
                    driver: s("driver"),
                    model: s("model"),
                    numa_node: None,
                };
                for key in ["name", "ip4_address", "ip6_address"] {
                    s(key);
                }
                for key in ["vlan", "numa_node"] {
                    if let Some(v) = fp.get(key) {
                        let n = cx.int(v, &fp.path(key), 0, u32::MAX as u64, "a non-negative integer");
                        if key == "numa_node" {
                            iface.numa_node = n.map(|n| n as u32);
                        }
                    }
                }
                interfaces.insert(port, iface);
            }
        }
    }
    interfaces
}

fn hugepages(cx: &mut Cx, f: &Fields) -> HugepagesConfig {
    let mut h = HugepagesConfig {
        size: PageSize::M2,
        allocate: false,
        mounts: BTreeMap::from([
            (PageSize::M2, "/dev/hugepages".to_string()),
            (PageSize::G1, "/dev/hugepages1G".to_string()),
        ]),
    };
    let Some(v) = f.get("hugepages") else { return h };
    let Some(hf) = cx.fields(v, &f.path("hugepages"), f.key_pos("hugepages"), &["size", "allocate", "mounts"]) else {
        return h;
    };
    if let Some(s) = hf.get("size").and_then(|v| vm::page_size(cx, v, &hf.path("size"))) {
        h.size = s;
    }
    if let Some(a) = hf.get("allocate").and_then(|v| cx.boolean(v, &hf.path("allocate"))) {
        h.allocate = a;
    }
    if let Some(v) = hf.get("mounts")
        && let Some(mf) = cx.fields(v, &hf.path("mounts"), hf.key_pos("mounts"), &["2M", "1G"])
    {
        for (key, size) in [("2M", PageSize::M2), ("1G", PageSize::G1)] {
            let Some(v) = mf.get(key) else { continue };
            if let Some(p) = cx.abs_path(v, &mf.path(key)) {
                match super::validate::mount_path_problem(&p) {
                    Some(m) => cx.err(v.pos, &mf.path(key), m),
                    None => {
                        h.mounts.insert(size, p);
                    }
                }
            }
        }
    }
    h
}

fn qemu_config(cx: &mut Cx, f: &Fields) -> QemuConfig {
    let mut q = QemuConfig { bin_dir: "/usr/bin".to_string(), accel: Accel::Auto };
    let Some(v) = f.get("qemu") else { return q };
    let Some(qf) = cx.fields(v, &f.path("qemu"), f.key_pos("qemu"), &["bin_dir", "accel"]) else { return q };
    if let Some(b) = qf.get("bin_dir").and_then(|v| cx.abs_path(v, &qf.path("bin_dir"))) {
        q.bin_dir = b;
    }
    q.accel = match qf.get("accel").and_then(|v| cx.choice(v, &qf.path("accel"), &["kvm", "tcg", "auto"])) {
        Some("kvm") => Accel::Kvm,
        Some("tcg") => Accel::Tcg,
        _ => Accel::Auto,
    };
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_and_relative_paths() {
        let file = Path::new("/etc/topo/t.yaml");
        assert_eq!(local_path("keys/id", file), PathBuf::from("/etc/topo/keys/id"));
        assert_eq!(local_path("/abs", file), PathBuf::from("/abs"));
        if let Some(home) = dirs::home_dir() {
            assert_eq!(local_path("~/.ssh/id", file), home.join(".ssh/id"));
        }
    }
}
