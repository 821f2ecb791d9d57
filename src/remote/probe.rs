//! Pre-flight probe of a DUT (`harness check`): what the host offers, gathered in ONE round trip
//! (a single `sh -c` script printing `key=value` / `pool …` lines, parsed locally), then judged
//! against what the topology asks of that node. Changes nothing on the host.
//!
//! KVM is not trusted just because `/dev/kvm` exists (lab-notes §2): with sudo and QEMU present
//! the probe of [`crate::remote::kvm`] boots a tiny firmware under `-accel kvm -cpu host` (the CPU
//! model a KVM plan uses); it passes only if a vCPU really ran guest code. On hosts where that cannot run (no sudo, no QEMU, not
//! x86_64) KVM is reported `present, unverified`, and `accel: auto` treats that as TCG.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::quote::quote;
use crate::remote::hugepages::{self, HugepageState, Pool};
use crate::ssh::{ConnectOptions, RemoteCommand, Session, SshError, SshTarget};
use crate::topology::{Accel, Arch, Node, PageSize, Vm};

/// Exit status of the KVM probe firmware (see [`crate::remote::kvm`]).
const KVM_PROBE_OK: i32 = crate::remote::kvm::PROBE_OK;

/// Tools the harness runs on every DUT.
pub const TOOLS: &[&str] = &["socat", "taskset", "chrt"];

/// KVM as found on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum Kvm {
    /// The probe ran guest code under KVM.
    Usable,
    /// `/dev/kvm` exists but the probe failed (QEMU's first error line).
    Broken(String),
    /// `/dev/kvm` exists; no probe possible (why).
    Unverified(String),
    Absent,
}

/// Hugepages of one size on one NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NumaPool {
    pub node: u32,
    pub size_kb: u64,
    pub nr: u64,
    pub free: u64,
    pub surplus: u64,
}

/// Raw facts about one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct HostFacts {
    pub sudo: bool,
    /// sudo's complaint when `sudo -n true` failed.
    pub sudo_error: Option<String>,
    pub qemu_path: String,
    /// First line of `qemu-system-* --version`; `None` when the binary is missing.
    pub qemu_version: Option<String>,
    pub kvm: Option<Kvm>,
    /// Hugepage pools by page size in kB.
    pub pools: BTreeMap<u64, Pool>,
    /// Filesystem type per mount point asked about (`hugetlbfs`, `tmpfs`, `missing`).
    pub mounts: BTreeMap<String, String>,
    pub numa: Vec<NumaPool>,
    pub cpus_online: Vec<u32>,
    pub cpus_isolated: Vec<u32>,
    /// Tool → path (`None` = not found).
    pub tools: BTreeMap<String, Option<String>>,
}

/// Outcome of one check item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// Not fatal (e.g. hugepages short but `allocate: true`).
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    /// `ssh`, `sudo`, `qemu`, `kvm`, `hugetlbfs`, `hugepages`, `cpus`, `socat`, ...
    pub name: String,
    pub status: Status,
    pub detail: String,
}

impl Item {
    fn new(name: &str, status: Status, detail: impl Into<String>) -> Item {
        Item { name: name.to_string(), status, detail: detail.into() }
    }
}

/// Everything `check` knows about one node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub node: String,
    pub addr: String,
    pub reachable: bool,
    /// Connect/auth/probe error (phase named) when the node could not be probed.
    pub error: Option<String>,
    /// SSH connect + auth time.
    pub connect_ms: u64,
    /// Probe round trip.
    pub probe_ms: u64,
    /// Accelerator `up` would use: `kvm` or `tcg`.
    pub accel: Option<String>,
    pub items: Vec<Item>,
    pub facts: Option<HostFacts>,
}

impl NodeReport {
    pub fn failed(&self) -> bool {
        self.items.iter().any(|i| i.status == Status::Fail)
    }
}

/// `qemu-system-<arch>` in the node's `bin_dir`.
pub fn qemu_path(node: &Node) -> String {
    format!("{}/qemu-system-{}", node.qemu.bin_dir.trim_end_matches('/'), node.arch.as_str())
}

