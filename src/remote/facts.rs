//! Gathering [`HostFacts`] from a node in ONE round trip: a single `sh` script prints
//! `key=value` lines, the hugepage probe's lines, the raw `lscpu -p` text and the kernel/initrd
//! prefix lookups; [`parse`] turns that into facts. `check` and `up` both use it, so what
//! `check --save-facts` records is what `up` would have planned with. Changes nothing on the host.
//!
//! KVM is not trusted just because `/dev/kvm` exists (lab-notes §2): with sudo and QEMU present
//! the probe of [`crate::remote::kvm`] boots a tiny firmware under `-accel kvm -cpu host` (the CPU
//! model a KVM plan uses); it passes only if a vCPU really ran guest code. Where that cannot run
//! (no sudo, no QEMU, not x86_64) KVM is `Unverified`, which `accel: auto` treats as TCG.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::facts::{FORMAT, HostFacts, HugepageFacts, Kvm, QemuFacts, SudoFacts};
use crate::quote::quote;
use crate::remote::hugepages;
use crate::remote::process;
use crate::ssh::{RemoteCommand, Session, SshError};
use crate::topology::{Arch, Node, PageSize};

/// Tools the harness runs on every DUT.
pub const TOOLS: &[&str] = &["socat", "taskset", "chrt"];

/// What to gather beyond the always-cheap facts.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    /// Boot the KVM probe guest (~70 ms of QEMU). `up` asks only when `accel: auto`.
    pub kvm_probe: bool,
    /// Kernel/initrd prefixes to resolve on the host.
    pub lookups: Vec<String>,
}

const LSCPU_BEGIN: &str = "==lscpu";
const LSCPU_END: &str = "==lscpu-end";
const LOOKUPS: &str = "==lookups";

/// First line of the root part's output: sudo ran it.
const SUDO_OK: &str = "sudo_ok";

