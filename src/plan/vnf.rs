//! What runs inside a kernel VM: the VNF command line (VPP, CSIT's testpmd line), the variables
//! every template sees, and the rendered files (init.sh, startup.conf, the `.exec` file).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{FileRole, GUEST_PCI, MTU_JUMBO, MTU_NORMAL, PlanError, PlannedFile, invalid};
use crate::templates::Templates;
use crate::topology::{Vm, VmKind, Vnf};

/// Inputs of the templates beyond the VM itself.
pub(crate) struct TemplateInputs<'a> {
    pub run_id: &'a str,
    pub arch: &'static str,
    pub vm_run_dir: &'a str,
    pub init_path: &'a str,
    pub startup_path: &'a str,
    pub exec_path: &'a str,
    pub mac: &'a dyn Fn(u32) -> String,
}

/// The files a VM needs on the host, with their exact bytes.
pub(crate) fn files(templates: &Templates, vm: &Vm, t: &TemplateInputs) -> Result<Vec<PlannedFile>, PlanError> {
    let vnf_bin = vnf_command(vm, t.startup_path)?;
    let vars = template_vars(vm, t, &vnf_bin);
    let render = |name: &str| {
        templates.render(name, &vars).map_err(|source| PlanError::Template { vm: vm.name.clone(), source })
    };
    let mut files = Vec::new();
    if vm.kind() == VmKind::Kernel {
        files.push(PlannedFile {
            role: FileRole::Init,
            path: t.init_path.to_string(),
            mode: 0o755,
            content: render("init.sh")?,
        });
        if let Vnf::Vpp(name) = &vm.vnf {
            let exec_template = format!("{name}.exec");
            if !templates.has(&exec_template) {
                return Err(invalid(vm, format!("vnf {name}: no template {exec_template}")));
            }
            files.push(PlannedFile {
                role: FileRole::StartupConf,
                path: t.startup_path.to_string(),
                mode: 0o644,
                content: render("startup.conf")?,
            });
            files.push(PlannedFile {
                role: FileRole::Exec,
                path: t.exec_path.to_string(),
                mode: 0o644,
                content: render(&exec_template)?,
            });
        }
    } else if vm.vnf != Vnf::None {
        return Err(invalid(vm, "an image VM runs its own OS: `vnf` must be none"));
    }
    Ok(files)
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
fn template_vars(vm: &Vm, t: &TemplateInputs, vnf_bin: &str) -> BTreeMap<String, Value> {
    let mut v: BTreeMap<String, Value> = vm.vars.iter().map(|(k, s)| (k.clone(), json!(s))).collect();
    for (k, d) in [
        ("mac1", (t.mac)(1)),
        ("mac2", (t.mac)(2)),
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
        ("run_id", json!(t.run_id)),
        ("vm_run_dir", json!(t.vm_run_dir)),
        ("page_size", json!(vm.page_size.as_str())),
        ("init_command", json!(vm.init_command.clone().unwrap_or_default())),
        ("vnf_bin", json!(vnf_bin)),
        ("vnf", json!(vnf)),
        ("vnf_kind", json!(vnf_kind)),
        ("guest_dpdk", json!(guest_dpdk)),
        ("guest_vfio", json!(guest_vfio)),
        ("running_exec", json!(t.exec_path)),
        // For user templates that start the guest agent themselves (x86_64: /dev/ttyS1,
        // aarch64: the virtio port named org.qemu.guest_agent.0).
        ("qga", json!(vm.qga)),
        ("arch", json!(t.arch)),
    ];
    for (k, val) in computed {
        v.insert(k.to_string(), val);
    }
    v
}
