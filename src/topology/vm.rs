//! Conversion of one `vms:` entry into a [`VmDraft`], section by section: where it runs, its
//! id and name, how it boots, CPUs, memory, the VNF and its variables, interfaces, drives, and
//! readiness. Each section reads its keys through [`Cx`] (so every problem carries its
//! position) and returns `None` for a value it could not read; cross-VM checks and defaults
//! that need every VM (ids, names, shared resources) happen later in [`super::validate`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::cx::{Cx, Fields, VmDraft, VmSpans, parse_duration, suggest};
use super::model::*;
use super::validate;
use super::yaml::{Node as YNode, Value, join};

pub(super) const VM_KEYS: &[&str] = &[
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
    "start_timeout",
    "ready_markers",
    "fail_markers",
    "qga",
    "init_command",
    "extra_args",
    "collect",
];

/// QEMU numbers NICs by letter in some places and the guest has a bounded number of PCI slots.
pub const MAX_NICS: usize = 26;

/// Node names as written, with their `type` (`None`: the node has errors of its own).
pub(super) type NodeTypes = BTreeMap<String, Option<NodeType>>;

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

/// Convert `vms[i]`; `None` when a value needed to build the VM could not be read.
pub(super) fn convert_vm(
    cx: &mut Cx,
    path: &str,
    item: &YNode,
    nodes: &[Node],
    node_types: &NodeTypes,
    has_vnf: &dyn Fn(&str) -> bool,
) -> Option<VmDraft> {
    let f = cx.fields(item, path, item.pos, VM_KEYS)?;
    let mut spans = VmSpans { path: path.to_string(), pos: item.pos, ..VmSpans::default() };
    let mut ok = true;
    let (node_name, node) = vm_node(cx, &f, nodes, node_types, &mut spans, &mut ok);
    let explicit_id = vm_qemu_id(cx, &f, &mut spans, &mut ok);
    let name = vm_name(cx, &f, &mut spans, &mut ok);
    let boot = vm_boot(cx, &f, &mut ok);
    let (cpus, smp) = vm_cpus(cx, &f, &mut spans, &mut ok);
    let memory = vm_memory(cx, &f, node, boot.kind);
    let vnf = vm_vnf(cx, &f, boot.kind, has_vnf);
    let vars = vm_vars(cx, &f);
    let queues = f.get("queues").map_or(Some(1), |v| cx.queues(v, &f.path("queues")));
    let jumbo = f.get("jumbo").and_then(|v| cx.boolean(v, &f.path("jumbo"))).unwrap_or(false);
    let interfaces = vm_interfaces(cx, &f, queues.unwrap_or(1), &mut spans);
    let drives = vm_drives(cx, &f);
    let run = vm_runtime(cx, &f, boot.kind);
    let collect = f.get("collect").and_then(|v| vm_collect(cx, v, &f.path("collect")));
    if collect.as_ref().is_some_and(|c| !c.is_empty()) && !run.qga && run.qga_written != Some(None) {
        cx.err(
            f.key_pos("collect"),
            &f.path("collect"),
            "collect runs its commands over the guest agent: set `qga: true`",
        );
    }
    check_vnf_nics(cx, &f, vnf.as_ref());
    // (An invalid `qga` is already reported; don't add a readiness error on top.)
    if matches!(vnf, Some(Vnf::None)) && run.ready_markers.is_empty() && !run.qga && run.qga_written != Some(None) {
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
            boot: match boot.kind {
                VmKind::Kernel => Boot::Kernel { kernel: boot.kernel?, initrd: boot.initrd? },
                VmKind::Image => Boot::Image { image: boot.image?, format: boot.image_format.unwrap_or("raw".into()) },
            },
            smp: smp?,
            mem: memory.mem?,
            page_size: memory.page_size?,
            guest_hugepages: memory.guest_hugepages?,
            vnf: vnf?,
            vars,
            queues: queues?,
            jumbo,
            interfaces,
            drives,
            cpus,
            sched: run.sched,
            boot_timeout: run.boot_timeout,
            start_timeout: run.start_timeout,
            ready_markers: run.ready_markers,
            fail_markers: run.fail_markers,
            qga: run.qga,
            init_command: run.init_command,
            extra_args: run.extra_args,
            collect,
        },
        explicit_id,
        explicit_name: name.is_some(),
        spans,
    })
}