/// The one probe script. Runs as the login user; root-only parts go through `sudo -n`.
pub fn probe_script(node: &Node) -> String {
    let qemu = qemu_path(node);
    let mounts: Vec<String> =
        [PageSize::M2, PageSize::G1].iter().map(|s| crate::plan::hugepage_mount(node, *s)).collect();
    let mount_refs: Vec<&str> = mounts.iter().map(String::as_str).collect();
    let kvm = if node.arch == Arch::X86_64 {
        let inner = crate::remote::kvm::root_probe(&qemu);
        format!(
            "if [ -e /dev/kvm ] && [ \"$sudo_rc\" = 0 ] && [ -x {q} ]; then sudo -n sh -c {inner}; fi\n",
            q = quote(&qemu),
            inner = quote(&inner)
        )
    } else {
        String::new()
    };
    let mut s = String::new();
    s.push_str("LC_ALL=C; export LC_ALL\n");
    s.push_str("err=$(sudo -n true 2>&1); sudo_rc=$?; echo \"sudo_rc=$sudo_rc\"; echo \"sudo_err=$(echo \"$err\" | head -n 1)\"\n");
    s.push_str(&format!(
        "q={q}; echo \"qemu_path=$q\"; if [ -x \"$q\" ]; then echo \"qemu_version=$(\"$q\" --version 2>&1 | head -n 1)\"; fi\n",
        q = quote(&qemu)
    ));
    s.push_str("[ -e /dev/kvm ] && echo kvm_dev=1 || echo kvm_dev=0\n");
    s.push_str(&kvm);
    s.push_str("echo \"cpus_online=$(cat /sys/devices/system/cpu/online 2>/dev/null)\"\n");
    s.push_str("echo \"cpus_isolated=$(cat /sys/devices/system/cpu/isolated 2>/dev/null)\"\n");
    for t in TOOLS {
        s.push_str(&format!("echo \"tool_{t}=$(command -v {t} 2>/dev/null)\"\n"));
    }
    s.push_str(
        "for d in /sys/devices/system/node/node*/hugepages/hugepages-*kB; do [ -d \"$d\" ] || continue; \
         n=${d%/hugepages/*}; n=${n##*/node}; k=${d##*hugepages-}; \
         echo \"numa=$n ${k%kB} $(cat $d/nr_hugepages) $(cat $d/free_hugepages) $(cat $d/surplus_hugepages)\"; done\n",
    );
    s.push_str(&hugepages::probe_script(&mount_refs));
    s
}

/// Parse a CPU list like `0-3,8,10-11`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<u32>, String> {
    let mut out = BTreeSet::new();
    for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: u32 = a.parse().map_err(|_| format!("bad CPU list `{s}`"))?;
                let b: u32 = b.parse().map_err(|_| format!("bad CPU list `{s}`"))?;
                if b < a || b - a > 65536 {
                    return Err(format!("bad CPU range `{part}`"));
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(part.parse().map_err(|_| format!("bad CPU list `{s}`"))?);
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// Parse the output of [`probe_script`].
pub fn parse_facts(out: &str) -> Result<HostFacts, String> {
    let HugepageState { pools, mounts, .. } = hugepages::parse_probe(out)?;
    let mut f = HostFacts { pools, mounts, ..HostFacts::default() };
    let mut kv: BTreeMap<&str, &str> = BTreeMap::new();
    for line in out.lines() {
        if let Some((k, v)) = line.split_once('=') {
            if k == "numa" {
                let n: Vec<u64> = v.split_whitespace().filter_map(|x| x.parse().ok()).collect();
                if let [node, size_kb, nr, free, surplus] = n[..] {
                    f.numa.push(NumaPool { node: node as u32, size_kb, nr, free, surplus });
                }
            } else if !k.contains(' ') {
                kv.insert(k, v);
            }
        }
    }
    let sudo_rc = kv.get("sudo_rc").ok_or("probe output lacks sudo_rc (did the script run?)")?;
    f.sudo = *sudo_rc == "0";
    if !f.sudo {
        f.sudo_error = Some(kv.get("sudo_err").copied().unwrap_or("").to_string());
    }
    f.qemu_path = kv.get("qemu_path").copied().unwrap_or_default().to_string();
    f.qemu_version = kv.get("qemu_version").map(|v| v.to_string());
    f.kvm = Some(if kv.get("kvm_dev") != Some(&"1") {
        Kvm::Absent
    } else {
        match kv.get("kvm_probe").map(|rc| rc.parse::<i32>()) {
            Some(Ok(KVM_PROBE_OK)) => Kvm::Usable,
            Some(Ok(rc)) => {
                let err = kv.get("kvm_err").copied().unwrap_or("").trim();
                Kvm::Broken(if err.is_empty() { format!("probe guest exited {rc}") } else { err.to_string() })
            }
            _ => Kvm::Unverified(if !f.sudo {
                "no passwordless sudo to run the probe".to_string()
            } else if f.qemu_version.is_none() {
                "no QEMU to run the probe".to_string()
            } else {
                "no probe for this architecture".to_string()
            }),
        }
    });
    f.cpus_online = parse_cpu_list(kv.get("cpus_online").copied().unwrap_or(""))?;
    f.cpus_isolated = parse_cpu_list(kv.get("cpus_isolated").copied().unwrap_or(""))?;
    for t in TOOLS {
        let path = kv.get(format!("tool_{t}").as_str()).map(|p| p.trim()).filter(|p| !p.is_empty());
        f.tools.insert(t.to_string(), path.map(String::from));
    }
    Ok(f)
}

fn fmt_cpus(c: &[u32]) -> String {
    if c.is_empty() {
        return "none".to_string();
    }
    let mut parts = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let mut j = i;
        while j + 1 < c.len() && c[j + 1] == c[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { c[i].to_string() } else { format!("{}-{}", c[i], c[j]) });
        i = j + 1;
    }
    parts.join(",")
}