/// The one probe script. Runs as the login user; the root-only parts (the KVM probe and the
/// kernel/initrd lookups) run in ONE `sudo -n` at the top, whose output says whether sudo works:
/// every `sudo` costs the host a PAM session and a sudoers parse (~7 ms here), so a
/// separate `sudo -n true` per node and `up` was one too many. Its output is printed where the
/// parser expects it; only when sudo fails does `sudo -n true` run, for sudo's own message.
pub fn script(node: &Node, wanted: &Wanted) -> String {
    let qemu = node.qemu_binary();
    let q = quote(&qemu);
    let mounts: Vec<(String, u64)> =
        [PageSize::M2, PageSize::G1].iter().map(|s| (node.hugepage_mount(*s), s.kib())).collect();
    let mount_refs: Vec<(&str, u64)> = mounts.iter().map(|(m, kb)| (m.as_str(), *kb)).collect();
    let probe = wanted.kvm_probe && node.arch == Arch::X86_64;
    let mut prefixes: Vec<&str> = wanted.lookups.iter().map(String::as_str).collect();
    prefixes.sort();
    prefixes.dedup();
    // As root when possible: boot files may sit in directories only root can list.
    let lookups = (!prefixes.is_empty()).then(|| process::lookup_script(&prefixes));
    let mut root = String::new();
    if probe {
        let inner = crate::remote::kvm::root_probe(&qemu);
        root.push_str(&format!("if [ -e /dev/kvm ] && [ -x {q} ]; then sh -c {}; fi\n", quote(&inner)));
    }
    if let Some(l) = &lookups {
        root.push_str(&format!("echo {LOOKUPS}\n{l}"));
    }
    let mut s = String::new();
    s.push_str("LC_ALL=C; export LC_ALL\nnl='\n'\n");
    if root.is_empty() {
        s.push_str("o=; err=$(sudo -n true 2>&1); sudo_rc=$?\n");
    } else {
        s.push_str(&format!(
            "o=$(sudo -n sh -c {r} 2>/dev/null)\n\
             case \"$o\" in {SUDO_OK}*) sudo_rc=0; err=;; *) o=; err=$(sudo -n true 2>&1); sudo_rc=$?;; esac\n",
            r = quote(&format!("echo {SUDO_OK}\n{root}"))
        ));
    }
    s.push_str("echo \"sudo_rc=$sudo_rc\"; echo \"sudo_err=${err%%\"$nl\"*}\"\n");
    s.push_str("echo \"arch=$(uname -m)\"\n");
    // An executable file is not yet a working QEMU (one missing a shared library still is `-x`):
    // the version counts only when `--version` exits 0 and names QEMU; else what it said, so
    // `check` fails naming it.
    s.push_str(&format!(
        "q={q}; echo \"qemu_path=$q\"; if [ -x \"$q\" ]; then v=$(\"$q\" --version 2>&1); rc=$?; \
         l=${{v%%\"$nl\"*}}; l=${{l:-(no output)}}; case \"$rc:$l\" in \
         \"0:QEMU emulator version\"*) echo \"qemu_version=$l\";; \
         0:*) echo \"qemu_error=--version printed: $l\";; \
         *) echo \"qemu_error=--version exited $rc: $l\";; esac; fi\n"
    ));
    s.push_str("[ -e /dev/kvm ] && echo kvm_dev=1 || echo kvm_dev=0\n");
    if probe {
        // The probe's lines: between the marker and the lookups, if any.
        s.push_str(&format!(
            "p=${{o#{SUDO_OK}}}; p=${{p%%\"$nl\"{LOOKUPS}*}}; [ -z \"$p\" ] || printf '%s\\n' \"$p\"\n"
        ));
    }
    // `read` builtins, not `cat`: sysfs files (never /proc/sys: dash reads those byte-wise).
    s.push_str("v=; read -r v < /sys/devices/system/cpu/online 2>/dev/null; echo \"cpus_online=$v\"\n");
    s.push_str("v=; read -r v < /sys/devices/system/cpu/isolated 2>/dev/null; echo \"cpus_isolated=$v\"\n");
    for t in TOOLS {
        s.push_str(&format!("echo \"tool_{t}=$(command -v {t} 2>/dev/null)\"\n"));
    }
    s.push_str(
        "for n in /sys/devices/system/node/node[0-9]*; do [ -d \"$n\" ] && echo \"numanode=${n##*/node}\"; done\n",
    );
    s.push_str(&hugepages::probe_script(&mount_refs));
    s.push_str(&format!("echo {LSCPU_BEGIN}; lscpu -p 2>/dev/null; echo {LSCPU_END}\n"));
    if let Some(l) = &lookups {
        // sudo's answer, or (no sudo) the lookups as the login user.
        s.push_str(&format!(
            "echo {LOOKUPS}\nif [ -n \"$o\" ]; then printf '%s\\n' \"${{o#*\"$nl\"{LOOKUPS}\"$nl\"}}\"; else sh -c {}; fi\n",
            quote(l)
        ));
    }
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

/// Parse the output of [`script`] run with `wanted`.
pub fn parse(out: &str, wanted: &Wanted) -> Result<HostFacts, String> {
    let (head, rest) = out.split_once(&format!("{LSCPU_BEGIN}\n")).unwrap_or((out, ""));
    let (lscpu, tail) = rest.split_once(&format!("{LSCPU_END}\n")).unwrap_or(("", rest));
    let hp = hugepages::parse_probe(head)?;
    let mut kv: BTreeMap<&str, &str> = BTreeMap::new();
    let mut numa_nodes = Vec::new();
    for line in head.lines() {
        if let Some((k, v)) = line.split_once('=') {
            if k == "numanode" {
                numa_nodes.push(v.trim().parse::<u32>().map_err(|_| format!("bad NUMA node line: {line}"))?);
            } else if !k.contains(' ') {
                kv.insert(k, v);
            }
        }
    }
    let sudo_rc = kv.get("sudo_rc").ok_or("probe output lacks sudo_rc (did the script run?)")?;
    let sudo = SudoFacts {
        ok: *sudo_rc == "0",
        error: (*sudo_rc != "0").then(|| kv.get("sudo_err").copied().unwrap_or("").to_string()),
    };
    let qemu = QemuFacts {
        path: kv.get("qemu_path").copied().unwrap_or_default().to_string(),
        version: kv.get("qemu_version").map(|v| v.to_string()),
        error: kv.get("qemu_error").map(|v| v.to_string()),
    };
    let kvm = if kv.get("kvm_dev") != Some(&"1") {
        Some(Kvm::Absent)
    } else {
        match kv.get("kvm_probe").map(|rc| rc.parse::<i32>()) {
            Some(Ok(crate::remote::kvm::PROBE_OK)) => Some(Kvm::Usable),
            Some(Ok(rc)) => {
                let err = kv.get("kvm_err").copied().unwrap_or("").trim();
                Some(Kvm::Broken(if err.is_empty() { format!("probe guest exited {rc}") } else { err.to_string() }))
            }
            _ if !wanted.kvm_probe => None,
            _ => Some(Kvm::Unverified(if !sudo.ok {
                "no passwordless sudo to run the probe".to_string()
            } else if let Some(e) = &qemu.error {
                format!("QEMU cannot run: {e}")
            } else if qemu.version.is_none() {
                "no QEMU to run the probe".to_string()
            } else {
                "no probe for this architecture".to_string()
            })),
        }
    };
    let mut tools = BTreeMap::new();
    for t in TOOLS {
        let path = kv.get(format!("tool_{t}").as_str()).map(|p| p.trim()).filter(|p| !p.is_empty());
        tools.insert(t.to_string(), path.map(String::from));
    }
    let lookups = if wanted.lookups.is_empty() {
        None
    } else {
        let mut prefixes: Vec<&str> = wanted.lookups.iter().map(String::as_str).collect();
        prefixes.sort();
        prefixes.dedup();
        let body = tail.split_once(&format!("{LOOKUPS}\n")).map(|(_, b)| b).unwrap_or("");
        let found = process::parse_lookup(body);
        if found.len() != prefixes.len() {
            return Err(format!("kernel/initrd lookup gave {} answers for {} prefixes", found.len(), prefixes.len()));
        }
        Some(prefixes.into_iter().map(String::from).zip(found.into_iter().map(Result::ok)).collect())
    };
    numa_nodes.sort();
    Ok(HostFacts {
        format: FORMAT,
        arch: kv.get("arch").map(|a| a.trim().to_string()).filter(|a| !a.is_empty()),
        sudo: Some(sudo),
        qemu: Some(qemu),
        kvm,
        lscpu: (!lscpu.trim().is_empty()).then(|| lscpu.to_string()),
        cpus_online: Some(parse_cpu_list(kv.get("cpus_online").copied().unwrap_or(""))?),
        cpus_isolated: Some(parse_cpu_list(kv.get("cpus_isolated").copied().unwrap_or(""))?),
        numa_nodes: Some(numa_nodes),
        hugepages: Some(hugepage_facts(&hp)),
        lookups,
        tools: Some(tools),
    })
}

/// The hugepage facts of a probe's parsed output.
fn hugepage_facts(st: &hugepages::HugepageState) -> HugepageFacts {
    HugepageFacts {
        pools: st.pools.clone(),
        numa: st
            .numa
            .iter()
            .map(|(&(node, size_kb), p)| crate::facts::NumaPool {
                node,
                size_kb,
                nr: p.nr,
                free: p.free,
                surplus: p.surplus,
            })
            .collect(),
        mounts: st.mounts.clone(),
    }
}

/// Gather a connected node's facts (one round trip).
pub async fn gather(session: &Session, node: &Node, wanted: &Wanted, timeout: Duration) -> Result<HostFacts, SshError> {
    let cmd = RemoteCommand::sh(script(node, wanted)).timeout(timeout).idempotent();
    let out = session.run(&cmd).await?;
    parse(&out.stdout_str(), wanted).map_err(|e| SshError::CommandFailed {
        node: node.name.clone(),
        command: "facts probe".into(),
        status: out.status.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
        stderr: format!("{e}: {}", out.stderr_str().trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "sudo_rc=0\nsudo_err=\narch=x86_64\nqemu_path=/usr/bin/qemu-system-x86_64\n\
        qemu_version=QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)\nkvm_dev=1\nkvm_probe=134\n\
        kvm_err=qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\ncpus_online=0-3,6\ncpus_isolated=2-3\n\
        tool_socat=/usr/bin/socat\ntool_taskset=/usr/bin/taskset\ntool_chrt=\nnumanode=0\nnumanode=1\n\
        numa 0 2048 64 60 0\nnuma 1 2048 64 64 0\n\
        pool 1048576 0 0 0 0 0\npool 2048 128 124 4 0 0\nmount /dev/hugepages hugetlbfs\nmount /dev/hugepages1G missing\n\
        ==lscpu\n# CPU,Core,Socket,Node,,L1d,L1i,L2,L3\n0,0,0,0,,0,0,0,0\n1,1,0,1,,1,1,1,1\n==lscpu-end\n\
        ==lookups\nfound /opt/boot/initrd.img-6.1\nmissing /opt/boot/vmlinuz\n";

    fn wanted() -> Wanted {
        Wanted { kvm_probe: true, lookups: vec!["/opt/boot/vmlinuz".into(), "/opt/boot/initrd.img".into()] }
    }

    #[test]
    fn parses_probe_output_by_name() {
        let f = parse(SAMPLE, &wanted()).unwrap();
        assert!(f.sudo.as_ref().unwrap().ok);
        assert_eq!(f.arch.as_deref(), Some("x86_64"));
        let q = f.qemu.as_ref().unwrap();
        assert_eq!(q.version.as_deref(), Some("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)"));
        assert_eq!(f.kvm, Some(Kvm::Broken("qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69".into())));
        assert_eq!(f.cpus_online.as_deref(), Some(&[0, 1, 2, 3, 6][..]));
        assert_eq!(f.cpus_isolated.as_deref(), Some(&[2, 3][..]));
        let tools = f.tools.as_ref().unwrap();
        assert_eq!(tools["chrt"], None);
        assert_eq!(tools["socat"].as_deref(), Some("/usr/bin/socat"));
        let hp = f.hugepages.as_ref().unwrap();
        assert_eq!(hp.pools[&2048].available(), 120);
        assert_eq!(hp.numa.len(), 2);
        assert_eq!(hp.numa[1], crate::facts::NumaPool { node: 1, size_kb: 2048, nr: 64, free: 64, surplus: 0 });
        assert_eq!(hp.mounts["/dev/hugepages"], "hugetlbfs");
        assert_eq!(f.numa_nodes.as_deref(), Some(&[0, 1][..]));
        assert_eq!(
            f.lscpu.as_deref(),
            Some("# CPU,Core,Socket,Node,,L1d,L1i,L2,L3\n0,0,0,0,,0,0,0,0\n1,1,0,1,,1,1,1,1\n")
        );
        // Answers come back in sorted-prefix order.
        let l = f.lookups.as_ref().unwrap();
        assert_eq!(l["/opt/boot/initrd.img"].as_deref(), Some("/opt/boot/initrd.img-6.1"));
        assert_eq!(l["/opt/boot/vmlinuz"], None);
    }

    #[test]
    fn kvm_states() {
        let ok = SAMPLE.replace("kvm_probe=134", "kvm_probe=85");
        assert_eq!(parse(&ok, &wanted()).unwrap().kvm, Some(Kvm::Usable));
        let no_dev = SAMPLE.replace("kvm_dev=1", "kvm_dev=0");
        assert_eq!(parse(&no_dev, &wanted()).unwrap().kvm, Some(Kvm::Absent));
        let no_probe = SAMPLE.replace("kvm_probe=134\n", "").replace("sudo_rc=0", "sudo_rc=1");
        assert!(matches!(parse(&no_probe, &wanted()).unwrap().kvm, Some(Kvm::Unverified(_))));
        let not_asked = Wanted { kvm_probe: false, ..wanted() };
        assert_eq!(parse(&SAMPLE.replace("kvm_probe=134\n", ""), &not_asked).unwrap().kvm, None, "not probed");
        assert!(parse("garbage", &wanted()).is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-2,5,7-8").unwrap(), vec![0, 1, 2, 5, 7, 8]);
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<u32>::new());
        assert_eq!(parse_cpu_list("\n").unwrap(), Vec::<u32>::new());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }

    /// The script as it runs on a host whose `sudo` behaves like `body`, KVM probe under TCG.
    fn run_script_with_sudo(w: &Wanted, body: &str) -> (HostFacts, String) {
        use crate::testsupport;
        let node = crate::plan::fixture::dut("DUT1");
        let script = script(&node, w)
            .replace("-accel kvm -cpu host", "-accel tcg -cpu max")
            .replace("[ -e /dev/kvm ] &&", "true &&");
        let path = testsupport::path_with("sudo", body);
        let out = testsupport::output(|| {
            let mut c = std::process::Command::new("sh");
            c.arg("-c").arg(&script).env("PATH", &path);
            c
        });
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (parse(&text, w).unwrap(), text)
    }

    /// Where `sudo -n` wants a password: sudo's own message, KVM unverified, and the lookups
    /// still answered (as the login user).
    #[test]
    fn without_sudo_the_facts_say_why_and_the_lookups_run_as_the_login_user() {
        let w = Wanted { kvm_probe: true, lookups: vec!["/bin/s".into()] };
        let (f, out) = run_script_with_sudo(&w, crate::testsupport::PASSWORD_SUDO);
        let sudo = f.sudo.as_ref().unwrap();
        assert!(!sudo.ok, "{out}");
        assert_eq!(sudo.error.as_deref(), Some("sudo: a password is required"));
        assert!(matches!(f.kvm, Some(Kvm::Unverified(_))), "{out}");
        assert!(f.lookups.unwrap()["/bin/s"].as_deref().is_some_and(|p| p.starts_with("/bin/s")), "{out}");
        // Nothing to run as root: sudo is still asked.
        let (f, out) = run_script_with_sudo(&Wanted::default(), crate::testsupport::PASSWORD_SUDO);
        assert!(!f.sudo.unwrap().ok, "{out}");
        let (f, out) = run_script_with_sudo(&Wanted::default(), crate::testsupport::PASSTHROUGH_SUDO);
        assert!(f.sudo.unwrap().ok, "{out}");
    }

    /// The facts and `check`'s `qemu` item for a node whose QEMU binary is a script with `body`.
    fn with_fake_qemu(body: &str) -> (crate::facts::QemuFacts, crate::remote::check::Item) {
        use crate::testsupport;
        let path = testsupport::path_with("qemu-system-x86_64", body);
        let mut node = crate::plan::fixture::dut("DUT1");
        node.qemu.bin_dir = path.split(':').next().unwrap().to_string();
        let script = script(&node, &Wanted::default());
        let sudo = testsupport::path_with("sudo", testsupport::PASSTHROUGH_SUDO);
        let out = testsupport::output(|| {
            let mut c = std::process::Command::new("sh");
            c.arg("-c").arg(&script).env("PATH", &sudo);
            c
        });
        let f = parse(&String::from_utf8_lossy(&out.stdout), &Wanted::default()).unwrap();
        let items = crate::remote::check::evaluate(&node, &[], Ok(None), &f);
        let item = items.into_iter().find(|i| i.name == "qemu").unwrap();
        (f.qemu.unwrap(), item)
    }

    /// `check` said `qemu` ok for any executable at the QEMU path: the probe printed the first
    /// line of `--version` whatever its exit status, so a QEMU that could not load its shared
    /// libraries, or a program printing nothing, had a "version".
    #[test]
    fn regression_a_qemu_that_cannot_run_has_no_version_and_fails_the_check() {
        use crate::remote::check::Status;
        let (q, item) = with_fake_qemu(
            "echo \"$0: error while loading shared libraries: libslirp.so.0: cannot open shared object file\" >&2; \
             exit 127",
        );
        assert_eq!(q.version, None, "{q:?}");
        assert_eq!(item.status, Status::Fail, "{item:?}");
        assert!(item.detail.contains("cannot run: --version exited 127: "), "{item:?}");
        assert!(item.detail.contains("error while loading shared libraries: libslirp.so.0"), "{item:?}");

        let (q, item) = with_fake_qemu("exit 0");
        assert_eq!(q.version, None, "{q:?}");
        assert_eq!(item.status, Status::Fail, "{item:?}");
        assert!(item.detail.ends_with("cannot run: --version printed: (no output)"), "{item:?}");

        let (q, item) = with_fake_qemu("echo 'QEMU emulator version 8.2.2'; echo 'Copyright (c) 2003-2023'");
        assert_eq!(q.version.as_deref(), Some("QEMU emulator version 8.2.2"));
        assert_eq!(q.error, None);
        assert_eq!(item.status, Status::Ok, "{item:?}");
    }

    /// The whole probe path (script, one sudo, firmware, lscpu, lookups, parsing) on this
    /// machine, with the KVM probe under TCG (no KVM needed): says usable, and finds the layout.
    #[test]
    fn probe_runs_here_with_the_firmware_under_tcg() {
        let w = Wanted { kvm_probe: true, lookups: vec!["/bin/s".into(), "/nonexistent/x".into()] };
        // One `sudo` runs the KVM probe and the lookups and tells whether sudo works; `sudo -n
        // true` only when it did not.
        let s = script(&crate::plan::fixture::dut("DUT1"), &w);
        assert_eq!(s.matches("sudo -n").count(), 2, "the root part, and `sudo -n true` only when it failed:\n{s}");
        let (f, out) = run_script_with_sudo(&w, crate::testsupport::PASSTHROUGH_SUDO);
        assert!(f.sudo.as_ref().unwrap().ok, "{out}");
        assert!(f.qemu.as_ref().unwrap().version.is_some(), "qemu-system-x86_64 must be installed for this test");
        assert_eq!(f.kvm, Some(Kvm::Usable), "{out}");
        let layout = f.cpu_layout().expect("lscpu ran").unwrap();
        assert_eq!(layout.rows.len(), f.cpus_online.as_ref().unwrap().len());
        let l = f.lookups.unwrap();
        assert!(l["/bin/s"].as_deref().is_some_and(|p| p.starts_with("/bin/s")), "{l:?}");
        assert_eq!(l["/nonexistent/x"], None);
    }
}
