//! Conversion of the marked YAML tree into the typed model, collecting every problem.
//!
//! Each value is checked where it is read, so a diagnostic points at the offending key or value.
//! Invalid values fall back to `None` (not to a default) so that checks depending on them are
//! skipped instead of producing follow-up noise. Checks that span several VMs live in
//! [`super::validate`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::model::*;
use super::validate::{self, VmSpans};
use super::yaml::{self, Node as YNode, Pos, Value, join};
use super::{Diagnostic, TopologyError};

/// Collects diagnostics for one file.
pub(crate) struct Cx<'a> {
    pub file: &'a Path,
    pub diags: Vec<Diagnostic>,
}

impl Cx<'_> {
    pub fn err(&mut self, pos: Pos, key: &str, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            file: self.file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            key: if key.is_empty() { "(top)".to_string() } else { key.to_string() },
            message: message.into(),
        });
    }

    /// Any scalar, as text (`username: 123` is the string "123").
    pub(crate) fn string(&mut self, n: &YNode, path: &str) -> Option<String> {
        match &n.value {
            Value::Scalar { text, .. } if !n.is_null() => Some(text.clone()),
            _ => {
                self.err(n.pos, path, format!("expected a string, found {}", n.kind_name()));
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, n: &YNode, path: &str) -> Option<bool> {
        // YAML 1.2 core schema booleans only: `yes`/`on` are strings there, so refuse them.
        if let Value::Scalar { text, plain: true } = &n.value {
            match text.as_str() {
                "true" | "True" | "TRUE" => return Some(true),
                "false" | "False" | "FALSE" => return Some(false),
                _ => {}
            }
        }
        self.err(n.pos, path, "expected true or false");
        None
    }

    /// An unsigned integer in `min..=max`; `what` names the expectation in messages.
    pub(crate) fn int(&mut self, n: &YNode, path: &str, min: u64, max: u64, what: &str) -> Option<u64> {
        let parsed = match &n.value {
            Value::Scalar { text, plain: true } => text.parse::<u64>().ok(),
            _ => None,
        };
        match parsed {
            Some(v) if v >= min && v <= max => Some(v),
            Some(v) if v >= min => {
                self.err(n.pos, path, format!("{what}, at most {max} (found {v})"));
                None
            }
            _ => {
                self.err(n.pos, path, format!("expected {what}"));
                None
            }
        }
    }

    /// A queue count: virtio-net allows at most 256 queue pairs per NIC here.
    pub(crate) fn queues(&mut self, n: &YNode, path: &str) -> Option<u32> {
        self.int(n, path, 1, 256, "a positive integer").map(|v| v as u32)
    }

    /// One of a fixed set of words, with a "did you mean" hint.
    fn choice(&mut self, n: &YNode, path: &str, options: &[&'static str]) -> Option<&'static str> {
        let text = n.as_scalar().filter(|_| !n.is_null());
        if let Some(t) = text
            && let Some(o) = options.iter().find(|o| **o == t)
        {
            return Some(o);
        }
        let list = options.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ");
        let hint = text.and_then(|t| suggest(t, options)).map(|s| format!("; did you mean `{s}`?")).unwrap_or_default();
        // Echo the value: "unknown accel `kmv`" says what was read, not only what is allowed.
        let what = path.rsplit('.').next().unwrap_or(path);
        let found = text.map(|t| format!("unknown {what} `{}`; ", t.escape_debug())).unwrap_or_default();
        self.err(n.pos, path, format!("{found}expected one of {list}{hint}"));
        None
    }

    pub(crate) fn abs_path(&mut self, n: &YNode, path: &str) -> Option<String> {
        let s = self.string(n, path)?;
        if s.starts_with('/') {
            Some(s)
        } else {
            self.err(n.pos, path, format!("must be an absolute path (found `{s}`)"));
            None
        }
    }

    pub(crate) fn seq<'n>(&mut self, n: &'n YNode, path: &str) -> Option<&'n [YNode]> {
        match &n.value {
            Value::Seq(items) => Some(items),
            _ => {
                self.err(n.pos, path, format!("expected a list, found {}", n.kind_name()));
                None
            }
        }
    }

    fn strings(&mut self, n: &YNode, path: &str) -> Option<Vec<String>> {
        let items = self.seq(n, path)?;
        let mut out = Vec::new();
        let mut ok = true;
        for (i, it) in items.iter().enumerate() {
            match self.string(it, &join(path, &format!("[{i}]"))) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// The entries of a map whose keys are names (nodes, CSIT ports), not a fixed set.
    fn map<'n>(&mut self, n: &'n YNode, path: &str) -> Option<&'n [(YNode, YNode)]> {
        match &n.value {
            Value::Map(entries) => Some(entries),
            _ => {
                self.err(n.pos, path, format!("expected a map, found {}", n.kind_name()));
                None
            }
        }
    }

    /// Open a map, reporting a non-map value and every key not in `known`.
    /// `pos` is where "missing key" errors point (the key naming this map, or the list item).
    pub(crate) fn fields<'n>(
        &mut self,
        n: &'n YNode,
        path: &str,
        pos: Pos,
        known: &[&'static str],
    ) -> Option<Fields<'n>> {
        let Value::Map(entries) = &n.value else {
            self.err(n.pos, path, format!("expected a map, found {}", n.kind_name()));
            return None;
        };
        for (k, _) in entries {
            match k.as_scalar() {
                Some(name) if known.contains(&name) => {}
                Some(name) => {
                    let hint = suggest(name, known).map(|s| format!("; did you mean `{s}`?")).unwrap_or_default();
                    self.err(k.pos, &join(path, name), format!("unknown key{hint}"));
                }
                None => self.err(k.pos, path, "keys must be plain strings"),
            }
        }
        Some(Fields { path: path.to_string(), pos, entries })
    }
}

