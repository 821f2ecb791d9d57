//! The validated, typed topology: what `topology::load` produces and `plan::build` consumes.
//!
//! These types describe *what the user asked for*, after defaults are applied and every
//! cross-check has passed. Nothing here knows about SSH or QEMU command lines.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// A whole topology file: CSIT's `metadata:` + `nodes:` plus the harness' `vms:`.
#[derive(Debug, Clone, Serialize)]
pub struct Topology {
    /// The file this was loaded from (for messages and for resolving relative paths).
    pub path: PathBuf,
    /// Nodes in file order.
    pub nodes: Vec<Node>,
    /// VMs in file order, with defaults (qemu_id, name, ...) filled in.
    pub vms: Vec<Vm>,
    /// Give every VM NIC a MAC that is unique across nodes (`52:54:00:<node>:<id>:<nic>`)
    /// instead of CSIT's per-node `52:54:00:00:<id>:<nic>`. Top-level key `unique_macs`.
    pub unique_macs: bool,
    /// `chains:` entries (CSIT's NF chains), at most one per node. Their VMs' names and ids are
    /// fixed here; their CPUs come from the host's layout, so the plan expands them.
    pub chains: Vec<ChainDef>,
    /// Where each VM of `vms:` is written (by VM name), so a problem found later (at plan time)
    /// still points at `file:line:col`.
    #[serde(skip)]
    pub written: BTreeMap<String, Written>,
}

/// A place in the topology file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub line: usize,
    pub column: usize,
    /// Key path, e.g. `vms[2]`.
    pub key: String,
}

/// One validated `chains:` entry: CSIT's parameters, the `vm:` template every VM of the chain
/// starts from, and where the entry is written (for messages about it at plan time).
#[derive(Debug, Clone, Serialize)]
pub struct ChainDef {
    pub spec: crate::topology::chains::ChainSpec,
    /// The `vm:` keys as a VM: `node`, `vnf`, `queues` and the two vhost-user NICs come from the
    /// chain; `qemu_id`, `name`, `cpus`/`smp`, sockets and the MAC variables are set per VM.
    /// `cpus` here means "every VM of the chain pinned to these CPUs" (no CSIT placement).
    pub template: Vm,
    /// `chains[i]`.
    pub path: String,
    pub line: usize,
    pub column: usize,
}

impl ChainDef {
    /// `(qemu_id, name)` of every VM of the chain, in CSIT's order (chains outer, nodes inner).
    pub fn vm_ids(&self) -> Vec<(u32, String)> {
        (1..=self.spec.vm_count() as u32).map(|q| (q, format!("{}_{q}", self.spec.node))).collect()
    }
}

impl Topology {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
    /// DUT nodes, in file order: the only nodes the harness drives.
    pub fn duts(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.node_type == NodeType::Dut)
    }
    pub fn vms_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Vm> + 'a {
        self.vms.iter().filter(move |v| v.node == node)
    }
    /// `(node, name)` of every VM: the `vms:` entries, then the chains' VMs (their names do not
    /// depend on the host, only their CPUs do).
    pub fn vm_names(&self) -> Vec<(String, String)> {
        let explicit = self.vms.iter().map(|v| (v.node.clone(), v.name.clone()));
        let chained = self.chains.iter().flat_map(|c| c.vm_ids().into_iter().map(|(_, n)| (c.spec.node.clone(), n)));
        explicit.chain(chained).collect()
    }
    /// The chain entry of a node, if any (at most one per node).
    pub fn chain_on(&self, node: &str) -> Option<&ChainDef> {
        self.chains.iter().find(|c| c.spec.node == node)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum NodeType {
    Tg,
    Dut,
    /// CSIT inserts `VM` nodes at run time; a file may also carry other types. Parsed, never driven.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

/// Hugepage size. Only the two sizes x86_64 and aarch64 (4K granule) share are supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PageSize {
    #[serde(rename = "2M")]
    M2,
    #[serde(rename = "1G")]
    G1,
}

impl PageSize {
    /// As written in kernel command lines, startup.conf and topology files: `2M` / `1G`.
    pub fn as_str(self) -> &'static str {
        match self {
            PageSize::M2 => "2M",
            PageSize::G1 => "1G",
        }
    }
    pub fn kib(self) -> u64 {
        match self {
            PageSize::M2 => 2048,
            PageSize::G1 => 1024 * 1024,
        }
    }
    pub fn mib(self) -> u64 {
        self.kib() / 1024
    }
}

