//! `chains:` entries at load time: CSIT's keys ([`chains::parse_chain`]), the node, and the
//! `vm:` template. The template goes through the ordinary per-VM conversion
//! ([`super::vm::convert_vm`]) with the keys the chain sets filled in from the chain entry
//! (`node`, `vnf`, `queues`, two vhost-user NICs on `socket_dir`), so every problem in it is
//! reported with its `file:line:col` exactly as in `vms:`. What each VM gets on top (qemu_id,
//! name, CPUs, sockets, MACs) is CSIT's expansion, done by the plan once the host's CPU layout
//! is known; names, ids and sockets do not depend on the host, so clashes with `vms:` are
//! found here ([`super::validate::finish_vms`]).

use super::chains::{self, ChainSpec};
use super::cx::Cx;
use super::cx::LoadedChain;
use super::model::{ChainDef, Node};
use super::validate;
use super::vm::{self, NodeTypes};
use super::yaml::{Node as YNode, Pos, Value};

/// Template variables the chain sets per VM (CSIT's wiring); a template may not set them.
const WIRED_VARS: &[&str] = &["mac1", "mac2", "vif1_mac", "vif2_mac"];

/// Read `chains:`: a list of entries, at most one per node.
pub(super) fn convert_chains(
    cx: &mut Cx,
    v: &YNode,
    nodes: &[Node],
    node_types: &NodeTypes,
    has_vnf: &dyn Fn(&str) -> bool,
) -> Vec<LoadedChain> {
    let Some(items) = cx.seq(v, "chains") else { return Vec::new() };
    let mut out: Vec<LoadedChain> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("chains[{i}]");
        let Some(c) = convert_chain(cx, &path, item, nodes, node_types, has_vnf) else { continue };
        if let Some(first) = out.iter().find(|o| o.def.spec.node == c.def.spec.node) {
            cx.err(
                value_pos(item, "node"),
                &format!("{path}.node"),
                format!(
                    "node {} already has {}: one entry per node (nf_chains sets the number of chains)",
                    c.def.spec.node,
                    first.owner()
                ),
            );
            continue;
        }
        out.push(c);
    }
    out
}

fn convert_chain(
    cx: &mut Cx,
    path: &str,
    item: &YNode,
    nodes: &[Node],
    node_types: &NodeTypes,
    has_vnf: &dyn Fn(&str) -> bool,
) -> Option<LoadedChain> {
    let before = cx.diags.len();
    let (mut spec, vm_node) = chains::parse_chain(cx, item, path)?;
    let template = template_yaml(cx, path, item, &spec, vm_node);
    let socket_pos = value_pos(item, "socket_dir");
    if let Some(m) = validate::socket_path_problem(&spec.socket_dir) {
        cx.err(socket_pos, &format!("{path}.socket_dir"), m);
    }
    let mark = cx.diags.len();
    let draft = template.and_then(|t| vm::convert_vm(cx, &format!("{path}.vm"), &t, nodes, node_types, has_vnf));
    name_chain_keys(cx, mark, path, vm_node.is_some_and(|v| has_key(v, "interfaces")));
    if cx.diags.len() != before {
        return None;
    }
    let template = draft?.vm;
    if let Some(node) = nodes.iter().find(|n| n.name == spec.node) {
        // `testpmd_mac` next hops: the host vswitch's ports `vhost{2q-1}`/`vhost{2q}`, as CSIT
        // finds them among the DUT's interfaces.
        spec.host_port_macs = node
            .interfaces
            .iter()
            .filter(|(k, _)| k.starts_with("vhost"))
            .filter_map(|(k, i)| Some((k.clone(), i.mac_address.clone()?)))
            .collect();
    }
    let def = ChainDef { template, path: path.to_string(), line: item.pos.line, column: item.pos.column, spec };
    let dir = def.spec.socket_dir.trim_end_matches('/');
    let sockets = def
        .vm_ids()
        .into_iter()
        .flat_map(|(q, _)| [format!("{dir}/sock-{q}-1"), format!("{dir}/sock-{q}-2")])
        .collect();
    Some(LoadedChain { def, sockets })
}

/// Diagnostics about the keys filled in from the chain entry name the chain's key, not the
/// template's (`chains[0].vnf: unknown vnf ...`, not `chains[0].vm.vnf`).
fn name_chain_keys(cx: &mut Cx, mark: usize, path: &str, template_nics: bool) {
    for d in &mut cx.diags[mark..] {
        let Some(rest) = d.key.strip_prefix(&format!("{path}.vm.")) else { continue };
        let own = match rest.split('.').next() {
            Some(k @ ("node" | "vnf" | "queues")) => Some(k.to_string()),
            Some(k) if k.starts_with("interfaces") && !template_nics => Some("socket_dir".to_string()),
            _ => None,
        };
        if let Some(k) = own {
            d.key = format!("{path}.{k}");
        }
    }
}

fn has_key(n: &YNode, key: &str) -> bool {
    matches!(&n.value, Value::Map(e) if e.iter().any(|(k, _)| k.as_scalar() == Some(key)))
}

/// Position of `key`'s value in map `n` (the map's own position when absent).
fn value_pos(n: &YNode, key: &str) -> Pos {
    match &n.value {
        Value::Map(e) => e.iter().find(|(k, _)| k.as_scalar() == Some(key)).map_or(n.pos, |(_, v)| v.pos),
        _ => n.pos,
    }
}

fn scalar(pos: Pos, text: impl Into<String>) -> YNode {
    YNode { pos, value: Value::Scalar { text: text.into(), plain: true } }
}