/// A map being read: lookups by key, with key paths for messages.
pub(crate) struct Fields<'n> {
    pub path: String,
    pub pos: Pos,
    entries: &'n [(YNode, YNode)],
}

impl<'n> Fields<'n> {
    /// The value of `key`, or `None` when absent or null.
    pub fn get(&self, key: &str) -> Option<&'n YNode> {
        self.raw(key).filter(|v| !v.is_null())
    }
    /// The value of `key` even when null (for keys where null means something).
    pub fn raw(&self, key: &str) -> Option<&'n YNode> {
        self.entries.iter().find(|(k, _)| k.as_scalar() == Some(key)).map(|(_, v)| v)
    }
    pub fn key_pos(&self, key: &str) -> Pos {
        self.entries.iter().find(|(k, _)| k.as_scalar() == Some(key)).map(|(k, _)| k.pos).unwrap_or(self.pos)
    }
    pub fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }
    pub(crate) fn required(&self, cx: &mut Cx, key: &str) -> Option<&'n YNode> {
        let v = self.get(key);
        if v.is_none() {
            if self.raw(key).is_some() {
                cx.err(self.key_pos(key), &self.path(key), "needs a value");
            } else {
                cx.err(self.pos, &self.path, format!("missing required key `{key}`"));
            }
        }
        v
    }
}

/// Levenshtein distance, for "did you mean" hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest known word within edit distance 2.
/// Short words need proportionally closer matches (`4K` is not a typo of `2M`).
pub(crate) fn suggest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (distance(word, k), *k))
        .filter(|(d, k)| *d <= 2 && d * 2 <= word.chars().count().max(k.chars().count()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// `120s`, `2m`, `500ms`, `1.5s`, `1h` or a bare number of seconds: the crate's one syntax.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    crate::duration::parse(s).ok()
}

fn is_pci(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11])
}

fn is_ipv4_cidr(s: &str) -> bool {
    let Some((ip, len)) = s.split_once('/') else { return false };
    ip.parse::<std::net::Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32)
}

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

const TOP_KEYS: &[&str] = &["metadata", "nodes", "vms", "unique_macs"];

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

const VM_KEYS: &[&str] = &[
    "node",
    "qemu_id",
    "name",
    "kind",
    "kernel",
    "initrd",
    "image",
    "image_format",
    "smp",
    "mem",
    "page_size",
    "guest_hugepages",
    "vnf",
    "vars",
    "queues",
    "jumbo",
    "interfaces",
    "drives",
    "cpus",
    "sched",
    "boot_timeout",
    "ready_markers",
    "fail_markers",
    "qga",
    "init_command",
    "extra_args",
];