/// `node`: must name a DUT. Returns the name as written and the node, if it loaded.
fn vm_node<'a>(
    cx: &mut Cx,
    f: &Fields,
    nodes: &'a [Node],
    node_types: &NodeTypes,
    spans: &mut VmSpans,
    ok: &mut bool,
) -> (Option<String>, Option<&'a Node>) {
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
                    *ok = false;
                    None
                }
                // `None` when the node has errors of its own: the VM is still checked.
                Some(Some(NodeType::Dut)) => nodes.iter().find(|n| &n.name == name),
                Some(Some(_)) => {
                    cx.err(pos, &f.path("node"), format!("node `{name}` is not a DUT (only DUT nodes run VMs)"));
                    *ok = false;
                    None
                }
                // The node has no usable `type`, already reported.
                Some(None) => {
                    *ok = false;
                    None
                }
            }
        }
        None => {
            *ok = false;
            None
        }
    };

    (node_name, node)
}

/// `qemu_id`, when written (assigned later otherwise).
fn vm_qemu_id(cx: &mut Cx, f: &Fields, spans: &mut VmSpans, ok: &mut bool) -> Option<u32> {
    match f.get("qemu_id") {
        Some(v) => {
            spans.qemu_id = Some(v.pos);
            let id = cx.int(v, &f.path("qemu_id"), 1, 255, "an integer from 1 to 255 (it becomes a MAC byte)");
            if id.is_none() {
                *ok = false;
            }
            id.map(|v| v as u32)
        }
        None => None,
    }
}

/// `name`, when written (defaulted later otherwise).
fn vm_name(cx: &mut Cx, f: &Fields, spans: &mut VmSpans, ok: &mut bool) -> Option<String> {
    match f.get("name") {
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
                    *ok = false;
                    None
                }
                Some(s) => Some(s),
                None => {
                    *ok = false;
                    None
                }
            }
        }
        None => None,
    }
}

/// How the VM boots, as read: the kind and the keys that belong to it.
struct BootKeys {
    kind: VmKind,
    kernel: Option<String>,
    initrd: Option<String>,
    image: Option<String>,
    image_format: Option<String>,
}

