//! Human and machine renderings of a [`Plan`] for `harness render`.
//!
//! The text form is for reproducing a run by hand: per VM the exact command to paste
//! (`sudo -n -- ` + the quoted argv, as `run` sends it), what `run` resolves on the host, and
//! every file with its path, mode and exact bytes. The JSON form is the serialised plan.

use std::fmt::Write as _;

use super::{FileRole, Marker, Plan, Unresolved, VmPlan};
use crate::topology::Sched;

/// The command for a VM, as one shell line: the planned argv under `sudo -n`. (`up` runs exactly
/// this argv, and in the same round trip reads the pidfile it wrote.)
pub fn command_line(vm: &VmPlan) -> String {
    format!("sudo -n -- {}", crate::quote::join(&vm.argv))
}

fn role_name(r: FileRole) -> &'static str {
    match r {
        FileRole::StartupConf => "startup_conf",
        FileRole::Exec => "exec",
        FileRole::Init => "init",
        FileRole::Other => "other",
    }
}

fn marker_text(m: &Marker) -> String {
    let parts: Vec<String> = m.all.iter().map(|p| format!("{p:?}")).collect();
    parts.join(" and ")
}

fn markers_text(ms: &[Marker]) -> String {
    let parts: Vec<String> = ms.iter().map(marker_text).collect();
    parts.join(" | ")
}

/// The text rendering (ends with a newline).
pub fn text(plan: &Plan) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# harness plan, run id {}", plan.run_id);
    for node in &plan.nodes {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "=== node {} (host {}, {}), run dir {}",
            node.name,
            node.host,
            node.arch.as_str(),
            node.run_dir
        );
        for h in &node.hugepages {
            let _ = writeln!(
                o,
                "hugepages needed: {} x {} on {}{}{}",
                h.pages,
                h.size.as_str(),
                h.mount,
                h.numa.map(|n| format!(" from NUMA node {n}")).unwrap_or_default(),
                if node.allocate_hugepages { " (allocated if short)" } else { "" }
            );
        }
        for u in node.unresolved.iter().filter(|u| u.vm.is_none()) {
            unresolved_text(&mut o, u);
        }
        for vm in &node.vms {
            vm_text(&mut o, vm, &node.unresolved);
        }
    }
    o
}

/// One line per open decision: what the plan shows and how `up` will decide it.
fn unresolved_text(o: &mut String, u: &Unresolved) {
    let _ = writeln!(o, "unresolved: {}: shown as {}; up {} (give --facts to resolve)", u.what, u.shown, u.up_decides);
}

fn vm_text(o: &mut String, vm: &VmPlan, unresolved: &[Unresolved]) {
    let _ = writeln!(o);
    let _ = writeln!(o, "--- vm {} (qemu_id {}), run dir {}", vm.name, vm.qemu_id, vm.paths.run_dir);
    let _ = writeln!(o, "{}", command_line(vm));
    for u in unresolved.iter().filter(|u| u.vm.as_deref() == Some(&vm.name)) {
        unresolved_text(o, u);
    }
    for n in &vm.nics {
        let _ = writeln!(
            o,
            "nic: {} ({}) mac {} guest {}",
            n.id,
            n.kind,
            n.mac.as_deref().unwrap_or("(device's own)"),
            n.guest_pci.as_deref().unwrap_or("(auto slot)")
        );
    }
    let r = &vm.readiness;
    if !r.ready_markers.is_empty() {
        let _ = writeln!(o, "ready: a serial line with {}", markers_text(&r.ready_markers));
    }
    if r.qga {
        let _ = writeln!(o, "ready: guest agent answers on {}", vm.paths.qga.as_deref().unwrap_or("?"));
    }
    let _ = writeln!(o, "fail: a serial line with {}", markers_text(&r.fail_markers));
    let _ = writeln!(o, "timeout: {}s", r.timeout.as_secs_f64());
    if let Some(p) = &vm.pinning {
        let cpus: Vec<String> = p.cpus.iter().enumerate().map(|(i, c)| format!("vCPU{i}->{c}")).collect();
        let sched = match p.sched {
            Sched::Rr => ", SCHED_RR priority 1",
            Sched::None => "",
        };
        let _ = writeln!(o, "pin: {}{sched}", cpus.join(" "));
    }
    for f in &vm.files {
        let _ =
            writeln!(o, "--- file {} {} (mode {:04o}, {} bytes)", role_name(f.role), f.path, f.mode, f.content.len());
        o.push_str(&f.content);
        if !f.content.ends_with('\n') {
            o.push_str("\n\\ No newline at end of file\n");
        }
    }
}