/// QEMU numbers NICs by letter in some places and the guest has a bounded number of PCI slots.
pub const MAX_NICS: usize = 26;

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
            if let Some(d) = convert_vm(cx, &path, item, &nodes, &node_types, has_vnf) {
                drafts.push(d);
            }
        }
    }
    let vms = validate::finish_vms(cx, drafts);
    Some(Topology { path: cx.file.to_path_buf(), nodes, vms, unique_macs })
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
    if let Some(s) = f.get("priv_key").and_then(|v| cx.string(v, &f.path("priv_key"))) {
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

    let mut interfaces = BTreeMap::new();
    if let Some(v) = f.get("interfaces")
        && let Some(entries) = cx.map(v, &f.path("interfaces"))
    {
        for (k, v) in entries {
            let Some(port) = k.as_scalar() else { continue };
            if let Some(fp) = cx.fields(v, &join(&f.path("interfaces"), port), k.pos, IFACE_KEYS) {
                let mut s = |key: &str| fp.get(key).and_then(|v| cx.string(v, &fp.path(key)));
                let iface = CsitInterface {
                    mac_address: s("mac_address"),
                    pci_address: s("pci_address"),
                    link: s("link"),
                    driver: s("driver"),
                    model: s("model"),
                };
                for key in ["name", "ip4_address", "ip6_address"] {
                    s(key);
                }
                for key in ["vlan", "numa_node"] {
                    if let Some(v) = fp.get(key) {
                        cx.int(v, &fp.path(key), 0, u32::MAX as u64, "a non-negative integer");
                    }
                }
                interfaces.insert(port.to_string(), iface);
            }
        }
    }
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

fn page_size(cx: &mut Cx, n: &YNode, path: &str) -> Option<PageSize> {
    match cx.choice(n, path, &["2M", "1G"])? {
        "1G" => Some(PageSize::G1),
        _ => Some(PageSize::M2),
    }
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
    if let Some(s) = hf.get("size").and_then(|v| page_size(cx, v, &hf.path("size"))) {
        h.size = s;
    }
    if let Some(a) = hf.get("allocate").and_then(|v| cx.boolean(v, &hf.path("allocate"))) {
        h.allocate = a;
    }
    if let Some(v) = hf.get("mounts")
        && let Some(mf) = cx.fields(v, &hf.path("mounts"), hf.key_pos("mounts"), &["2M", "1G"])
    {
        for (key, size) in [("2M", PageSize::M2), ("1G", PageSize::G1)] {
            if let Some(p) = mf.get(key).and_then(|v| cx.abs_path(v, &mf.path(key))) {
                h.mounts.insert(size, p);
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

/// A VM as read from the file, before ids and names are assigned across VMs.
pub(crate) struct VmDraft {
    pub vm: Vm,
    /// Explicit `qemu_id` (0 in `vm.qemu_id` until assigned).
    pub explicit_id: Option<u32>,
    pub explicit_name: bool,
    pub spans: VmSpans,
}

fn convert_vm(
    cx: &mut Cx,
    path: &str,
    item: &YNode,
    nodes: &[Node],
    node_types: &BTreeMap<String, Option<NodeType>>,
    has_vnf: &dyn Fn(&str) -> bool,
) -> Option<VmDraft> {
    let f = cx.fields(item, path, item.pos, VM_KEYS)?;
    let mut spans = VmSpans { path: path.to_string(), pos: item.pos, ..VmSpans::default() };
    let mut ok = true;

    // node
    let node_name = f.required(cx, "node").and_then(|v| cx.string(v, &f.path("node")));
    let node = match &node_name {
        Some(name) => {
            let pos = f.get("node").unwrap().pos;
            spans.node = pos;
            match node_types.get(name) {
                None => {
                    let names: Vec<&str> = node_types.keys().map(String::as_str).collect();
                    let hint = suggest(name, &names).map(|s| format!("; did you mean `{s}`?")).unwrap_or_default();
                    cx.err(pos, &f.path("node"), format!("no node `{name}` in `nodes:`{hint}"));
                    ok = false;
                    None
                }
                // `None` when the node has errors of its own: the VM is still checked.
                Some(Some(NodeType::Dut)) => nodes.iter().find(|n| &n.name == name),
                Some(Some(_)) => {
                    cx.err(pos, &f.path("node"), format!("node `{name}` is not a DUT (only DUT nodes run VMs)"));
                    ok = false;
                    None
                }
                // The node has no usable `type`, already reported.
                Some(None) => {
                    ok = false;
                    None
                }
            }
        }
        None => {
            ok = false;
            None
        }
    };

    let explicit_id = match f.get("qemu_id") {
        Some(v) => {
            spans.qemu_id = Some(v.pos);
            let id = cx.int(v, &f.path("qemu_id"), 1, 255, "an integer from 1 to 255 (it becomes a MAC byte)");
            if id.is_none() {
                ok = false;
            }
            id.map(|v| v as u32)
        }
        None => None,
    };
    let name = match f.get("name") {
        Some(v) => {
            spans.name = Some(v.pos);
            match cx.string(v, &f.path("name")) {
                // The name becomes a directory on the host: keep it to a safe alphabet.
                Some(s)
                    if s.is_empty()
                        || s == "."
                        || s == ".."
                        || !s.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) =>
                {
                    cx.err(v.pos, &f.path("name"), "may only contain letters, digits, `_`, `.` and `-`");
                    ok = false;
                    None
                }
                Some(s) => Some(s),
                None => {
                    ok = false;
                    None
                }
            }
        }
        None => None,
    };

    let kind = match f.get("kind") {
        Some(v) => match cx.choice(v, &f.path("kind"), &["kernel", "image"]) {
            Some("image") => VmKind::Image,
            Some(_) => VmKind::Kernel,
            // Keep checking the rest as the kind the other keys suggest, to avoid follow-up noise.
            None => {
                ok = false;
                if f.get("image").is_some() { VmKind::Image } else { VmKind::Kernel }
            }
        },
        None => VmKind::Kernel,
    };
    let image_only = |cx: &mut Cx, key: &str| {
        if kind == VmKind::Kernel && f.get(key).is_some() {
            cx.err(f.key_pos(key), &f.path(key), "only applies to `kind: image` VMs");
        }
    };
    let kernel_only = |cx: &mut Cx, key: &str| {
        if kind == VmKind::Image && f.get(key).is_some() {
            cx.err(f.key_pos(key), &f.path(key), "only applies to `kind: kernel` VMs");
        }
    };
    image_only(cx, "image");
    image_only(cx, "image_format");
    kernel_only(cx, "kernel");
    kernel_only(cx, "initrd");
    kernel_only(cx, "init_command");
    kernel_only(cx, "guest_hugepages");

    let (kernel, initrd) = match kind {
        VmKind::Kernel => (
            Some(f.get("kernel").and_then(|v| cx.abs_path(v, &f.path("kernel"))).unwrap_or("/opt/boot/vmlinuz".into())),
            Some(
                f.get("initrd")
                    .and_then(|v| cx.abs_path(v, &f.path("initrd")))
                    .unwrap_or("/opt/boot/initrd.img".into()),
            ),
        ),
        VmKind::Image => (None, None),
    };
    let image = match kind {
        VmKind::Image => f.required(cx, "image").and_then(|v| cx.abs_path(v, &f.path("image"))),
        VmKind::Kernel => None,
    };
    let image_format = f.get("image_format").and_then(|v| format_name(cx, v, &f.path("image_format")));

    // cpus before smp: smp defaults to their count.
    let cpus: Option<Vec<u32>> = match f.get("cpus") {
        Some(v) => match cx.seq(v, &f.path("cpus")) {
            Some(items) => {
                spans.cpus_key = f.key_pos("cpus");
                let mut out = Vec::new();
                let mut seen = BTreeSet::new();
                for (i, it) in items.iter().enumerate() {
                    let p = join(&f.path("cpus"), &format!("[{i}]"));
                    if let Some(c) = cx.int(it, &p, 0, 4095, "a CPU number") {
                        if !seen.insert(c) {
                            cx.err(it.pos, &p, format!("CPU {c} is listed twice"));
                        }
                        out.push(c as u32);
                        spans.cpus.push(it.pos);
                    } else {
                        ok = false;
                    }
                }
                Some(out)
            }
            None => {
                ok = false;
                None
            }
        },
        None => None,
    };
    let smp = match f.get("smp") {
        Some(v) => cx.int(v, &f.path("smp"), 1, 1024, "a positive integer").map(|v| v as u32),
        None => Some(cpus.as_ref().map_or(1, |c| c.len().max(1) as u32)),
    };
    if let (Some(smp), Some(c)) = (smp, &cpus)
        && c.len() as u32 != smp
        && !c.is_empty()
        && c.len() == items_len(f.get("cpus"))
    {
        cx.err(spans.cpus_key, &f.path("cpus"), format!("lists {} CPUs but smp is {smp}", c.len()));
    }
    if let Some(c) = &cpus
        && c.is_empty()
    {
        cx.err(spans.cpus_key, &f.path("cpus"), "must list at least one CPU (or leave `cpus` out)");
    }

    let page_size = match f.get("page_size") {
        Some(v) => page_size(cx, v, &f.path("page_size")),
        None => Some(node.map_or(PageSize::M2, |n| n.hugepages.size)),
    };
    // The page size is unknown when it comes from a node that failed to load.
    let page_known = f.get("page_size").is_some() || node.is_some();
    // Upper bounds here and below keep later arithmetic (KiB, vectors, deadlines) far from overflow.
    let mem = f.get("mem").map_or(Some(4096), |v| cx.int(v, &f.path("mem"), 1, 1 << 24, "a positive integer (MiB)"));
    let mut mem_ok = mem.is_some() && page_known;
    if page_known
        && let (Some(mem), Some(ps)) = (mem, page_size)
        && mem % ps.mib() != 0
    {
        mem_ok = false;
        let pos = f.get("mem").map_or(f.pos, |v| v.pos);
        cx.err(pos, &f.path("mem"), format!("{mem} MiB is not a multiple of the {} page size", ps.as_str()));
    }
    let guest_hugepages = match f.get("guest_hugepages") {
        Some(v) => cx.int(v, &f.path("guest_hugepages"), 0, 1 << 24, "a non-negative integer"),
        None => page_size.map(|p| if p == PageSize::G1 { 3 } else { 512 }),
    };
    if kind == VmKind::Kernel
        && mem_ok
        && let (Some(mem), Some(ps), Some(g)) = (mem, page_size, guest_hugepages)
        && g.saturating_mul(ps.mib()) >= mem
    {
        let pos = f.get("guest_hugepages").or(f.get("mem")).map_or(f.pos, |v| v.pos);
        let key = if f.get("guest_hugepages").is_some() { "guest_hugepages" } else { "mem" };
        cx.err(
            pos,
            &f.path(key),
            format!(
                "the guest reserves {g} x {} hugepages = {} MiB, which does not fit in mem {mem} MiB; \
                 lower guest_hugepages or raise mem",
                ps.as_str(),
                g.saturating_mul(ps.mib())
            ),
        );
    }

    let vnf_node = f.get("vnf");
    let vnf = match vnf_node {
        Some(v) => match cx.string(v, &f.path("vnf")) {
            Some(s) if s.starts_with("vpp") => {
                if !has_vnf(&s) {
                    cx.err(v.pos, &f.path("vnf"), format!("no template `{s}.exec` for this VPP VNF"));
                }
                Some(Vnf::Vpp(s))
            }
            Some(s) => match s.as_str() {
                "testpmd_io" => Some(Vnf::TestpmdIo),
                "testpmd_mac" => Some(Vnf::TestpmdMac),
                "none" => Some(Vnf::None),
                _ => {
                    let hint = suggest(&s, &["testpmd_io", "testpmd_mac", "none"])
                        .map(|s| format!("; did you mean `{s}`?"))
                        .unwrap_or_default();
                    cx.err(
                        v.pos,
                        &f.path("vnf"),
                        format!(
                            "unknown vnf `{}`; expected `vpp...`, `testpmd_io`, `testpmd_mac` or `none`{hint}",
                            s.escape_debug()
                        ),
                    );
                    None
                }
            },
            None => None,
        },
        None => Some(Vnf::None),
    };
    if kind == VmKind::Image
        && let Some(v) = vnf_node
        && !matches!(vnf, Some(Vnf::None) | None)
    {
        cx.err(v.pos, &f.path("vnf"), "VNFs are configured only in `kind: kernel` VMs; an image VM runs its own OS");
    }

    let mut vars = BTreeMap::new();
    if let Some(v) = f.get("vars") {
        match &v.value {
            Value::Map(entries) => {
                for (k, val) in entries {
                    let Some(key) = k.as_scalar() else {
                        cx.err(k.pos, &f.path("vars"), "keys must be plain strings");
                        continue;
                    };
                    let p = join(&f.path("vars"), key);
                    let ident = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !ident {
                        cx.err(k.pos, &p, "template variable names are letters, digits and `_`");
                    }
                    match &val.value {
                        Value::Scalar { text, .. } => {
                            validate::check_template_value(cx, val.pos, &p, text);
                            vars.insert(key.to_string(), text.clone());
                        }
                        _ => cx.err(val.pos, &p, format!("expected a scalar value, found {}", val.kind_name())),
                    }
                }
            }
            _ => cx.err(v.pos, &f.path("vars"), format!("expected a map, found {}", v.kind_name())),
        }
    }

    let queues = f.get("queues").map_or(Some(1), |v| cx.queues(v, &f.path("queues")));
    let jumbo = f.get("jumbo").and_then(|v| cx.boolean(v, &f.path("jumbo"))).unwrap_or(false);

    let mut interfaces = Vec::new();
    if let Some(v) = f.get("interfaces")
        && let Some(items) = cx.seq(v, &f.path("interfaces"))
    {
        for (i, it) in items.iter().enumerate() {
            let p = join(&f.path("interfaces"), &format!("[{i}]"));
            if let Some(iface) = vm_interface(cx, it, &p, queues.unwrap_or(1), &mut spans) {
                interfaces.push(iface);
            }
        }
        if items.len() > MAX_NICS {
            cx.err(v.pos, &f.path("interfaces"), format!("{} NICs; at most {MAX_NICS} are supported", items.len()));
        }
    }

    let mut drives = Vec::new();
    if let Some(v) = f.get("drives")
        && let Some(items) = cx.seq(v, &f.path("drives"))
    {
        let mut indexes = BTreeMap::new();
        for (i, it) in items.iter().enumerate() {
            let p = join(&f.path("drives"), &format!("[{i}]"));
            let Some(df) = cx.fields(it, &p, it.pos, &["file", "format", "cdrom", "index"]) else { continue };
            let file = df.required(cx, "file").and_then(|v| cx.abs_path(v, &df.path("file")));
            let format = df.get("format").and_then(|v| format_name(cx, v, &df.path("format"))).unwrap_or("raw".into());
            let cdrom = df.get("cdrom").and_then(|v| cx.boolean(v, &df.path("cdrom"))).unwrap_or(false);
            let index = df.get("index").and_then(|v| cx.int(v, &df.path("index"), 0, 255, "a drive index (0-255)"));
            if let (Some(ix), Some(v)) = (index, df.get("index"))
                && let Some(first) = indexes.insert(ix, v.pos.line)
            {
                cx.err(v.pos, &df.path("index"), format!("drive index {ix} is already used on line {first}"));
            }
            if let Some(file) = file {
                drives.push(Drive { file, format, cdrom, index: index.map(|i| i as u32) });
            }
        }
    }

    let sched = match f.get("sched").and_then(|v| cx.choice(v, &f.path("sched"), &["rr", "none"])) {
        Some("rr") => Sched::Rr,
        _ => Sched::None,
    };
    let boot_timeout = match f.get("boot_timeout") {
        Some(v) => match v.as_scalar().and_then(parse_duration) {
            Some(d) if !d.is_zero() && d <= Duration::from_secs(86_400) => d,
            _ => {
                cx.err(
                    v.pos,
                    &f.path("boot_timeout"),
                    "expected a duration from 1ms to 24h such as `120s`, `2m`, `500ms` or seconds",
                );
                Duration::from_secs(120)
            }
        },
        None => Duration::from_secs(120),
    };
    let ready_markers =
        f.get("ready_markers").and_then(|v| cx.strings(v, &f.path("ready_markers"))).unwrap_or_default();
    let fail_markers = f.get("fail_markers").and_then(|v| cx.strings(v, &f.path("fail_markers"))).unwrap_or_default();
    for (key, list) in [("ready_markers", &ready_markers), ("fail_markers", &fail_markers)] {
        if list.iter().any(String::is_empty) {
            cx.err(f.key_pos(key), &f.path(key), "an empty marker would match any output");
        }
    }
    let qga_written = f.get("qga").map(|v| cx.boolean(v, &f.path("qga")));
    let qga = qga_written.flatten().unwrap_or(kind == VmKind::Image);
    let init_command = f.get("init_command").and_then(|v| cx.string(v, &f.path("init_command")));
    let extra_args = f.get("extra_args").and_then(|v| cx.strings(v, &f.path("extra_args"))).unwrap_or_default();

    // NIC needs of the VNFs: their configs address the guest's 0000:00:06.0 and 0000:00:07.0.
    // Counted as written, so an interface with its own error still counts.
    let data_nics = match f.get("interfaces").map(|n| &n.value) {
        Some(Value::Seq(items)) => items
            .iter()
            .filter(|it| match &it.value {
                Value::Map(e) => e.first().and_then(|(k, _)| k.as_scalar()) != Some("net_user"),
                _ => false,
            })
            .count(),
        _ => 0,
    };
    if let Some(vnf) = &vnf
        && !matches!(vnf, Vnf::None)
        && data_nics < 2
    {
        cx.err(
            vnf_node.map_or(f.pos, |v| v.pos),
            &f.path("vnf"),
            format!(
                "this VNF needs at least 2 vhost_user/vfio_pci interfaces (guest 0000:00:06.0 and 0000:00:07.0); found {data_nics}"
            ),
        );
    }
    // (An invalid `qga` is already reported; don't add a readiness error on top.)
    if matches!(vnf, Some(Vnf::None)) && ready_markers.is_empty() && !qga && qga_written != Some(None) {
        cx.err(
            f.pos,
            path,
            "no readiness check: use a VNF with built-in markers (vpp..., testpmd_...), `ready_markers`, or `qga: true`",
        );
    }

    if !ok {
        return None;
    }
    Some(VmDraft {
        vm: Vm {
            node: node_name?,
            qemu_id: 0,
            name: name.clone().unwrap_or_default(),
            kind,
            kernel,
            initrd,
            image,
            image_format: image_format.unwrap_or("raw".into()),
            smp: smp?,
            mem: mem?,
            page_size: page_size?,
            guest_hugepages: guest_hugepages?,
            vnf: vnf?,
            vars,
            queues: queues?,
            jumbo,
            interfaces,
            drives,
            cpus,
            sched,
            boot_timeout,
            ready_markers,
            fail_markers,
            qga,
            init_command,
            extra_args,
        },
        explicit_id,
        explicit_name: name.is_some(),
        spans,
    })
}

fn items_len(n: Option<&YNode>) -> usize {
    match n.map(|n| &n.value) {
        Some(Value::Seq(items)) => items.len(),
        _ => 0,
    }
}

/// A qemu block format name (`raw`, `qcow2`, ...).
fn format_name(cx: &mut Cx, n: &YNode, path: &str) -> Option<String> {
    let s = cx.string(n, path)?;
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        Some(s)
    } else {
        cx.err(n.pos, path, format!("`{s}` is not a disk format name (raw, qcow2, ...)"));
        None
    }
}

fn vm_interface(cx: &mut Cx, n: &YNode, path: &str, vm_queues: u32, spans: &mut VmSpans) -> Option<VmInterface> {
    const KINDS: &[&str] = &["vhost_user", "vfio_pci", "net_user"];
    let Value::Map(entries) = &n.value else {
        cx.err(n.pos, path, "expected a one-key map: `vhost_user: {...}`, `vfio_pci: ADDRESS` or `net_user: {...}`");
        return None;
    };
    if entries.len() != 1 {
        cx.err(n.pos, path, "expected exactly one of `vhost_user`, `vfio_pci`, `net_user`");
        return None;
    }
    let (k, v) = &entries[0];
    let kind = k.as_scalar().unwrap_or("");
    let p = join(path, kind);
    match kind {
        "vhost_user" => {
            let known = ["socket", "server", "queue_size", "queues", "csum", "gso", "vectors"];
            let f = cx.fields(v, &p, k.pos, &known)?;
            let socket = f.required(cx, "socket").and_then(|s| cx.abs_path(s, &f.path("socket")));
            if let (Some(s), Some(sv)) = (&socket, f.get("socket")) {
                spans.sockets.push((s.clone(), sv.pos, f.path("socket")));
            }
            let server = f.get("server").and_then(|v| cx.boolean(v, &f.path("server"))).unwrap_or(true);
            // Explicit null keeps QEMU's default size.
            let queue_size = match f.raw("queue_size") {
                None => Some(1024),
                Some(v) if v.is_null() => None,
                Some(v) => {
                    let q = cx.int(v, &f.path("queue_size"), 256, 1024, "a power of two from 256 to 1024");
                    match q {
                        Some(q) if q.is_power_of_two() => Some(q as u32),
                        Some(_) => {
                            cx.err(v.pos, &f.path("queue_size"), "expected a power of two from 256 to 1024");
                            None
                        }
                        None => None,
                    }
                }
            };
            let queues = f.get("queues").and_then(|v| cx.queues(v, &f.path("queues"))).unwrap_or(vm_queues);
            let csum = f.get("csum").and_then(|v| cx.boolean(v, &f.path("csum"))).unwrap_or(false);
            let gso = f.get("gso").and_then(|v| cx.boolean(v, &f.path("gso"))).unwrap_or(false);
            let vectors = f
                .get("vectors")
                .and_then(|v| cx.int(v, &f.path("vectors"), 0, 2048, "a non-negative integer"))
                .map(|v| v as u32);
            Some(VmInterface::VhostUser(VhostUser { socket: socket?, server, queue_size, queues, csum, gso, vectors }))
        }
        "vfio_pci" => {
            let s = cx.string(v, &p)?;
            if !is_pci(&s) {
                cx.err(v.pos, &p, format!("`{s}` is not a PCI address like `0000:86:0a.1`"));
                return None;
            }
            spans.vfio.push((s.to_ascii_lowercase(), v.pos, p));
            Some(VmInterface::VfioPci(s))
        }
        "net_user" => {
            // `net_user:` alone (null) takes every default.
            let (net, host_port) = if v.is_null() {
                ("10.0.2.0/24".to_string(), None)
            } else {
                let f = cx.fields(v, &p, k.pos, &["net", "host_port"])?;
                let net = match f.get("net") {
                    Some(nv) => {
                        let s = cx.string(nv, &f.path("net"))?;
                        if !is_ipv4_cidr(&s) {
                            cx.err(nv.pos, &f.path("net"), format!("`{s}` is not an IPv4 network like `10.0.2.0/24`"));
                            return None;
                        }
                        s
                    }
                    None => "10.0.2.0/24".to_string(),
                };
                let host_port = match f.get("host_port") {
                    Some(hv) => {
                        let port = cx.int(hv, &f.path("host_port"), 1, 65535, "a port number (1-65535)")? as u16;
                        spans.host_ports.push((port, hv.pos, f.path("host_port")));
                        Some(port)
                    }
                    None => None,
                };
                (net, host_port)
            };
            Some(VmInterface::NetUser { net, host_port })
        }
        other => {
            let hint = suggest(other, KINDS).map(|s| format!("; did you mean `{s}`?")).unwrap_or_default();
            cx.err(k.pos, &p, format!("unknown interface kind; expected `vhost_user`, `vfio_pci` or `net_user`{hint}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("120s"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    #[test]
    fn suggestions_within_two_edits() {
        assert_eq!(suggest("smpp", VM_KEYS), Some("smp"));
        assert_eq!(suggest("qemu_di", VM_KEYS), Some("qemu_id"));
        assert_eq!(suggest("frobnicate", VM_KEYS), None);
        assert_eq!(suggest("4K", &["2M", "1G"]), None);
        assert_eq!(suggest("2m", &["2M", "1G"]), Some("2M"));
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn pci_and_cidr_shapes() {
        assert!(is_pci("0000:86:0a.1"));
        assert!(is_pci("0002:02:00.7"));
        assert!(!is_pci("0000:86:0a.8"));
        assert!(!is_pci("86:0a.1"));
        assert!(!is_pci("0000:86:0g.1"));
        assert!(is_ipv4_cidr("10.0.2.0/24"));
        assert!(!is_ipv4_cidr("10.0.2.0"));
        assert!(!is_ipv4_cidr("10.0.2.0/33"));
    }

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