/// Debug is written by hand: a derived one would print the plaintext password and the PEM
/// key of CSIT topologies into any `{:?}` (error contexts, test failures, logs).
#[derive(Clone, PartialEq, Eq, Serialize)]
pub enum Auth {
    /// Private key file (`identity_file`); passphrase read from the named env var if set.
    IdentityFile { path: PathBuf, passphrase_env: Option<String> },
    /// Password taken from an environment variable at connect time (`password_env`).
    PasswordEnv(String),
    /// CSIT's plaintext `password:`; accepted with a warning. Never logged or serialised.
    #[serde(serialize_with = "redact")]
    Password(String),
    /// CSIT's `priv_key:`: the PEM text of a private key, inline. Never logged or serialised.
    #[serde(serialize_with = "redact")]
    PrivateKeyPem(String),
}

fn redact<S: serde::Serializer>(_: &String, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("<redacted>")
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::IdentityFile { path, passphrase_env } => {
                f.debug_struct("IdentityFile").field("path", path).field("passphrase_env", passphrase_env).finish()
            }
            Auth::PasswordEnv(var) => f.debug_tuple("PasswordEnv").field(var).finish(),
            Auth::Password(_) => f.write_str("Password(<redacted>)"),
            Auth::PrivateKeyPem(_) => f.write_str("PrivateKeyPem(<redacted>)"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// Key in `nodes:` (e.g. `DUT1`).
    pub name: String,
    pub node_type: NodeType,
    pub host: String,
    /// SSH port; `None` = from ~/.ssh/config or 22.
    pub port: Option<u16>,
    /// SSH user; `None` = from ~/.ssh/config or the local user.
    pub username: Option<String>,
    /// Explicit credentials in preference order; ssh-agent and ~/.ssh/config identities are
    /// tried by the SSH layer as well.
    pub auth: Vec<Auth>,
    /// `proxy_jump`: `[user@]host[:port]` of a jump host, or the name of another node.
    pub proxy_jump: Option<String>,
    /// `known_hosts`: path of the known_hosts file to use (default ~/.ssh/known_hosts).
    pub known_hosts: Option<PathBuf>,
    /// `accept_new_host_key`: record an unknown host key instead of refusing.
    pub accept_new_host_key: bool,
    pub arch: Arch,
    pub hugepages: HugepagesConfig,
    pub qemu: QemuConfig,
    /// Remote root for run directories (default `/run/harness`).
    pub run_root: String,
    /// CSIT `interfaces:` (port1..portN); kept for reference (e.g. vif MACs), never driven.
    pub interfaces: BTreeMap<String, CsitInterface>,
}

impl Node {
    /// `<bin_dir>/qemu-system-<arch>`: the one place the QEMU binary path is made.
    pub fn qemu_binary(&self) -> String {
        format!("{}/qemu-system-{}", self.qemu.bin_dir.trim_end_matches('/'), self.arch.as_str())
    }

    /// hugetlbfs mount for a page size on this node: the configured one, else CSIT's defaults.
    pub fn hugepage_mount(&self, size: PageSize) -> String {
        self.hugepages.mounts.get(&size).cloned().unwrap_or_else(|| match size {
            PageSize::M2 => "/dev/hugepages".to_string(),
            PageSize::G1 => "/dev/hugepages1G".to_string(),
        })
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct CsitInterface {
    pub mac_address: Option<String>,
    pub pci_address: Option<String>,
    pub link: Option<String>,
    pub driver: Option<String>,
    pub model: Option<String>,
    /// CSIT's `numa_node` of the port: the default NUMA node of a chain on this DUT.
    pub numa_node: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HugepagesConfig {
    /// Default page size for this node's VMs (a VM's `page_size` overrides it).
    pub size: PageSize,
    /// Raise `nr_hugepages` / mount hugetlbfs when short, and restore on `down`.
    pub allocate: bool,
    /// hugetlbfs mount point per page size; default `/dev/hugepages` (2M) and `/dev/hugepages1G` (1G) as CSIT.
    pub mounts: BTreeMap<PageSize, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    Kvm,
    Tcg,
    /// KVM if a probe shows it really runs a guest, TCG otherwise.
    Auto,
}

#[derive(Debug, Clone, Serialize)]
pub struct QemuConfig {
    /// Directory holding `qemu-system-<arch>` (default `/usr/bin`, as CSIT).
    pub bin_dir: String,
    pub accel: Accel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmKind {
    /// Host kernel + initrd, host `/` over 9p read-only, our init script as PID 1 (CSIT's kernel VM).
    Kernel,
    /// A disk image with its own OS; readiness via QGA (CSIT's nested VM, fixed).
    Image,
}

/// How a VM boots, with exactly the inputs that kind of boot has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Boot {
    /// Host kernel and initrd: each a path, or a prefix resolved on the host like CSIT
    /// (`/opt/boot/vmlinuz` = the newest `/opt/boot/vmlinuz*`).
    Kernel { kernel: String, initrd: String },
    /// A disk image and its format (`raw`, `qcow2`, ...).
    Image { image: String, format: String },
}

impl Boot {
    pub fn kind(&self) -> VmKind {
        match self {
            Boot::Kernel { .. } => VmKind::Kernel,
            Boot::Image { .. } => VmKind::Image,
        }
    }
}

impl Vm {
    pub fn kind(&self) -> VmKind {
        self.boot.kind()
    }
}

/// What runs inside the guest. Decides startup.conf / exec / testpmd command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Vnf {
    /// `vpp*`: VPP with a generated startup.conf and the `<name>.exec` template.
    Vpp(String),
    TestpmdIo,
    TestpmdMac,
    /// Nothing but the init script (and its `command`, if any).
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmInterface {
    VhostUser(VhostUser),
    /// Host PCI address `dddd:bb:ss.f` passed through with vfio-pci.
    VfioPci(String),
    /// QEMU user networking (image VMs); `hostfwd` of guest port 22 to `host_port` on 127.0.0.1 if set.
    NetUser {
        net: String,
        host_port: Option<u16>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VhostUser {
    /// Absolute socket path on the host.
    pub socket: String,
    /// QEMU is the server (CSIT default true).
    pub server: bool,
    /// rx/tx queue size; `None` leaves QEMU's default (and, unlike CSIT, no trailing comma).
    pub queue_size: Option<u32>,
    /// Queue count; default = the VM's `queues`.
    pub queues: u32,
    pub csum: bool,
    pub gso: bool,
    /// `vectors=` override (QEMU 7.2 under TCG needs 0, lab-notes §7); default `2*queues+2`.
    pub vectors: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drive {
    pub file: String,
    /// `raw`, `qcow2`, ... (ignored for cdrom).
    pub format: String,
    pub cdrom: bool,
    pub index: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sched {
    /// `chrt -r -p 1` on each vCPU thread.
    Rr,
    None,
}

#[derive(Debug, Clone, Serialize)]
pub struct Vm {
    /// Node name this VM runs on (a DUT).
    pub node: String,
    pub qemu_id: u32,
    /// Default `<node>_<qemu_id>` (CSIT's name).
    pub name: String,
    /// How it boots; an image VM cannot carry a kernel, nor a kernel VM an image.
    pub boot: Boot,
    pub smp: u32,
    /// Guest RAM in MiB, hugepage-backed.
    pub mem: u64,
    pub page_size: PageSize,
    /// Hugepages the *guest* kernel reserves (`hugepages=` on its command line). Default as CSIT:
    /// 512 for 2M pages, 3 for 1G pages; lower it for small guests.
    pub guest_hugepages: u64,
    pub vnf: Vnf,
    /// Template variables (mac1/mac2/vif1_mac/vif2_mac are derived when not given).
    pub vars: BTreeMap<String, String>,
    pub queues: u32,
    pub jumbo: bool,
    pub interfaces: Vec<VmInterface>,
    pub drives: Vec<Drive>,
    /// Host CPUs for the vCPU threads, vCPU order (len == smp).
    pub cpus: Option<Vec<u32>>,
    pub sched: Sched,
    pub boot_timeout: Duration,
    /// How long starting QEMU may take until it daemonizes (it blocks there while a vhost-user
    /// `server: true` socket waits for the vswitch to connect). Default 30 s.
    pub start_timeout: Duration,
    /// Extra serial substrings that mean "ready" (added to the VNF's defaults).
    pub ready_markers: Vec<String>,
    /// Extra serial substrings that mean "failed" (added to the defaults).
    pub fail_markers: Vec<String>,
    /// Attach a guest agent channel and require it to answer before the VM counts as ready.
    pub qga: bool,
    /// Extra command run by the init script before the VNF (kernel VMs), e.g. the lab's qemu-ga start.
    pub init_command: Option<String>,
    /// Extra raw qemu arguments appended verbatim (an escape hatch, shown in render).
    pub extra_args: Vec<String>,
    /// Guest commands (argv) whose output `up` and `down --artifacts` collect over the agent;
    /// `None`: the VNF's defaults (VPP: `show errors`, `show interface`, `show runtime`).
    pub collect: Option<Vec<Vec<String>>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_auth_debug_prints_secrets() {
        let auth = vec![
            Auth::Password("hunter2".into()),
            Auth::PrivateKeyPem("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA".into()),
            Auth::PasswordEnv("DUT1_PW".into()),
            Auth::IdentityFile { path: "/k".into(), passphrase_env: Some("KP".into()) },
        ];
        let shown = format!("{auth:?} {auth:#?}");
        assert!(!shown.contains("hunter2") && !shown.contains("BEGIN") && !shown.contains("AAAA"), "{shown}");
        assert!(shown.contains("Password(<redacted>)") && shown.contains("DUT1_PW") && shown.contains("\"/k\""));
    }
}