/// Judge the facts against what the node's VMs need. Returns the items and the accelerator.
pub fn evaluate(node: &Node, vms: &[&Vm], f: &HostFacts) -> (Vec<Item>, Option<String>) {
    let mut items = Vec::new();
    items.push(match (&f.sudo, &f.sudo_error) {
        (true, _) => Item::new("sudo", Status::Ok, "passwordless sudo -n"),
        (false, e) => Item::new("sudo", Status::Fail, format!("`sudo -n true` failed: {}", e.as_deref().unwrap_or(""))),
    });
    items.push(match &f.qemu_version {
        Some(v) => Item::new("qemu", Status::Ok, format!("{} ({v})", f.qemu_path)),
        None => Item::new("qemu", Status::Fail, format!("{} not found or not executable", f.qemu_path)),
    });

    let kvm = f.kvm.clone().unwrap_or(Kvm::Absent);
    let usable = kvm == Kvm::Usable;
    let kvm_text = match &kvm {
        Kvm::Usable => "usable (probe guest ran)".to_string(),
        Kvm::Broken(e) => format!("/dev/kvm present but a guest cannot run: {e}"),
        Kvm::Unverified(why) => format!("present, unverified ({why})"),
        Kvm::Absent => "no /dev/kvm".to_string(),
    };
    let (status, accel) = match node.qemu.accel {
        Accel::Kvm if usable => (Status::Ok, "kvm"),
        Accel::Kvm => (Status::Fail, "kvm"),
        Accel::Tcg => (Status::Ok, "tcg"),
        // `auto` only picks KVM on proof; unverified counts as TCG.
        Accel::Auto if usable => (Status::Ok, "kvm"),
        Accel::Auto => (if kvm == Kvm::Absent { Status::Ok } else { Status::Warn }, "tcg"),
    };
    items.push(Item::new("kvm", status, format!("{kvm_text}; accel {accel}")));

    // Hugepages: pages needed per size vs. what a new mapping can get.
    let mut need: BTreeMap<PageSize, u64> = BTreeMap::new();
    for vm in vms {
        *need.entry(vm.page_size).or_default() += vm.mem.div_ceil(vm.page_size.mib());
    }
    let sizes: BTreeSet<PageSize> = need.keys().copied().chain([node.hugepages.size]).collect();
    for size in sizes {
        let mount = crate::plan::hugepage_mount(node, size);
        let fstype = f.mounts.get(&mount).map(String::as_str).unwrap_or("missing");
        let needed_here = need.contains_key(&size);
        let st = if fstype == "hugetlbfs" {
            Status::Ok
        } else if !needed_here || node.hugepages.allocate {
            Status::Warn
        } else {
            Status::Fail
        };
        let note =
            if fstype != "hugetlbfs" && node.hugepages.allocate && needed_here { "; up will mount it" } else { "" };
        items.push(Item::new("hugetlbfs", st, format!("{mount} is {fstype}{note}")));

        let pages = need.get(&size).copied().unwrap_or(0);
        let per_numa: Vec<String> = f
            .numa
            .iter()
            .filter(|n| n.size_kb == size.kib())
            .map(|n| format!("node{} {}/{}", n.node, n.free, n.nr))
            .collect();
        let numa =
            if per_numa.is_empty() { String::new() } else { format!("; free/total per NUMA: {}", per_numa.join(" ")) };
        items.push(match f.pools.get(&size.kib()) {
            None => Item::new(
                "hugepages",
                if pages > 0 { Status::Fail } else { Status::Warn },
                format!("{}: no such hugepage pool on this kernel", size.as_str()),
            ),
            Some(p) => {
                let avail = p.available();
                let text = format!(
                    "{}: need {pages}, available {avail} (total {} free {} resv {} surplus {} overcommit {}){numa}",
                    size.as_str(),
                    p.nr,
                    p.free,
                    p.resv,
                    p.surplus,
                    p.overcommit
                );
                if avail >= pages {
                    Item::new("hugepages", Status::Ok, text)
                } else if node.hugepages.allocate {
                    Item::new("hugepages", Status::Warn, format!("{text}; up will allocate {} more", pages - avail))
                } else {
                    Item::new(
                        "hugepages",
                        Status::Fail,
                        format!("{text}; short by {} (set allocate: true)", pages - avail),
                    )
                }
            }
        });
    }

    // CPUs the VMs pin to must be online.
    let wanted: BTreeSet<u32> = vms.iter().flat_map(|v| v.cpus.iter().flatten().copied()).collect();
    let offline: Vec<u32> = wanted.iter().copied().filter(|c| !f.cpus_online.contains(c)).collect();
    let isolated_note =
        if f.cpus_isolated.is_empty() { String::new() } else { format!(", isolated {}", fmt_cpus(&f.cpus_isolated)) };
    items.push(if offline.is_empty() {
        Item::new(
            "cpus",
            Status::Ok,
            format!(
                "online {}{isolated_note}; VMs use {}",
                fmt_cpus(&f.cpus_online),
                fmt_cpus(&wanted.iter().copied().collect::<Vec<_>>())
            ),
        )
    } else {
        Item::new(
            "cpus",
            Status::Fail,
            format!("VM CPUs {} not online (online {}{isolated_note})", fmt_cpus(&offline), fmt_cpus(&f.cpus_online)),
        )
    });
    for t in TOOLS {
        items.push(match f.tools.get(*t).cloned().flatten() {
            Some(p) => Item::new(t, Status::Ok, p),
            None => Item::new(t, Status::Fail, format!("`{t}` not found in PATH")),
        });
    }
    (items, Some(accel.to_string()))
}

