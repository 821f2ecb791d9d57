//! Planning: a pure function from a validated [`Topology`] to a [`Plan`].
//!
//! This is where CSIT fidelity lives (qemu argv, startup.conf, testpmd command line, templates),
//! with CSIT's weaknesses fixed; each deliberate difference is listed in the README (Differences from CSIT).
//! Nothing here does I/O: the same topology always gives the same plan, byte for byte.

pub mod fixture;
mod model;
pub mod render;

pub use model::*;

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::templates::{TemplateError, Templates};
use crate::topology::{Accel, Arch, Node, PageSize, Topology, Vm, VmInterface, VmKind, Vnf};

pub struct PlanOptions<'a> {
    /// Run id; remote paths are `<run_root>/<run_id>/<vm>/...`.
    pub run_id: String,
    pub templates: &'a Templates,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("VM {vm}: {source}")]
    Template { vm: String, source: TemplateError },
    #[error("VM {vm}: {message}")]
    Invalid { vm: String, message: String },
    #[error("no VM named {name} in the topology (VMs: {known})")]
    UnknownVm { name: String, known: String },
    #[error("run id {run_id:?}: {message}")]
    RunId { run_id: String, message: String },
}

/// CSIT's testpmd `--max-pkt-len` (`Constants.get_mtu`, HEAD): jumbo and normal.
pub const MTU_JUMBO: u32 = 9145;
pub const MTU_NORMAL: u32 = 1800;
/// Where the guest finds the two data-plane NICs (QEMU slots 6 and 7), as CSIT hard-codes.
pub const GUEST_PCI: [&str; 2] = ["0000:00:06.0", "0000:00:07.0"];

/// Build the plan for every DUT that has VMs.
pub fn build(topology: &Topology, opts: &PlanOptions) -> Result<Plan, PlanError> {
    check_run_id(&opts.run_id)?;
    let mut nodes = Vec::new();
    for (dut_index, node) in topology.duts().enumerate() {
        let vms: Vec<&Vm> = topology.vms_on(&node.name).collect();
        if vms.is_empty() {
            continue;
        }
        let run_dir = format!("{}/{}", node.run_root.trim_end_matches('/'), opts.run_id);
        let mut hugepages: BTreeMap<PageSize, u64> = BTreeMap::new();
        let mut vm_plans = Vec::new();
        for vm in vms {
            let ctx = VmContext { topology, node, dut_index: dut_index + 1, run_dir: &run_dir, opts };
            let plan = plan_vm(&ctx, vm)?;
            *hugepages.entry(vm.page_size).or_default() += vm.mem.div_ceil(vm.page_size.mib());
            vm_plans.push(plan);
        }
        nodes.push(NodePlan {
            name: node.name.clone(),
            host: node.host.clone(),
            arch: node.arch,
            accel: node.qemu.accel,
            run_dir,
            hugepages: hugepages
                .into_iter()
                .map(|(size, pages)| HugepageNeed { size, pages, mount: hugepage_mount(node, size) })
                .collect(),
            allocate_hugepages: node.hugepages.allocate,
            vms: vm_plans,
        });
    }
    Ok(Plan { run_id: opts.run_id.clone(), nodes })
}

/// Keep only the named VMs (and the nodes that still have one); an unknown name is an error.
pub fn select_vms(plan: &mut Plan, names: &[String]) -> Result<(), PlanError> {
    if names.is_empty() {
        return Ok(());
    }
    let known: Vec<&str> = plan.nodes.iter().flat_map(|n| n.vms.iter().map(|v| v.name.as_str())).collect();
    if let Some(bad) = names.iter().find(|n| !known.contains(&n.as_str())) {
        return Err(PlanError::UnknownVm { name: bad.clone(), known: known.join(", ") });
    }
    for node in &mut plan.nodes {
        node.vms.retain(|v| names.contains(&v.name));
    }
    plan.nodes.retain(|n| !n.vms.is_empty());
    Ok(())
}

/// The run id becomes a path component on every node and part of the guest kernel command line.
fn check_run_id(run_id: &str) -> Result<(), PlanError> {
    let ok = !run_id.is_empty()
        && run_id != "."
        && run_id != ".."
        && run_id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(PlanError::RunId {
            run_id: run_id.to_string(),
            message: "use only letters, digits, `-`, `_` and `.`".to_string(),
        })
    }
}

