//! The loopback SSH lab for integration tests: makes sure `scripts/lab.sh up` has run, reads
//! `$LAB/lab.env`, and stops the lab again at process exit if this process started it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use harness::ssh::{ConnectOptions, SshTarget};
use harness::topology::Auth;

pub struct Lab {
    pub dir: PathBuf,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    pub ports: Vec<u16>,
    pub users: Vec<String>,
    pub pw_port: u16,
    pub pw_user: String,
    pub pw_pass: String,
    pub sudopw_port: u16,
    pub sudopw_user: String,
    pub kbd_port: u16,
    pub kbd_user: String,
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn lab_dir() -> PathBuf {
    std::env::var_os("HARNESS_LAB_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp/harness-lab"))
}

/// A topology `scripts/lab.sh` generated: in the repo's `topologies/` for the default lab, in
/// `$HARNESS_LAB_DIR/topologies/` for a private one (so private labs never clobber the repo's).
pub fn lab_topology(name: &str) -> PathBuf {
    if std::env::var_os("HARNESS_LAB_DIR").is_some_and(|d| Path::new(&d) != Path::new("/var/tmp/harness-lab")) {
        lab_dir().join("topologies").join(name)
    } else {
        repo().join("topologies").join(name)
    }
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).is_ok()
}

fn parse_env(path: &Path) -> Option<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect(),
    )
}

extern "C" fn lab_down_at_exit() {
    let _ = std::process::Command::new(repo().join("scripts/lab.sh")).arg("down").status();
}

fn read_lab() -> Option<Lab> {
    let env = parse_env(&lab_dir().join("lab.env"))?;
    let ports: Vec<u16> = env.get("LAB_PORTS")?.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    Some(Lab {
        dir: PathBuf::from(env.get("LAB")?),
        key: PathBuf::from(env.get("LAB_KEY")?),
        known_hosts: PathBuf::from(env.get("LAB_KNOWN_HOSTS")?),
        users: env.get("LAB_USERS")?.split_whitespace().map(String::from).collect(),
        ports,
        pw_port: env.get("LAB_PW_PORT")?.parse().ok()?,
        pw_user: env.get("LAB_PW_USER")?.clone(),
        pw_pass: env.get("LAB_PW_PASS")?.clone(),
        sudopw_port: env.get("LAB_SUDOPW_PORT")?.parse().ok()?,
        sudopw_user: env.get("LAB_SUDOPW_USER")?.clone(),
        kbd_port: env.get("LAB_KBD_PORT")?.parse().ok()?,
        kbd_user: env.get("LAB_KBD_USER")?.clone(),
    })
}

/// The running lab (at least 2 key nodes), started once per test process when needed.
pub fn lab() -> &'static Lab {
    static LAB: OnceLock<Lab> = OnceLock::new();
    LAB.get_or_init(|| {
        let up = read_lab().is_some_and(|l| {
            l.ports.len() >= 2 && l.ports.iter().chain([&l.pw_port, &l.sudopw_port, &l.kbd_port]).all(|p| listening(*p))
        });
        if !up {
            let st = std::process::Command::new(repo().join("scripts/lab.sh"))
                .arg("up")
                .status()
                .expect("run scripts/lab.sh");
            assert!(st.success(), "scripts/lab.sh up failed");
            // We started it, so we stop it when the test process exits.
            unsafe { libc::atexit(lab_down_at_exit) };
        }
        read_lab().expect("lab.env after scripts/lab.sh up")
    })
}

impl Lab {
    /// Key-auth target for key node `i` (1-based).
    pub fn node(&self, i: usize) -> SshTarget {
        SshTarget {
            name: format!("DUT{i}"),
            host: "127.0.0.1".into(),
            port: Some(self.ports[i - 1]),
            user: Some(self.users[i - 1].clone()),
            auth: vec![Auth::IdentityFile { path: self.key.clone(), passphrase_env: None }],
            proxy_jump: None,
            known_hosts: Some(self.known_hosts.clone()),
            inherited_known_hosts: Vec::new(),
            accept_new_host_key: false,
        }
    }
    pub fn pw_node(&self) -> SshTarget {
        SshTarget {
            name: "DUTPW".into(),
            host: "127.0.0.1".into(),
            port: Some(self.pw_port),
            user: Some(self.pw_user.clone()),
            auth: vec![Auth::Password(self.pw_pass.clone())],
            proxy_jump: None,
            known_hosts: Some(self.known_hosts.clone()),
            inherited_known_hosts: Vec::new(),
            accept_new_host_key: false,
        }
    }
    /// A password user on a server that offers only keyboard-interactive (PAM).
    pub fn kbd_node(&self) -> SshTarget {
        SshTarget {
            name: "DUTKBD".into(),
            port: Some(self.kbd_port),
            user: Some(self.kbd_user.clone()),
            ..self.pw_node()
        }
    }
    pub fn sudopw_node(&self) -> SshTarget {
        SshTarget {
            name: "DUTSUDOPW".into(),
            port: Some(self.sudopw_port),
            user: Some(self.sudopw_user.clone()),
            ..self.node(1)
        }
    }
}

/// Options isolated from the caller's environment: no ~/.ssh/config, no ssh-agent.
pub fn opts() -> ConnectOptions {
    ConnectOptions {
        ssh_config: None,
        agent_socket: None,
        connect_timeout: Duration::from_secs(5),
        auth_timeout: Duration::from_secs(10),
        command_timeout: Duration::from_secs(60),
        ..ConnectOptions::default()
    }
}

/// A topology node for key node `i`, as `scripts/lab.sh` writes it into topologies/lab.yaml.
pub fn topo_node(lab: &Lab, i: usize) -> harness::topology::Node {
    use harness::topology::*;
    let t = lab.node(i);
    Node {
        name: t.name.clone(),
        node_type: NodeType::Dut,
        host: t.host.clone(),
        port: t.port,
        username: t.user.clone(),
        auth: t.auth.clone(),
        proxy_jump: None,
        known_hosts: t.known_hosts.clone(),
        accept_new_host_key: false,
        arch: Arch::X86_64,
        hugepages: HugepagesConfig { size: PageSize::M2, allocate: true, mounts: Default::default() },
        qemu: QemuConfig { bin_dir: "/usr/bin".into(), accel: Accel::Auto },
        run_root: "/run/harness".into(),
        interfaces: Default::default(),
    }
}

/// A small kernel VM on `node` pinned to `cpus`.
pub fn vm(node: &str, qemu_id: u32, mem: u64, cpus: Vec<u32>) -> harness::topology::Vm {
    use harness::topology::*;
    Vm {
        node: node.into(),
        qemu_id,
        name: format!("{node}_{qemu_id}"),
        boot: Boot::Kernel {
            kernel: lab_dir().join("guest/vmlinux").display().to_string(),
            initrd: lab_dir().join("guest/initrd.img").display().to_string(),
        },
        smp: cpus.len() as u32,
        mem,
        page_size: PageSize::M2,
        guest_hugepages: 16,
        vnf: Vnf::None,
        vars: Default::default(),
        queues: 1,
        jumbo: false,
        interfaces: vec![],
        drives: vec![],
        cpus: Some(cpus),
        sched: Sched::Rr,
        boot_timeout: Duration::from_secs(120),
        start_timeout: Duration::from_secs(30),
        ready_markers: vec![],
        fail_markers: vec![],
        qga: true,
        init_command: None,
        extra_args: vec![],
        collect: None,
    }
}