/// Probe a connected node (one round trip) and parse the result.
pub async fn probe(session: &Session, node: &Node, timeout: Duration) -> Result<HostFacts, SshError> {
    let cmd = RemoteCommand::sh(probe_script(node)).timeout(timeout).idempotent();
    let out = session.run(&cmd).await?;
    parse_facts(&out.stdout_str()).map_err(|e| SshError::CommandFailed {
        node: node.name.clone(),
        command: "probe script".into(),
        status: out.status.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
        stderr: format!("{e}: {}", out.stderr_str().trim()),
    })
}

/// Connect, probe and judge one node. Never fails: problems end up in the report.
pub async fn check_node(target: &SshTarget, opts: &ConnectOptions, node: &Node, vms: &[&Vm]) -> NodeReport {
    let addr = format!("{}:{}", target.host, target.port.unwrap_or(22));
    let mut report = NodeReport {
        node: node.name.clone(),
        addr,
        reachable: false,
        error: None,
        connect_ms: 0,
        probe_ms: 0,
        accel: None,
        items: Vec::new(),
        facts: None,
    };
    let t = Instant::now();
    let session = match Session::connect(target, opts).await {
        Ok(s) => s,
        Err(e) => {
            report.connect_ms = t.elapsed().as_millis() as u64;
            report.items.push(Item::new("ssh", Status::Fail, e.to_string()));
            report.error = Some(e.to_string());
            return report;
        }
    };
    report.addr = session.addr().to_string();
    report.connect_ms = t.elapsed().as_millis() as u64;
    report.reachable = true;
    report.items.push(Item::new("ssh", Status::Ok, format!("connected in {} ms", report.connect_ms)));
    let t = Instant::now();
    // The KVM probe alone may take up to 10 s (its own timeout); leave room.
    match probe(&session, node, opts.command_timeout.max(Duration::from_secs(20))).await {
        Ok(facts) => {
            report.probe_ms = t.elapsed().as_millis() as u64;
            let (items, accel) = evaluate(node, vms, &facts);
            report.items.extend(items);
            report.accel = accel;
            report.facts = Some(facts);
        }
        Err(e) => {
            report.probe_ms = t.elapsed().as_millis() as u64;
            report.items.push(Item::new("probe", Status::Fail, e.to_string()));
            report.error = Some(e.to_string());
        }
    }
    session.close().await;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "sudo_rc=0\nsudo_err=\nqemu_path=/usr/bin/qemu-system-x86_64\n\
        qemu_version=QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)\nkvm_dev=1\nkvm_probe=134\n\
        kvm_err=qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\ncpus_online=0-3,6\ncpus_isolated=2-3\n\
        tool_socat=/usr/bin/socat\ntool_taskset=/usr/bin/taskset\ntool_chrt=\n\
        numa=0 2048 64 60 0\nnuma=1 2048 64 64 0\n\
        pool 1048576 0 0 0 0 0\npool 2048 128 124 4 0 0\nmount /dev/hugepages hugetlbfs\nmount /dev/hugepages1G missing\n";

    #[test]
    fn parses_probe_output_by_name() {
        let f = parse_facts(SAMPLE).unwrap();
        assert!(f.sudo);
        assert_eq!(f.qemu_version.as_deref(), Some("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)"));
        assert_eq!(f.kvm, Some(Kvm::Broken("qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69".into())));
        assert_eq!(f.cpus_online, vec![0, 1, 2, 3, 6]);
        assert_eq!(f.cpus_isolated, vec![2, 3]);
        assert_eq!(f.tools["chrt"], None);
        assert_eq!(f.tools["socat"].as_deref(), Some("/usr/bin/socat"));
        assert_eq!(f.pools[&2048].available(), 120);
        assert_eq!(f.numa.len(), 2);
        assert_eq!(f.numa[1], NumaPool { node: 1, size_kb: 2048, nr: 64, free: 64, surplus: 0 });
        assert_eq!(f.mounts["/dev/hugepages"], "hugetlbfs");
    }

    #[test]
    fn kvm_states() {
        let ok = SAMPLE.replace("kvm_probe=134", "kvm_probe=85");
        assert_eq!(parse_facts(&ok).unwrap().kvm, Some(Kvm::Usable));
        let no_dev = SAMPLE.replace("kvm_dev=1", "kvm_dev=0");
        assert_eq!(parse_facts(&no_dev).unwrap().kvm, Some(Kvm::Absent));
        let no_probe = SAMPLE.replace("kvm_probe=134\n", "").replace("sudo_rc=0", "sudo_rc=1");
        assert!(matches!(parse_facts(&no_probe).unwrap().kvm, Some(Kvm::Unverified(_))));
        assert!(parse_facts("garbage").is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-2,5,7-8").unwrap(), vec![0, 1, 2, 5, 7, 8]);
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<u32>::new());
        assert_eq!(parse_cpu_list("\n").unwrap(), Vec::<u32>::new());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert_eq!(fmt_cpus(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }

    /// The whole probe path (script, firmware, parsing) under TCG (no KVM needed) says usable.
    #[test]
    fn probe_firmware_runs_under_tcg() {
        let node = crate::plan::fixture::dut("DUT1");
        let script = probe_script(&node)
            .replace("-accel kvm -cpu host", "-accel tcg -cpu max")
            .replace("[ -e /dev/kvm ] &&", "true &&")
            .replace("sudo -n sh -c", "sh -c");
        let out = std::process::Command::new("sh").arg("-c").arg(&script).output().unwrap();
        let f = parse_facts(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert!(f.qemu_version.is_some(), "qemu-system-x86_64 must be installed for this test");
        assert_eq!(f.kvm, Some(Kvm::Usable), "{}", String::from_utf8_lossy(&out.stdout));
    }

    #[test]
    fn fit_against_topology() {
        let mut node = crate::plan::fixture::dut("DUT1");
        node.qemu.accel = Accel::Auto;
        let f = parse_facts(SAMPLE).unwrap();
        let mut vm = crate::plan::fixture::vm(&node.name, 1);
        vm.mem = 512; // 256 pages of 2M: more than the 120 available
        vm.cpus = Some(vec![0, 4]);
        let (items, accel) = evaluate(&node, &[&vm], &f);
        let get = |n: &str| items.iter().find(|i| i.name == n).unwrap().clone();
        assert_eq!(accel.as_deref(), Some("tcg"));
        assert_eq!(get("kvm").status, Status::Warn, "auto + broken KVM = tcg with a warning");
        assert_eq!(get("hugepages").status, Status::Fail);
        assert!(get("hugepages").detail.contains("short by 136"), "{}", get("hugepages").detail);
        assert_eq!(get("cpus").status, Status::Fail);
        assert!(get("cpus").detail.contains("VM CPUs 4 not online"));
        assert_eq!(get("chrt").status, Status::Fail);
        node.hugepages.allocate = true;
        node.qemu.accel = Accel::Kvm;
        let (items, _) = evaluate(&node, &[&vm], &f);
        let get = |n: &str| items.iter().find(|i| i.name == n).unwrap().clone();
        assert_eq!(get("hugepages").status, Status::Warn);
        assert_eq!(get("kvm").status, Status::Fail, "accel kvm needs a usable KVM");
    }
}