/// The JSON rendering: the serialised plan, pretty-printed, with a final newline.
pub fn json(plan: &Plan) -> Result<String, serde_json::Error> {
    let mut s = serde_json::to_string_pretty(plan)?;
    s.push('\n');
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PlanOptions, build, fixture};
    use crate::templates::Templates;

    fn plan() -> Plan {
        let t = Templates::embedded();
        let topo = fixture::topology(vec![fixture::dut("DUT1")], vec![fixture::vm("DUT1", 1)]);
        build(
            &topo,
            &crate::facts::FactsByNode::new(),
            &PlanOptions { run_id: "r1".into(), templates: &t, only_vms: &[] },
        )
        .unwrap()
    }

    #[test]
    fn text_has_pasteable_command_notes_and_files() {
        let p = plan();
        let t = text(&p);
        let line = t.lines().find(|l| l.starts_with("sudo -n -- ")).unwrap();
        assert_eq!(line, command_line(&p.nodes[0].vms[0]));
        // The -append value is one argv element: quoted once, no embedded quotes.
        assert!(line.contains(" -append 'ro rootfstype=9p "), "{line}");
        assert!(t.contains("unresolved: kernel: shown as /opt/boot/vmlinuz; up uses the file itself if it exists, else the newest (version-sorted) match of the prefix (give --facts to resolve)\n"), "{t}");
        assert!(t.contains("unresolved: initrd: shown as /opt/boot/initrd.img; "));
        assert!(t.contains("hugepages needed: 2048 x 2M on /dev/hugepages\n"));
        assert!(t.contains("nic: vhost2 (vhost_user) mac 52:54:00:00:01:02 guest 0000:00:07.0\n"));
        assert!(t.contains("--- file init /run/harness/r1/DUT1_1/init.sh (mode 0755, "));
        assert!(t.contains("--- file startup_conf /run/harness/r1/DUT1_1/startup.conf (mode 0644, "));
        assert!(t.contains("--- file exec /run/harness/r1/DUT1_1/running.exec (mode 0644, "));
        assert!(t.contains(&p.nodes[0].vms[0].files[1].content));
    }

    /// The quoted command is the argv again when a shell parses them.
    #[test]
    fn commands_round_trip_through_sh() {
        let p = plan();
        let mut vm = p.nodes[0].vms[0].clone();
        vm.argv.push("-name".into());
        vm.argv.push("a b'c".into());
        let script = format!("printf '%s\\n' {}", command_line(&vm).strip_prefix("sudo -n -- ").unwrap());
        let out = std::process::Command::new("sh").arg("-c").arg(script).output().unwrap();
        let got: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect();
        assert_eq!(got, vm.argv);
    }

    #[test]
    fn json_has_the_documented_shape() {
        let p = plan();
        let v: serde_json::Value = serde_json::from_str(&json(&p).unwrap()).unwrap();
        let vm = &v["nodes"][0]["vms"][0];
        assert_eq!(v["nodes"][0]["name"], "DUT1");
        assert_eq!(v["nodes"][0]["host"], "127.0.0.1");
        assert_eq!(vm["name"], "DUT1_1");
        assert_eq!(vm["qemu_id"], 1);
        assert_eq!(vm["argv"][0], "/usr/bin/qemu-system-x86_64");
        assert_eq!(vm["files"][0]["role"], "init");
        assert_eq!(vm["files"][0]["mode"], "0755");
        assert_eq!(vm["files"][0]["path"], "/run/harness/r1/DUT1_1/init.sh");
        assert!(vm["files"][0]["content"].as_str().unwrap().starts_with("#!/bin/bash\n"));
        assert_eq!(vm["paths"]["run_dir"], "/run/harness/r1/DUT1_1");
        assert_eq!(vm["paths"]["pidfile"], "/run/harness/r1/DUT1_1/qemu.pid");
        assert_eq!(vm["paths"]["serial_log"], "/run/harness/r1/DUT1_1/serial.log");
        assert_eq!(vm["paths"]["qmp"], "/run/harness/r1/DUT1_1/qmp.sock");
        assert!(vm["paths"]["qga"].is_null());
    }

    #[test]
    fn missing_final_newline_is_marked() {
        let mut p = plan();
        p.nodes[0].vms[0].files[0].content = "x".into();
        assert!(text(&p).contains("\nx\n\\ No newline at end of file\n"));
    }
}