/// `kind` and its keys (`kernel`/`initrd`/`init_command`/`guest_hugepages` or `image`/`image_format`).
fn vm_boot(cx: &mut Cx, f: &Fields, ok: &mut bool) -> BootKeys {
    let kind = match f.get("kind") {
        Some(v) => match cx.choice(v, &f.path("kind"), &["kernel", "image"]) {
            Some("image") => VmKind::Image,
            Some(_) => VmKind::Kernel,
            // Keep checking the rest as the kind the other keys suggest, to avoid follow-up noise.
            None => {
                *ok = false;
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

    BootKeys { kind, kernel, initrd, image, image_format }
}

/// `cpus` and `smp` (which defaults to the number of CPUs).
fn vm_cpus(cx: &mut Cx, f: &Fields, spans: &mut VmSpans, ok: &mut bool) -> (Option<Vec<u32>>, Option<u32>) {
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
                        *ok = false;
                    }
                }
                Some(out)
            }
            None => {
                *ok = false;
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
    // `smp` comes from the list when not given: the list obeys smp's own limit.
    if let Some(c) = &cpus
        && c.len() > 1024
    {
        cx.err(spans.cpus_key, &f.path("cpus"), format!("lists {} CPUs; a VM has at most 1024 vCPUs", c.len()));
    }

    (cpus, smp)
}

struct Memory {
    page_size: Option<PageSize>,
    mem: Option<u64>,
    guest_hugepages: Option<u64>,
}

/// `page_size` (default: the node's), `mem`, `guest_hugepages`, and that they fit together.
fn vm_memory(cx: &mut Cx, f: &Fields, node: Option<&Node>, kind: VmKind) -> Memory {
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

    Memory { page_size, mem, guest_hugepages }
}

/// A page size: `2M` or `1G`.
pub(super) fn page_size(cx: &mut Cx, n: &YNode, path: &str) -> Option<PageSize> {
    match cx.choice(n, path, &["2M", "1G"])? {
        "1G" => Some(PageSize::G1),
        _ => Some(PageSize::M2),
    }
}

/// `vnf`: `vpp*` (with its `.exec` template), `testpmd_io`, `testpmd_mac` or `none`.
fn vm_vnf(cx: &mut Cx, f: &Fields, kind: VmKind, has_vnf: &dyn Fn(&str) -> bool) -> Option<Vnf> {
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

    vnf
}

/// `vars`: template variables, names as identifiers, values without control characters.
fn vm_vars(cx: &mut Cx, f: &Fields) -> BTreeMap<String, String> {
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
                    if let Some(real) = computed_var(key) {
                        // The computed value always won: the user's was silently dropped.
                        cx.err(
                            k.pos,
                            &p,
                            format!("set by harness from the VM ({real}); not a template variable to set"),
                        );
                        continue;
                    }
                    match &val.value {
                        _ if val.is_null() => cx.err(
                            val.pos,
                            &p,
                            "expected a value, found nothing (a template would get an empty or `~` text)",
                        ),
                        Value::Scalar { text, .. } => {
                            validate::check_template_value(cx, val.pos, &p, text);
                            // Written into startup.conf as a path: a space or `}` there would end
                            // its section and add configuration of the value's choosing.
                            if matches!(key, "vpp_cli_listen" | "vpp_api_socket") {
                                let problem = if text.starts_with('/') {
                                    validate::socket_path_problem(text)
                                } else {
                                    Some(format!("must be an absolute path (found `{}`)", text.escape_debug()))
                                };
                                if let Some(m) = problem {
                                    cx.err(val.pos, &p, m);
                                }
                            }
                            vars.insert(key.to_string(), text.clone());
                        }
                        _ => cx.err(val.pos, &p, format!("expected a scalar value, found {}", val.kind_name())),
                    }
                }
            }
            _ => cx.err(v.pos, &f.path("vars"), format!("expected a map, found {}", v.kind_name())),
        }
    }

    vars
}

/// Template variables harness computes from the VM (a `vars` entry of the name never reached a
/// template), with the key that sets it, if any.
fn computed_var(name: &str) -> Option<&'static str> {
    Some(match name {
        "queues" => "its `queues:`",
        "jumbo" => "its `jumbo:`",
        "smp" => "its `smp:`",
        "qemu_id" => "its `qemu_id:`",
        "vm_name" | "name" => "its `name:`",
        "node" => "its `node:`",
        "page_size" => "its `page_size:`",
        "init_command" => "its `init_command:`",
        "qga" => "its `qga:`",
        "vnf" | "vnf_kind" | "vnf_bin" | "guest_dpdk" | "guest_vfio" => "its `vnf:`",
        "arch" => "its node's `arch:`",
        "run_id" | "vm_run_dir" | "running_exec" => "the run",
        _ => return None,
    })
}

fn vm_interfaces(cx: &mut Cx, f: &Fields, queues: u32, spans: &mut VmSpans) -> Vec<VmInterface> {
    let mut interfaces = Vec::new();
    if let Some(v) = f.get("interfaces")
        && let Some(items) = cx.seq(v, &f.path("interfaces"))
    {
        for (i, it) in items.iter().enumerate() {
            let p = join(&f.path("interfaces"), &format!("[{i}]"));
            if let Some(iface) = vm_interface(cx, it, &p, queues, spans) {
                interfaces.push(iface);
            }
        }
        if items.len() > MAX_NICS {
            cx.err(v.pos, &f.path("interfaces"), format!("{} NICs; at most {MAX_NICS} are supported", items.len()));
        }
    }

    interfaces
}

fn vm_drives(cx: &mut Cx, f: &Fields) -> Vec<Drive> {
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

    drives
}

