//! Tier 1: `chains:` through the loader, the plan and the CLI (`validate`, `render --facts`),
//! with CSIT's worked example 3 host (`tests/fixtures/chains/csit-2x28-smt.lscpu`: 2 sockets ×
//! 28 cores, SMT, Intel numbering) and `topologies/csit-chain.yaml`. The expansion arithmetic
//! itself is unit-tested in `src/topology/chains.rs`; here it must come out of the plan intact.

mod common;
use common::cli::echoed;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn example() -> String {
    std::fs::read_to_string(repo().join("topologies/csit-chain.yaml")).unwrap()
}

/// A facts dir with CSIT's example host as DUT1's `lscpu -p`.
fn facts_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(repo().join("tests/fixtures/chains/csit-2x28-smt.lscpu"), d.path().join("DUT1.lscpu")).unwrap();
    d
}

fn harness(args: &[&str]) -> Output {
    echoed("harness", args, Command::new(env!("CARGO_BIN_EXE_harness")).args(args).output().unwrap())
}

fn write(dir: &Path, text: &str) -> String {
    let p = dir.join("chain.yaml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn render_json(topo: &str, facts: &Path) -> Value {
    let out = harness(&["render", topo, "--facts", facts.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Line of the first line of `text` containing `needle` (1-based).
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn chain_render_with_facts_reproduces_csit_example_3() {
    let facts = facts_dir();
    let plan = render_json(repo().join("topologies/csit-chain.yaml").to_str().unwrap(), facts.path());
    let vms = plan["nodes"][0]["vms"].as_array().unwrap();
    let got: Vec<(String, u64, Vec<u64>)> = vms
        .iter()
        .map(|v| {
            let cpus = v["pinning"]["cpus"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
            (v["name"].as_str().unwrap().to_string(), v["qemu_id"].as_u64().unwrap(), cpus)
        })
        .collect();
    let want = [
        ("DUT1_1", 1, vec![4, 6, 62]),
        ("DUT1_2", 2, vec![5, 7, 63]),
        ("DUT1_3", 3, vec![60, 8, 64]),
        ("DUT1_4", 4, vec![61, 9, 65]),
    ];
    let want: Vec<(String, u64, Vec<u64>)> = want.into_iter().map(|(n, q, c)| (n.to_string(), q, c)).collect();
    assert_eq!(got, want);
    assert!(
        plan["nodes"][0]["unresolved"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| !u["what"].as_str().unwrap().contains("chains"))
    );
    for (i, v) in vms.iter().enumerate() {
        let q = i + 1;
        let argv: Vec<&str> = v["argv"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert!(argv.windows(2).any(|w| w == ["-smp", "3,sockets=1,cores=3,threads=1"]), "{argv:?}");
        for nic in 1..=2 {
            let n = &v["nics"][nic - 1];
            assert_eq!(n["socket"], format!("/run/vpp/sock-{q}-{nic}"));
            assert_eq!(n["server"], true);
            assert_eq!(n["mac"], format!("52:54:00:00:{q:02x}:{nic:02x}"));
        }
    }
    // Next hops as CSIT wires them: TG at the chain ends, the neighbour VM's NIC inside.
    let exec = |i: usize| {
        vms[i]["files"].as_array().unwrap().iter().find(|f| f["role"] == "exec").unwrap()["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let hops = [
        ("3c:fd:fe:aa:bb:01", "52:54:00:00:02:01"),
        ("52:54:00:00:01:02", "3c:fd:fe:aa:bb:02"),
        ("3c:fd:fe:aa:bb:01", "52:54:00:00:04:01"),
        ("52:54:00:00:03:02", "3c:fd:fe:aa:bb:02"),
    ];
    for (i, (vif1, vif2)) in hops.iter().enumerate() {
        let e = exec(i);
        assert!(e.contains(&format!("1.1.1.2 {vif1}")) && e.contains(&format!("1.1.2.2 {vif2}")), "{i}: {e}");
        assert!(e.contains(&format!("GigabitEthernet0/6/0 52:54:00:00:{:02x}:01", i + 1)), "{e}");
    }
}

#[test]
fn chain_render_without_facts_is_unresolved_and_shows_no_vms() {
    let out = harness(&["render", repo().join("topologies/csit-chain.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("--- vm "), "{text}");
    let line = line_of(&example(), "- node: DUT1");
    assert!(
        text.contains(&format!("csit-chain.yaml:{line}:5: chains[0] (4 VMs): shown as no VMs: the chain needs the host's CPU layout (--facts DIR with DIR/DUT1.lscpu); up reads it from the host")),
        "{text}"
    );
}

#[test]
fn chain_validate_counts_the_chain_vms() {
    let out = harness(&["validate", repo().join("topologies/csit-chain.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (2 nodes, 1 DUTs, 4 VMs)"));
}

/// The example with `vms:` entries on DUT1 added.
fn with_vms(vms: &str) -> String {
    format!("{}\nvms:\n{vms}", example())
}

const EXPLICIT: &str = "  - {node: DUT1, mem: 2048, vnf: vppip4_2vhostvr1024, vars: {vif1_mac: \"02:00:00:00:00:01\", vif2_mac: \"02:00:00:00:00:02\"}, interfaces: [{vhost_user: {socket: /run/vpp/x-1}}, {vhost_user: {socket: /run/vpp/x-2}}]";

#[test]
fn chain_mixed_with_explicit_vms_takes_the_next_free_id() {
    let d = tempfile::tempdir().unwrap();
    let topo = write(d.path(), &with_vms(&format!("{EXPLICIT}, cpus: [20, 21]}}\n")));
    let facts = facts_dir();
    let plan = render_json(&topo, facts.path());
    let names: Vec<&str> =
        plan["nodes"][0]["vms"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["DUT1_5", "DUT1_1", "DUT1_2", "DUT1_3", "DUT1_4"]);
    assert_eq!(plan["nodes"][0]["vms"][0]["nics"][0]["mac"], "52:54:00:00:05:01");
}

#[test]
fn chain_cpu_clash_with_explicit_vm_is_a_plan_error_at_the_chain() {
    let d = tempfile::tempdir().unwrap();
    let text = with_vms(&format!("{EXPLICIT}, cpus: [30, 62]}}\n"));
    let topo = write(d.path(), &text);
    let facts = facts_dir();
    let out = harness(&["render", &topo, "--facts", facts.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let line = line_of(&text, "- node: DUT1\n".trim_end());
    assert!(
        stderr(&out).contains(&format!(
            "chain.yaml:{line}:5: chains[0]: VM DUT1_1 is placed on CPU 62, which VM DUT1_5 (vms:) is pinned to"
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn chain_id_name_and_socket_clashes_are_load_errors() {
    let d = tempfile::tempdir().unwrap();
    let chain_line = line_of(&example(), "- node: DUT1");
    let cases = [
        (
            format!("{EXPLICIT}, qemu_id: 2}}\n"),
            format!("vms[0].qemu_id: qemu_id 2 is already used on node DUT1 by chains[0] (line {chain_line})"),
        ),
        (
            format!("{EXPLICIT}, name: DUT1_3}}\n"),
            format!("vms[0].name: VM name `DUT1_3` is already used by chains[0] (line {chain_line})"),
        ),
        (
            EXPLICIT.replace("/run/vpp/x-1", "/run/vpp/sock-4-2") + "}\n",
            format!(
                "vms[0].interfaces[0].vhost_user.socket: socket /run/vpp/sock-4-2 on DUT1 is already used by chains[0] (line {chain_line})"
            ),
        ),
    ];
    for (vms, want) in cases {
        let topo = write(d.path(), &with_vms(&vms));
        let out = harness(&["validate", &topo]);
        assert_eq!(out.status.code(), Some(2), "{vms}");
        assert!(stderr(&out).contains(&want), "want {want}\n{}", stderr(&out));
    }
}

#[test]
fn chain_impossible_placement_exits_2_naming_cpus_needed_and_available() {
    let d = tempfile::tempdir().unwrap();
    let topo = write(d.path(), &example().replace("nf_chains: 2 ", "nf_chains: 12"));
    let facts = facts_dir();
    let out = harness(&["render", &topo, "--facts", facts.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    // 24 VMs: 4 skipped + 12 main + 24 data = 40 cores; NUMA node 0 has 28.
    assert!(e.contains("chains[0]: DUT1: not enough CPU cores on NUMA node 0 for 24 chain VMs: need 40 cores"), "{e}");
    assert!(e.contains("28 available") && e.contains("CPUs 0-27"), "{e}");
}

#[test]
fn chain_numa_node_defaults_to_the_duts_interfaces() {
    let d = tempfile::tempdir().unwrap();
    let topo = write(d.path(), &example().replace("numa_node: 0}", "numa_node: 1}"));
    let plan = render_json(&topo, facts_dir().path());
    assert_eq!(plan["nodes"][0]["vms"][0]["pinning"]["cpus"], serde_json::json!([32, 34, 90]));
    // The chain's own numa_node wins.
    let topo = write(
        d.path(),
        &example().replace("numa_node: 0}", "numa_node: 1}").replace("# numa_node: 0 ", "numa_node: 0   "),
    );
    let plan = render_json(&topo, facts_dir().path());
    assert_eq!(plan["nodes"][0]["vms"][0]["pinning"]["cpus"], serde_json::json!([4, 6, 62]));
}

/// CSIT takes the chain's NUMA node from the DUT's two test ports (`if1`, `if2`). harness
/// sorted every interface by its number, so the host vswitch's `vhost1` (listed for a
/// `testpmd_mac` chain's next hops) came before `port2` and, having no `numa_node`, put the chain
/// on node 0 although port2 is on node 1. The `vhost*` ports are not test ports.
#[test]
fn regression_chain_numa_node_ignores_the_vhost_ports() {
    let d = tempfile::tempdir().unwrap();
    let text = example().replace("link: link1, numa_node: 0}", "link: link1}").replace(
        "link: link2, numa_node: 0}",
        "link: link2, numa_node: 1}\n      vhost1: {mac_address: \"02:fe:00:00:00:01\"}",
    );
    assert!(text.contains("vhost1:") && text.contains("numa_node: 1}"), "the example changed");
    let plan = render_json(&write(d.path(), &text), facts_dir().path());
    assert_eq!(plan["nodes"][0]["vms"][0]["pinning"]["cpus"], serde_json::json!([32, 34, 90]));
}

#[test]
fn chain_template_errors_carry_positions_and_chain_keys() {
    let d = tempfile::tempdir().unwrap();
    let text = example()
        .replace("      mem: 4096\n", "      mem: 4095\n      smp: 2\n      qemu_id: 3\n")
        .replace("vars: {vpp_bin: /usr/bin/vpp}", "vars: {vpp_bin: /usr/bin/vpp, vif1_mac: \"02:00:00:00:00:01\"}")
        .replace("vnf: vppip4_2vhostvr1024", "vnf: vppip4_nope");
    let topo = write(d.path(), &text);
    let out = harness(&["validate", &topo]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    let at = |needle: &str| line_of(&text, needle);
    for want in [
        format!("chain.yaml:{}:10: chains[0].vnf: no template `vppip4_nope.exec`", at("vnf: vppip4_nope")),
        format!("chain.yaml:{}:12: chains[0].vm.mem: 4095 MiB is not a multiple of the 2M page size", at("mem: 4095")),
        format!("chain.yaml:{}:7: chains[0].vm.smp: set per VM from its CPUs", at("smp: 2")),
        format!("chain.yaml:{}:7: chains[0].vm.qemu_id: set per VM by the chain", at("qemu_id: 3")),
        "chains[0].vm.vars.vif1_mac: set per VM by the chain (CSIT's MAC wiring)".to_string(),
    ] {
        assert!(e.contains(&want), "want {want}\n{e}");
    }
}

#[test]
fn chain_template_nics_and_shared_cpus_plan_without_facts() {
    // The lab's form: every VM on the template's CPUs, NIC settings from the template.
    let d = tempfile::tempdir().unwrap();
    let text = example().replace(
        "      mem: 4096\n",
        "      mem: 4096\n      cpus: [0]\n      interfaces: [{vhost_user: {vectors: 0}}, {vhost_user: {vectors: 0, queue_size: 256}}]\n",
    );
    let topo = write(d.path(), &text);
    let out = harness(&["render", &topo, "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let vms = plan["nodes"][0]["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 4);
    for v in vms {
        assert_eq!(v["pinning"]["cpus"], serde_json::json!([0]));
        let argv: Vec<&str> = v["argv"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        let devs: Vec<&&str> = argv.iter().filter(|a| a.starts_with("virtio-net-pci,netdev=vhost")).collect();
        assert_eq!(devs.len(), 2);
        assert!(devs.iter().all(|d| d.contains(",vectors=0,")), "{devs:?}");
        assert!(devs[1].contains("rx_queue_size=256") && devs[0].contains("rx_queue_size=1024"), "{devs:?}");
    }
    assert_eq!(vms[3]["nics"][1]["socket"], "/run/vpp/sock-4-2");
    // A socket in the template is the chain's business.
    let bad = text.replace("{vhost_user: {vectors: 0}}", "{vhost_user: {socket: /run/x, vectors: 0}}");
    let out = harness(&["validate", &write(d.path(), &bad)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("chains[0].vm.interfaces[0].vhost_user.socket: set per VM by the chain"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn chain_one_entry_per_node() {
    let d = tempfile::tempdir().unwrap();
    let text = example();
    let start = text.find("  - node: DUT1").unwrap();
    let entry = text[start..].to_string();
    let topo = write(d.path(), &format!("{text}{entry}"));
    let out = harness(&["validate", &topo]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("chains[1].node: node DUT1 already has chains[0]"), "{}", stderr(&out));
}

/// The top-level error was printed raw, and it quotes what fact files and hosts said: an
/// `lscpu -p` line with `ESC[2J ESC]0;…BEL \r` cleared the terminal, set its title and forged
/// an "error: all good" line.
#[test]
fn regression_errors_quoting_host_output_are_escaped() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("DUT1.lscpu"),
        "# CPU,Core,Socket,Node\n0,0,0,0\n\u{1b}[2J\u{1b}]0;OWNED\u{7}\rerror: all good,0,0,0\n",
    )
    .unwrap();
    let out = harness(&[
        "render",
        repo().join("topologies/csit-chain.yaml").to_str().unwrap(),
        "--facts",
        d.path().to_str().unwrap(),
    ]);
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(!err.contains(['\u{1b}', '\u{7}', '\r']), "{err:?}");
    assert!(err.contains("\\u{1b}[2J\\u{1b}]0;OWNED\\u{7}\\rerror: all good"), "{err}");
}

/// `up` of a topology it cannot read exited 1 ("reading …: No such file"), while `validate`,
/// `render` and `check` exit 2 for the same input, as the README's table says.
#[test]
fn regression_up_of_an_unreadable_topology_exits_2() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nope.yaml");
    let state = d.path().join("state");
    let out = harness(&["--state-dir", state.to_str().unwrap(), "up", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("nope.yaml: cannot read"), "{}", stderr(&out));
    let out = harness(&["validate", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
}
