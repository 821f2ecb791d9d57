//! The qemu argv of one VM, in CSIT HEAD's order (`add_default_params`, `add_kernelvm_params`,
//! QMP/QGA, NICs, drives), with every host-dependent value already decided: the accelerator's
//! arguments, the kernel/initrd files and the NUMA binding come in as [`Decided`].

use super::{AccelChoice, PlanError, PlannedNic, VmPaths, invalid};
use crate::topology::{Arch, Boot, Node, Vm, VmInterface, VmKind};

/// The host-dependent inputs of one VM's argv.
pub(crate) struct Decided<'a> {
    pub accel: AccelChoice,
    /// Kernel and initrd files (kernel VMs).
    pub boot_files: Option<(String, String)>,
    pub numa: Option<u32>,
    pub init_path: &'a str,
    /// Guest NIC MAC for NIC counter `n`.
    pub mac: &'a dyn Fn(u32) -> String,
}

/// Escape a value embedded in a comma-separated QEMU option string (`,` is written `,,`).
pub(crate) fn qopt(v: &str) -> String {
    v.replace(',', ",,")
}

fn push(argv: &mut Vec<String>, parts: &[&str]) {
    argv.extend(parts.iter().map(|s| s.to_string()));
}

/// The argv and the guest NICs it creates.
pub(crate) fn build(
    node: &Node,
    vm: &Vm,
    paths: &VmPaths,
    d: &Decided,
) -> Result<(Vec<String>, Vec<PlannedNic>), PlanError> {
    let mut argv = Vec::new();
    machine(&mut argv, node, vm, paths, d);
    boot(&mut argv, node, vm, d)?;
    if let Some(qga) = &paths.qga {
        argv.push("-chardev".into());
        argv.push(format!("socket,path={},server=on,wait=off,id=qga0", qopt(qga)));
        match node.arch {
            // With -nodefaults and the serial log as COM1, this is COM2: /dev/ttyS1 in the guest.
            Arch::X86_64 => push(&mut argv, &["-device", "isa-serial,chardev=qga0"]),
            // The virt machine has no ISA bus.
            Arch::Aarch64 => push(
                &mut argv,
                &["-device", "virtio-serial-pci", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"],
            ),
        }
    }
    argv.push("-qmp".into());
    argv.push(format!("unix:{},server=on,wait=off", qopt(&paths.qmp)));
    let nics = nics(vm, &mut argv, d.mac)?;
    drives(vm, &mut argv);
    argv.extend(vm.extra_args.iter().cloned());
    Ok((argv, nics))
}

/// Binary, name, accelerator, CPU, memory and the serial log.
fn machine(argv: &mut Vec<String>, node: &Node, vm: &Vm, paths: &VmPaths, d: &Decided) {
    let kvm = d.accel == AccelChoice::Kvm;
    argv.push(node.qemu_binary());
    push(argv, &["-daemonize", "-nodefaults", "-name"]);
    argv.push(format!("{},debug-threads=on", qopt(&vm.name)));
    push(argv, &["-no-user-config", "-nographic"]);
    if kvm {
        argv.push("-enable-kvm".into());
    }
    push(argv, &["-pidfile", &paths.pidfile, "-cpu", if kvm { "host" } else { "max" }, "-machine"]);
    let accel = d.accel.as_str();
    argv.push(match node.arch {
        Arch::X86_64 => format!("pc,accel={accel},usb=off,mem-merge=off"),
        Arch::Aarch64 => format!("virt,accel={accel},usb=off,mem-merge=off,gic-version=3"),
    });
    argv.push("-smp".into());
    argv.push(format!("{0},sockets=1,cores={0},threads=1", vm.smp));
    argv.push("-object".into());
    let mut mem = format!(
        "memory-backend-file,id=mem,size={}M,mem-path={},share=on,prealloc=on",
        vm.mem,
        qopt(&node.hugepage_mount(vm.page_size))
    );
    if let Some(n) = d.numa {
        mem.push_str(&format!(",host-nodes={n},policy=bind"));
    }
    argv.push(mem);
    push(argv, &["-m", &format!("{}M", vm.mem), "-numa", "node,memdev=mem"]);
    argv.push("-chardev".into());
    argv.push(format!("file,id=serial0,path={},append=on", qopt(&paths.serial_log)));
    push(argv, &["-serial", "chardev:serial0"]);
}

/// Kernel VMs: host `/` over 9p, kernel, initrd and the kernel command line.
fn boot(argv: &mut Vec<String>, node: &Node, vm: &Vm, d: &Decided) -> Result<(), PlanError> {
    match vm.kind() {
        VmKind::Kernel => {
            let (kernel, initrd) =
                d.boot_files.as_ref().ok_or_else(|| invalid(vm, "a kernel VM needs `kernel` and `initrd`"))?;
            let console = match node.arch {
                Arch::X86_64 => "ttyS0",
                Arch::Aarch64 => "ttyAMA0",
            };
            push(argv, &["-fsdev", "local,id=root9p,path=/,security_model=none,multidevs=remap,readonly=on"]);
            push(argv, &["-device", "virtio-9p-pci,fsdev=root9p,mount_tag=virtioroot"]);
            push(argv, &["-kernel", kernel, "-initrd", initrd, "-append"]);
            argv.push(format!(
                "ro rootfstype=9p rootflags=trans=virtio root=virtioroot console={console} tsc=reliable \
                 hugepages={} hugepagesz={} init={} fastboot",
                vm.guest_hugepages,
                vm.page_size.as_str(),
                d.init_path
            ));
        }
        // The image is the first drive (see `drives`).
        VmKind::Image => {}
    }
    Ok(())
}

/// QEMU slot for NIC `n`: 6, 7, ... (CSIT's `addr={N+5}.0`, written in hex as QEMU parses it).
fn pci_slot(vm: &Vm, n: u32) -> Result<u32, PlanError> {
    let slot = n + 5;
    if slot > 0x1f {
        return Err(invalid(vm, format!("too many NICs: NIC {n} would need PCI slot {slot:#x} (max 0x1f)")));
    }
    Ok(slot)
}

/// The guest NICs in topology order: vhost-user and vfio-pci get counter N (slot N+5), user
/// networking gets auto slots and MAC bytes ff, fe, ...
fn nics(vm: &Vm, argv: &mut Vec<String>, mac: &dyn Fn(u32) -> String) -> Result<Vec<PlannedNic>, PlanError> {
    // QEMU gives a device without `addr` the first free slot from 2 when it comes to it: the
    // 9p root of a kernel VM, then each net_user NIC listed before the data NICs. Reaching
    // slot 6 there, the first data NIC's `addr=6.0` is taken and QEMU refuses to start.
    let is_data = |i: &&VmInterface| matches!(i, VmInterface::VhostUser(_) | VmInterface::VfioPci(_));
    if vm.interfaces.iter().any(|i| is_data(&i)) {
        let auto_before = vm.interfaces.iter().take_while(|i| !is_data(i)).count() as u32
            + u32::from(matches!(vm.boot, Boot::Kernel { .. }));
        if 2 + auto_before > 6 {
            return Err(invalid(
                vm,
                "the net_user interfaces listed before the first vhost_user/vfio_pci one would take PCI slot 6,                  the first data NIC's: list them after the data NICs",
            ));
        }
    }
    let mut nics = Vec::new();
    let mut n: u32 = 0;
    let mut mgmt: u32 = 0;
    for iface in &vm.interfaces {
        match iface {
            VmInterface::VhostUser(v) => {
                n += 1;
                let slot = pci_slot(vm, n)?;
                let mac = mac(n);
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
                    socket: Some(v.socket.clone()),
                    server: Some(v.server),
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
                    socket: None,
                    server: None,
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
                let mac = mac(256 - mgmt);
                let mut netdev = format!("user,id={id},net={net}");
                if let Some(p) = host_port {
                    // Loopback only: CSIT's `hostfwd=tcp::port-:22` exposed guest ssh on every interface.
                    netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{p}-:22"));
                }
                push(argv, &["-netdev", &netdev, "-device", &format!("virtio-net-pci,netdev={id},mac={mac}")]);
                nics.push(PlannedNic {
                    id,
                    kind: "net_user".into(),
                    mac: Some(mac),
                    guest_pci: None,
                    socket: None,
                    server: None,
                });
            }
        }
    }
    Ok(nics)
}

/// The image (image VMs) as the first virtio disk, then the configured drives.
fn drives(vm: &Vm, argv: &mut Vec<String>) {
    if let Boot::Image { image, format } = &vm.boot {
        argv.push("-drive".into());
        argv.push(format!("file={},format={},cache=none,if=virtio,file.locking=off", qopt(image), qopt(format)));
    }
    for d in &vm.drives {
        argv.push("-drive".into());
        argv.push(if d.cdrom {
            match d.index {
                Some(i) => format!("file={},index={i},media=cdrom", qopt(&d.file)),
                None => format!("file={},media=cdrom", qopt(&d.file)),
            }
        } else {
            // `index` places the disk among the virtio drives (the image, unindexed, takes the
            // first free one); it was accepted and checked for clashes, then left out.
            let index = d.index.map(|i| format!(",index={i}")).unwrap_or_default();
            format!("file={},format={},cache=none,if=virtio{index},file.locking=off", qopt(&d.file), qopt(&d.format))
        });
    }
}