/// Readiness and runtime keys.
struct Runtime {
    sched: Sched,
    boot_timeout: Duration,
    start_timeout: Duration,
    ready_markers: Vec<String>,
    fail_markers: Vec<String>,
    qga: bool,
    /// `qga` as written: `None` absent, `Some(None)` invalid.
    qga_written: Option<Option<bool>>,
    init_command: Option<String>,
    extra_args: Vec<String>,
}

fn vm_runtime(cx: &mut Cx, f: &Fields, kind: VmKind) -> Runtime {
    let sched = match f.get("sched").and_then(|v| cx.choice(v, &f.path("sched"), &["rr", "none"])) {
        Some("rr") => Sched::Rr,
        _ => Sched::None,
    };
    let boot_timeout = timeout_key(cx, f, "boot_timeout", Duration::from_secs(120));
    let start_timeout = timeout_key(cx, f, "start_timeout", Duration::from_secs(30));
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
    // Lines of the guest's init script: a block scalar of several commands is fine.
    let init_command = f.get("init_command").and_then(|v| cx.lines(v, &f.path("init_command")));
    let extra_args = f.get("extra_args").and_then(|v| cx.strings(v, &f.path("extra_args"))).unwrap_or_default();

    Runtime {
        sched,
        boot_timeout,
        start_timeout,
        ready_markers,
        fail_markers,
        qga,
        qga_written,
        init_command,
        extra_args,
    }
}

/// A duration key from 1ms to 24h, `default` when absent (or invalid: reported).
fn timeout_key(cx: &mut Cx, f: &Fields, key: &str, default: Duration) -> Duration {
    let Some(v) = f.get(key) else { return default };
    match v.as_scalar().and_then(parse_duration) {
        Some(d) if !d.is_zero() && d <= Duration::from_secs(86_400) => d,
        _ => {
            cx.err(v.pos, &f.path(key), "expected a duration from 1ms to 24h such as `120s`, `2m`, `500ms` or seconds");
            default
        }
    }
}

/// `collect`: guest commands run over the agent at the end of `up` and before `down`; each
/// an argv list, or a string split like a shell would (no shell runs it in the guest).
fn vm_collect(cx: &mut Cx, n: &YNode, path: &str) -> Option<Vec<Vec<String>>> {
    let items = cx.seq(n, path)?;
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let p = join(path, &format!("[{i}]"));
        let argv = match &it.value {
            Value::Seq(_) => cx.strings(it, &p),
            _ => cx.string(it, &p).and_then(|s| match shlex::split(&s) {
                Some(v) => Some(v),
                None => {
                    cx.err(it.pos, &p, "unbalanced quotes in the command");
                    None
                }
            }),
        };
        match argv {
            Some(v) if v.is_empty() || v[0].is_empty() => cx.err(it.pos, &p, "an empty command"),
            Some(v) => out.push(v),
            None => {}
        }
    }
    Some(out)
}

/// The VNFs' configs address the guest's 0000:00:06.0 and 0000:00:07.0: two data NICs.
fn check_vnf_nics(cx: &mut Cx, f: &Fields, vnf: Option<&Vnf>) {
    let vnf_node = f.get("vnf");
    // Each interface's kind as written, so an interface with its own error still counts.
    let kinds: Vec<&str> = match f.get("interfaces").map(|n| &n.value) {
        Some(Value::Seq(items)) => items
            .iter()
            .filter_map(|it| match &it.value {
                Value::Map(e) => Some(e.first().and_then(|(k, _)| k.as_scalar()).unwrap_or("")),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let data_nics = kinds.iter().filter(|k| **k != "net_user").count();
    if let Some(vnf) = vnf
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
    // CSIT's `vpp_2vfpt_*` recipes pass PCI devices through: their `.exec` creates `avf`
    // interfaces on them. Over vhost-user NICs VPP would find no such device.
    if let Some(Vnf::Vpp(name)) = vnf
        && name.starts_with("vpp_2vfpt")
        && kinds.contains(&"vhost_user")
    {
        cx.err(
            vnf_node.map_or(f.pos, |v| v.pos),
            &f.path("vnf"),
            format!("`{name}` takes PCI passthrough NICs (`vfio_pci`), not vhost_user: its .exec creates avf interfaces on them"),
        );
    }
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
}