/// hugetlbfs mount for a page size on a node: the configured one, else CSIT's defaults.
pub fn hugepage_mount(node: &Node, size: PageSize) -> String {
    node.hugepages.mounts.get(&size).cloned().unwrap_or_else(|| match size {
        PageSize::M2 => "/dev/hugepages".to_string(),
        PageSize::G1 => "/dev/hugepages1G".to_string(),
    })
}

struct VmContext<'a> {
    topology: &'a Topology,
    node: &'a Node,
    /// 1-based position among the DUTs (for unique MACs).
    dut_index: usize,
    run_dir: &'a str,
    opts: &'a PlanOptions<'a>,
}

/// Guest NIC MAC for NIC counter `n`.
fn mac(ctx: &VmContext, vm: &Vm, n: u32) -> String {
    if ctx.topology.unique_macs {
        format!("52:54:00:{:02x}:{:02x}:{:02x}", ctx.dut_index, vm.qemu_id, n)
    } else {
        format!("52:54:00:00:{:02x}:{:02x}", vm.qemu_id, n)
    }
}

/// Escape a value embedded in a comma-separated QEMU option string (`,` is written `,,`).
fn qopt(v: &str) -> String {
    v.replace(',', ",,")
}

fn invalid(vm: &Vm, message: impl Into<String>) -> PlanError {
    PlanError::Invalid { vm: vm.name.clone(), message: message.into() }
}