fn entry(pos: Pos, key: &str, value: YNode) -> (YNode, YNode) {
    (scalar(pos, key), value)
}

/// The template as a VM entry: the `vm:` keys (minus those the chain sets, which are refused)
/// plus `node`, `vnf`, `queues` from the chain and two vhost-user NICs with placeholder
/// sockets (`sock-1-1`, `sock-1-2`; the real ones are set per VM). `None` when `vm:` is unusable.
fn template_yaml(cx: &mut Cx, path: &str, item: &YNode, spec: &ChainSpec, vm_node: Option<&YNode>) -> Option<YNode> {
    let pos = vm_node.map_or(item.pos, |v| v.pos);
    let mut entries: Vec<(YNode, YNode)> = Vec::new();
    let mut nics = None;
    if let Some(Value::Map(given)) = vm_node.map(|v| &v.value) {
        for (k, v) in given {
            let key = k.as_scalar().unwrap_or("");
            let kp = format!("{path}.vm.{key}");
            match key {
                "node" | "vnf" | "queues" => {
                    cx.err(k.pos, &kp, format!("set by the chain's own `{key}` ({path}.{key})"));
                }
                "qemu_id" | "name" => {
                    cx.err(k.pos, &kp, "set per VM by the chain: `<node>_<q>`, q = 1..nf_chains×nf_nodes")
                }
                "smp" => cx.err(
                    k.pos,
                    &kp,
                    "set per VM from its CPUs (smp = len(cpus)); `cpus:` here pins every VM of the chain to those CPUs",
                ),
                "interfaces" => nics = Some(template_nics(cx, &kp, v, spec)?),
                "vars" => {
                    check_vars(cx, &kp, v);
                    entries.push((k.clone(), v.clone()));
                }
                _ => entries.push((k.clone(), v.clone())),
            }
        }
    }
    let socket_pos = value_pos(item, "socket_dir");
    let nics = nics.unwrap_or_else(|| {
        let nic = |i: u8| {
            let f = vec![entry(socket_pos, "socket", scalar(socket_pos, placeholder_socket(spec, i)))];
            YNode { pos, value: Value::Map(vec![entry(pos, "vhost_user", YNode { pos, value: Value::Map(f) })]) }
        };
        YNode { pos, value: Value::Seq(vec![nic(1), nic(2)]) }
    });
    entries.push(entry(pos, "interfaces", nics));
    entries.push(entry(pos, "node", scalar(value_pos(item, "node"), spec.node.clone())));
    entries.push(entry(pos, "vnf", scalar(value_pos(item, "vnf"), spec.vnf.clone())));
    entries.push(entry(pos, "queues", scalar(value_pos(item, "queues"), spec.queues.to_string())));
    Some(YNode { pos, value: Value::Map(entries) })
}

fn placeholder_socket(spec: &ChainSpec, nic: u8) -> String {
    format!("{}/sock-1-{nic}", spec.socket_dir.trim_end_matches('/'))
}

/// `vm.interfaces`, when written: exactly two `vhost_user` maps without `socket` (the chain
/// sets it); their other settings (`vectors`, `queue_size`, `server`, ...) apply to NIC 1 and 2
/// of every VM. Returned with the placeholder sockets added.
fn template_nics(cx: &mut Cx, kp: &str, v: &YNode, spec: &ChainSpec) -> Option<YNode> {
    let shape = "expected two `vhost_user: {...}` entries (settings of NIC 1 and 2; the chain sets `socket`)";
    let Value::Seq(items) = &v.value else {
        cx.err(v.pos, kp, shape);
        return None;
    };
    if items.len() != 2 {
        cx.err(v.pos, kp, format!("{shape}, found {}", items.len()));
        return None;
    }
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let ip = format!("{kp}[{i}]");
        let inner = match &it.value {
            Value::Map(e) if e.len() == 1 && e[0].0.as_scalar() == Some("vhost_user") => &e[0].1,
            _ => {
                cx.err(it.pos, &ip, shape);
                return None;
            }
        };
        let mut fields = match &inner.value {
            Value::Map(f) => f.clone(),
            _ if inner.is_null() => Vec::new(),
            _ => {
                cx.err(inner.pos, &format!("{ip}.vhost_user"), format!("expected a map, found {}", inner.kind_name()));
                return None;
            }
        };
        if let Some((k, _)) = fields.iter().find(|(k, _)| k.as_scalar() == Some("socket")) {
            cx.err(k.pos, &format!("{ip}.vhost_user.socket"), "set per VM by the chain: `<socket_dir>/sock-<q>-<nic>`");
            return None;
        }
        fields.push(entry(inner.pos, "socket", scalar(inner.pos, placeholder_socket(spec, i as u8 + 1))));
        let nic = YNode { pos: inner.pos, value: Value::Map(fields) };
        out.push(YNode { pos: it.pos, value: Value::Map(vec![(it_key(it), nic)]) });
    }
    Some(YNode { pos: v.pos, value: Value::Seq(out) })
}

fn it_key(it: &YNode) -> YNode {
    match &it.value {
        Value::Map(e) => e[0].0.clone(),
        _ => scalar(it.pos, "vhost_user"),
    }
}

/// `vm.vars` must leave CSIT's wiring variables to the chain.
fn check_vars(cx: &mut Cx, kp: &str, v: &YNode) {
    if let Value::Map(e) = &v.value {
        for (k, _) in e {
            if let Some(name) = k.as_scalar().filter(|n| WIRED_VARS.contains(n)) {
                cx.err(k.pos, &format!("{kp}.{name}"), "set per VM by the chain (CSIT's MAC wiring)");
            }
        }
    }
}