fn plan_vm(ctx: &VmContext, vm: &Vm) -> Result<VmPlan, PlanError> {
    let node = ctx.node;
    let vm_run_dir = format!("{}/{}", ctx.run_dir, vm.name);
    check_vm(ctx, vm, &vm_run_dir)?;
    let paths = VmPaths {
        run_dir: vm_run_dir.clone(),
        pidfile: format!("{vm_run_dir}/qemu.pid"),
        serial_log: format!("{vm_run_dir}/serial.log"),
        qmp: format!("{vm_run_dir}/qmp.sock"),
        qga: vm.qga.then(|| format!("{vm_run_dir}/qga.sock")),
    };
    let init_path = format!("{vm_run_dir}/init.sh");
    let startup_path = format!("{vm_run_dir}/startup.conf");
    let exec_path = format!("{vm_run_dir}/running.exec");

    // ---- argv, CSIT HEAD order (add_default_params, add_kernelvm_params, qmp/qga, NICs) ----
    let kvm = matches!(node.qemu.accel, Accel::Kvm | Accel::Auto);
    let accel = if kvm { "kvm" } else { "tcg" };
    let mut argv_buf: Vec<String> = Vec::new();
    let argv = &mut argv_buf;
    let mut accel_args = AccelArgs { enable_kvm: None, cpu_value: None, machine_value: None };
    argv.push(format!("{}/qemu-system-{}", node.qemu.bin_dir.trim_end_matches('/'), node.arch.as_str()));
    push(argv, &["-daemonize", "-nodefaults", "-name"]);
    argv.push(format!("{},debug-threads=on", qopt(&vm.name)));
    push(argv, &["-no-user-config", "-nographic"]);
    if kvm {
        accel_args.enable_kvm = Some(argv.len());
        argv.push("-enable-kvm".into());
    }
    push(argv, &["-pidfile", &paths.pidfile, "-cpu"]);
    accel_args.cpu_value = Some(argv.len());
    argv.push(if kvm { "host" } else { "max" }.into());
    argv.push("-machine".into());
    accel_args.machine_value = Some(argv.len());
    argv.push(match node.arch {
        Arch::X86_64 => format!("pc,accel={accel},usb=off,mem-merge=off"),
        Arch::Aarch64 => format!("virt,accel={accel},usb=off,mem-merge=off,gic-version=3"),
    });
    argv.push("-smp".into());
    argv.push(format!("{0},sockets=1,cores={0},threads=1", vm.smp));
    argv.push("-object".into());
    argv.push(format!(
        "memory-backend-file,id=mem,size={}M,mem-path={},share=on,prealloc=on",
        vm.mem,
        qopt(&hugepage_mount(node, vm.page_size))
    ));
    push(argv, &["-m", &format!("{}M", vm.mem), "-numa", "node,memdev=mem"]);
    argv.push("-chardev".into());
    argv.push(format!("file,id=serial0,path={},append=on", qopt(&paths.serial_log)));
    push(argv, &["-serial", "chardev:serial0"]);

    let mut host_lookups = Vec::new();
    let console = match node.arch {
        Arch::X86_64 => "ttyS0",
        Arch::Aarch64 => "ttyAMA0",
    };
    match vm.kind {
        VmKind::Kernel => {
            let kernel = vm.kernel.as_deref().ok_or_else(|| invalid(vm, "a kernel VM needs `kernel`"))?;
            let initrd = vm.initrd.as_deref().ok_or_else(|| invalid(vm, "a kernel VM needs `initrd`"))?;
            push(argv, &["-fsdev", "local,id=root9p,path=/,security_model=none,multidevs=remap"]);
            push(argv, &["-device", "virtio-9p-pci,fsdev=root9p,mount_tag=virtioroot"]);
            for (what, flag, value) in [("kernel", "-kernel", kernel), ("initrd", "-initrd", initrd)] {
                argv.push(flag.into());
                host_lookups.push(HostLookup {
                    argv_index: argv.len(),
                    what: what.into(),
                    prefix: value.into(),
                    before: String::new(),
                    after: String::new(),
                });
                argv.push(value.into());
            }
            argv.push("-append".into());
            argv.push(format!(
                "ro rootfstype=9p rootflags=trans=virtio root=virtioroot console={console} tsc=reliable \
                 hugepages={} hugepagesz={} init={init_path} fastboot",
                vm.guest_hugepages,
                vm.page_size.as_str()
            ));
        }
        VmKind::Image => {
            if vm.image.is_none() {
                return Err(invalid(vm, "an image VM needs `image`"));
            }
        }
    }
    if let Some(qga) = &paths.qga {
        argv.push("-chardev".into());
        argv.push(format!("socket,path={},server=on,wait=off,id=qga0", qopt(qga)));
        match node.arch {
            // With -nodefaults and the serial log as COM1, this is COM2: /dev/ttyS1 in the guest.
            Arch::X86_64 => push(argv, &["-device", "isa-serial,chardev=qga0"]),
            // The virt machine has no ISA bus.
            Arch::Aarch64 => push(
                argv,
                &["-device", "virtio-serial-pci", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"],
            ),
        }
    }
    argv.push("-qmp".into());
    argv.push(format!("unix:{},server=on,wait=off", qopt(&paths.qmp)));

    let nics = add_nics(ctx, vm, argv)?;
    add_drives(vm, argv);
    argv.extend(vm.extra_args.iter().cloned());

    // ---- VNF command line and files ----
    let vnf_bin = vnf_command(vm, &startup_path)?;
    let vars = template_vars(ctx, vm, &vm_run_dir, &vnf_bin, &exec_path);
    let render = |name: &str| {
        ctx.opts.templates.render(name, &vars).map_err(|source| PlanError::Template { vm: vm.name.clone(), source })
    };
    let mut files = Vec::new();
    if vm.kind == VmKind::Kernel {
        if let Vnf::Vpp(name) = &vm.vnf {
            let exec_template = format!("{name}.exec");
            if !ctx.opts.templates.has(&exec_template) {
                return Err(invalid(vm, format!("vnf {name}: no template {exec_template}")));
            }
            files.push(PlannedFile {
                role: FileRole::StartupConf,
                path: startup_path.clone(),
                mode: 0o644,
                content: render("startup.conf")?,
            });
            files.push(PlannedFile {
                role: FileRole::Exec,
                path: exec_path.clone(),
                mode: 0o644,
                content: render(&exec_template)?,
            });
        }
        files
            .insert(0, PlannedFile { role: FileRole::Init, path: init_path, mode: 0o755, content: render("init.sh")? });
    } else if vm.vnf != Vnf::None {
        return Err(invalid(vm, "an image VM runs its own OS: `vnf` must be none"));
    }

    let (readiness, pinning) = readiness_and_pinning(vm)?;

    Ok(VmPlan {
        name: vm.name.clone(),
        qemu_id: vm.qemu_id,
        argv: argv_buf,
        host_lookups,
        accel_args,
        files,
        paths,
        readiness,
        pinning,
        nics,
        mem_mib: vm.mem,
        page_size: vm.page_size,
    })
}

/// Inputs the plan cannot turn into a working VM (the loader checks most; these depend on the plan).
fn check_vm(ctx: &VmContext, vm: &Vm, vm_run_dir: &str) -> Result<(), PlanError> {
    if vm.qemu_id > 255 {
        return Err(invalid(vm, format!("qemu_id {} does not fit in a MAC byte (max 255)", vm.qemu_id)));
    }
    if ctx.dut_index > 255 && ctx.topology.unique_macs {
        return Err(invalid(vm, "more than 255 DUTs: unique_macs cannot number them"));
    }
    if vm.smp == 0 {
        return Err(invalid(vm, "smp must be at least 1"));
    }
    if vm.mem == 0 || !vm.mem.is_multiple_of(vm.page_size.mib()) {
        return Err(invalid(
            vm,
            format!("mem {} MiB is not a positive multiple of the {} page size", vm.mem, vm.page_size.as_str()),
        ));
    }
    if vm.kind == VmKind::Kernel && vm.guest_hugepages * vm.page_size.mib() >= vm.mem {
        // The guest kernel would reserve all its RAM as hugepages and die at boot.
        return Err(invalid(
            vm,
            format!(
                "guest_hugepages {} x {} does not fit in mem {} MiB; lower guest_hugepages or raise mem",
                vm.guest_hugepages,
                vm.page_size.as_str(),
                vm.mem
            ),
        ));
    }
    if vm_run_dir.chars().any(|c| c.is_whitespace() || c == '\'' || c == '"') {
        // The init path goes on the guest kernel command line, which splits on spaces.
        return Err(invalid(vm, format!("run directory {vm_run_dir:?} must not contain spaces or quotes")));
    }
    Ok(())
}

/// The guest NICs in topology order: vhost-user and vfio-pci get counter N (slot N+5), user
/// networking gets auto slots and MAC bytes ff, fe, ...
fn add_nics(ctx: &VmContext, vm: &Vm, argv: &mut Vec<String>) -> Result<Vec<PlannedNic>, PlanError> {
    let mut nics = Vec::new();
    let mut n: u32 = 0;
    let mut mgmt: u32 = 0;
    for iface in &vm.interfaces {
        match iface {
            VmInterface::VhostUser(v) => {
                n += 1;
                let slot = pci_slot(vm, n)?;
                let mac = mac(ctx, vm, n);
                argv.push("-chardev".into());
                argv.push(format!(
                    "socket,id=char{n},path={}{}",
                    qopt(&v.socket),
                    if v.server { ",server=on" } else { "" }
                ));
                argv.push("-netdev".into());
                argv.push(format!("vhost-user,id=vhost{n},chardev=char{n},queues={}", v.queues));
                let onoff = |b: bool| if b { "on" } else { "off" };
                let (c, g) = (onoff(v.csum), onoff(v.gso));
                let mut dev = format!(
                    "virtio-net-pci,netdev=vhost{n},mac={mac},addr={slot:x}.0,mq=on,vectors={},csum={c},gso={g},\
                     guest_tso4={g},guest_tso6={g},guest_ecn={g}",
                    v.vectors.unwrap_or(2 * v.queues + 2)
                );
                if vm.jumbo {
                    dev.push_str(",mrg_rxbuf=on,host_mtu=9200");
                }
                if let Some(qs) = v.queue_size {
                    dev.push_str(&format!(",rx_queue_size={qs},tx_queue_size={qs}"));
                }
                push(argv, &["-device", &dev]);
                nics.push(PlannedNic {
                    id: format!("vhost{n}"),
                    kind: "vhost_user".into(),
                    mac: Some(mac),
                    guest_pci: Some(format!("0000:00:{slot:02x}.0")),
                });
            }
            VmInterface::VfioPci(pci) => {
                n += 1;
                let slot = pci_slot(vm, n)?;
                push(argv, &["-device", &format!("vfio-pci,host={pci},addr={slot:x}.0")]);
                nics.push(PlannedNic {
                    id: format!("vfio{n}"),
                    kind: "vfio_pci".into(),
                    mac: None,
                    guest_pci: Some(format!("0000:00:{slot:02x}.0")),
                });
            }
            VmInterface::NetUser { net, host_port } => {
                // Not counted in N (as CSIT's add_net_user): the data NICs keep slots 6 and 7.
                // MAC byte ff, fe, ... as CSIT's nested-VM management NIC (`…:{id}:ff`).
                mgmt += 1;
                if mgmt > 16 {
                    return Err(invalid(vm, "at most 16 net_user interfaces"));
                }
                let id = if mgmt == 1 { "mgmt".to_string() } else { format!("mgmt{mgmt}") };
                let mac = mac(ctx, vm, 256 - mgmt);
                let mut netdev = format!("user,id={id},net={net}");
                if let Some(p) = host_port {
                    // Loopback only: CSIT's `hostfwd=tcp::port-:22` exposed guest ssh on every interface.
                    netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{p}-:22"));
                }
                push(argv, &["-netdev", &netdev, "-device", &format!("virtio-net-pci,netdev={id},mac={mac}")]);
                nics.push(PlannedNic { id, kind: "net_user".into(), mac: Some(mac), guest_pci: None });
            }
        }
    }
    Ok(nics)
}

/// The image (image VMs) as the first virtio disk, then the configured drives.
fn add_drives(vm: &Vm, argv: &mut Vec<String>) {
    if let (VmKind::Image, Some(image)) = (vm.kind, &vm.image) {
        argv.push("-drive".into());
        argv.push(format!(
            "file={},format={},cache=none,if=virtio,file.locking=off",
            qopt(image),
            qopt(&vm.image_format)
        ));
    }
    for d in &vm.drives {
        argv.push("-drive".into());
        argv.push(if d.cdrom {
            match d.index {
                Some(i) => format!("file={},index={i},media=cdrom", qopt(&d.file)),
                None => format!("file={},media=cdrom", qopt(&d.file)),
            }
        } else {
            format!("file={},format={},cache=none,if=virtio,file.locking=off", qopt(&d.file), qopt(&d.format))
        });
    }
}

fn readiness_and_pinning(vm: &Vm) -> Result<(Readiness, Option<Pinning>), PlanError> {
    let mut ready_markers = match &vm.vnf {
        Vnf::Vpp(_) => vec![Marker::new(["vpp ", "built by"])],
        Vnf::TestpmdIo | Vnf::TestpmdMac => vec![Marker::new(["Press enter to exit"])],
        Vnf::None => vec![],
    };
    ready_markers.extend(vm.ready_markers.iter().map(|m| Marker::new([m.as_str()])));
    let mut fail_markers = vec![Marker::new(["reboot: Power down"]), Marker::new(["Kernel panic"])];
    fail_markers.extend(vm.fail_markers.iter().map(|m| Marker::new([m.as_str()])));
    if ready_markers.is_empty() && !vm.qga {
        return Err(invalid(vm, "nothing to wait for: vnf none needs `ready_markers` or `qga: true`"));
    }
    let pinning = match &vm.cpus {
        Some(cpus) if cpus.len() != vm.smp as usize => {
            return Err(invalid(vm, format!("cpus lists {} CPUs but smp is {}", cpus.len(), vm.smp)));
        }
        Some(cpus) => Some(Pinning { cpus: cpus.clone(), sched: vm.sched }),
        None => None,
    };

    let readiness = Readiness { ready_markers, fail_markers, qga: vm.qga, timeout: vm.boot_timeout };
    Ok((readiness, pinning))
}
fn push(argv: &mut Vec<String>, parts: &[&str]) {
    argv.extend(parts.iter().map(|s| s.to_string()));
}

/// QEMU slot for NIC `n`: 6, 7, ... (CSIT's `addr={N+5}.0`, written in hex as QEMU parses it).
fn pci_slot(vm: &Vm, n: u32) -> Result<u32, PlanError> {
    let slot = n + 5;
    if slot > 0x1f {
        return Err(invalid(vm, format!("too many NICs: NIC {n} would need PCI slot {slot:#x} (max 0x1f)")));
    }
    Ok(slot)
}

/// The VNF command line the init script runs in the foreground ("" for none).
fn vnf_command(vm: &Vm, startup_path: &str) -> Result<String, PlanError> {
    let var = |k: &str| vm.vars.get(k).map(String::as_str);
    Ok(match &vm.vnf {
        Vnf::Vpp(_) => crate::quote::join(&[var("vpp_bin").unwrap_or("/usr/bin/vpp"), "-c", startup_path]),
        Vnf::TestpmdIo | Vnf::TestpmdMac => {
            if vm.smp < 2 {
                return Err(invalid(vm, "testpmd needs smp >= 2 (one main lcore, at least one forwarding core)"));
            }
            let bin = match var("testpmd") {
                Some(b) => b.to_string(),
                None => {
                    format!("{}/build/app/dpdk-testpmd", var("dpdk_dir").unwrap_or("/opt/dpdk").trim_end_matches('/'))
                }
            };
            let lcores: Vec<String> = (0..vm.smp).map(|c| c.to_string()).collect();
            let mac_mode = vm.vnf == Vnf::TestpmdMac;
            let mut a: Vec<String> = vec![bin, "-v".into(), "--lcores".into(), lcores.join(",")];
            for pci in GUEST_PCI {
                a.extend(["-a".to_string(), pci.to_string()]);
            }
            a.push("--in-memory".into());
            a.push("--".into());
            a.push(format!("--forward-mode={}", if mac_mode { "mac" } else { "io" }));
            a.extend(["--burst=64", "--txd=1024", "--rxd=1024"].map(String::from));
            a.push(format!("--txq={}", vm.queues));
            a.push(format!("--rxq={}", vm.queues));
            a.extend(
                [
                    "--tx-offloads=0x0",
                    "--numa",
                    "--auto-start",
                    "--total-num-mbufs=32768",
                    "--nb-ports=2",
                    "--portmask=0x3",
                    "--disable-link-check",
                ]
                .map(String::from),
            );
            if mac_mode {
                for (port, key) in [(0, "vif1_mac"), (1, "vif2_mac")] {
                    let peer = var(key).ok_or_else(|| invalid(vm, format!("testpmd_mac needs vars.{key}")))?;
                    a.push(format!("--eth-peer={port},{peer}"));
                }
            }
            a.push(format!("--max-pkt-len={}", if vm.jumbo { MTU_JUMBO } else { MTU_NORMAL }));
            a.push("--mbuf-size=16384".into());
            a.push(format!("--nb-cores={}", vm.smp - 1));
            crate::quote::join(&a)
        }
        Vnf::None => String::new(),
    })
}

/// Every variable a template sees. `vm.vars` first; the computed values below win, except the
/// ones a user may set (`mac1`, `mac2`, the VPP sockets). `vif1_mac`/`vif2_mac` come only from
/// `vars`, so a template that needs them and does not get them fails with their names.
fn template_vars(
    ctx: &VmContext,
    vm: &Vm,
    vm_run_dir: &str,
    vnf_bin: &str,
    exec_path: &str,
) -> BTreeMap<String, Value> {
    let mut v: BTreeMap<String, Value> = vm.vars.iter().map(|(k, s)| (k.clone(), json!(s))).collect();
    for (k, d) in [
        ("mac1", mac(ctx, vm, 1)),
        ("mac2", mac(ctx, vm, 2)),
        ("vpp_cli_listen", "/run/vpp/cli.sock".to_string()),
        ("vpp_api_socket", "/run/vpp/api.sock".to_string()),
    ] {
        v.entry(k.to_string()).or_insert_with(|| json!(d));
    }
    let (vnf, vnf_kind) = match &vm.vnf {
        Vnf::Vpp(name) => (name.as_str(), "vpp"),
        Vnf::TestpmdIo => ("testpmd_io", "testpmd"),
        Vnf::TestpmdMac => ("testpmd_mac", "testpmd"),
        Vnf::None => ("none", "none"),
    };
    // DPDK in the guest owns the NICs through vfio-pci (VPP's dpdk plugin for vhost VNFs, testpmd);
    // VPP's native virtio and avf drivers bind the devices themselves but still need no-IOMMU vfio.
    let guest_dpdk = matches!(&vm.vnf, Vnf::Vpp(n) if n.contains("vhost")) || vnf_kind == "testpmd";
    let guest_vfio = vnf_kind == "vpp" || vnf_kind == "testpmd";
    let computed = [
        ("queues", json!(vm.queues)),
        ("jumbo", json!(vm.jumbo)),
        ("smp", json!(vm.smp)),
        ("qemu_id", json!(vm.qemu_id)),
        ("vm_name", json!(vm.name)),
        ("name", json!(vm.name)),
        ("node", json!(vm.node)),
        ("run_id", json!(ctx.opts.run_id)),
        ("vm_run_dir", json!(vm_run_dir)),
        ("page_size", json!(vm.page_size.as_str())),
        ("init_command", json!(vm.init_command.clone().unwrap_or_default())),
        ("vnf_bin", json!(vnf_bin)),
        ("vnf", json!(vnf)),
        ("vnf_kind", json!(vnf_kind)),
        ("guest_dpdk", json!(guest_dpdk)),
        ("guest_vfio", json!(guest_vfio)),
        ("running_exec", json!(exec_path)),
        // For user templates that start the guest agent themselves (x86_64: /dev/ttyS1,
        // aarch64: the virtio port named org.qemu.guest_agent.0).
        ("qga", json!(vm.qga)),
        ("arch", json!(ctx.node.arch.as_str())),
    ];
    for (k, val) in computed {
        v.insert(k.to_string(), val);
    }
    v
}

#[cfg(test)]
mod tests;
