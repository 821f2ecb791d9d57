//! Tier 3, CI pipelines and reproduction against the loopback lab with real guests: `--junit`
//! and `--artifacts` on a failing `up` (boot timeout) and an unreachable node; `collect` over a
//! real guest agent; a run's bundle replayed with a fresh state dir reproducing byte-identical
//! argv and files; and a replay refusing to start when a fact changed.
//!
//! Boots are the cost (5-10 s each under TCG): the reproduction test reuses one run for
//! collect, bundle and replay. Run ids start with `pipe-` (the lab and /run/harness are shared).

mod common;
use common::cli::{Harness, json};
use common::lab::{lab_dir, lab_topology, repo};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

/// The shared runner (`common::cli`) plus this file's topology edits.
struct Env(Harness);

impl std::ops::Deref for Env {
    type Target = Harness;
    fn deref(&self) -> &Harness {
        &self.0
    }
}

impl Env {
    fn new() -> Env {
        Env(Harness::new())
    }

    /// The lab topology with only VM `name`, edited, written to a temp file.
    fn topology(&self, file: &str, name: &str, edit: impl Fn(&mut serde_yaml::Value)) -> PathBuf {
        let text = std::fs::read_to_string(lab_topology("lab.yaml")).expect("lab.yaml (scripts/lab.sh up writes it)");
        let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let vms = doc["vms"].as_sequence_mut().unwrap();
        vms.retain(|v| format!("{}_{}", v["node"].as_str().unwrap(), v["qemu_id"].as_u64().unwrap()) == name);
        assert_eq!(vms.len(), 1, "{name} in lab.yaml");
        edit(&mut doc);
        let path = self.path(file);
        std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();
        path
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn assert_run_gone(run_id: &str) {
    assert!(!Path::new(&format!("/run/harness/{run_id}")).exists(), "run dir of {run_id} still exists");
}

/// The file validates as tests/junit_schema.rs checks it: each `<testsuite>` against the Jenkins
/// schema (its `<testsuites>` wrapper predates the `skipped` count quick-junit writes, so the
/// wrapper's attributes are checked by hand), and the whole document is well-formed.
fn assert_valid_junit(path: &Path) {
    let xsd = repo().join("tests/fixtures/junit/jenkins-junit-10.xsd");
    let xml = std::fs::read_to_string(path).unwrap();
    let start = xml.find("<testsuite ").expect("a testsuite");
    let end = xml.rfind("</testsuite>").expect("a closed testsuite") + "</testsuite>".len();
    let suite = path.with_extension("suite.xml");
    std::fs::write(&suite, format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}\n", &xml[start..end])).unwrap();
    let xmllint = |args: &[&std::ffi::OsStr]| {
        Command::new("xmllint")
            .args(args)
            .output()
            .expect("xmllint (Debian libxml2-utils; scripts/install-deps.sh installs it)")
    };
    let out = xmllint(&["--noout".as_ref(), "--schema".as_ref(), xsd.as_os_str(), suite.as_os_str()]);
    assert!(out.status.success(), "{} does not validate: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let wrapper = &xml[xml.find("<testsuites").unwrap()..start];
    for attr in wrapper.split_whitespace().skip(1).filter_map(|a| a.split_once('=').map(|(k, _)| k)) {
        assert!(["name", "time", "tests", "failures", "errors", "skipped"].contains(&attr), "{wrapper}");
    }
    let out = xmllint(&["--noout".as_ref(), path.as_os_str()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The `<testcase>` element named `name`, up to its end.
fn testcase<'a>(xml: &'a str, name: &str) -> &'a str {
    let start = xml.find(&format!("<testcase name=\"{name}\"")).unwrap_or_else(|| panic!("no testcase {name}: {xml}"));
    let rest = &xml[start..];
    let end = match (rest.find("</testcase>"), rest.find("/>")) {
        (Some(_), Some(sc)) if sc < rest.find('>').unwrap_or(0) + 1 => sc + 2,
        (Some(e), _) => e + "</testcase>".len(),
        (None, Some(sc)) => sc + 2,
        _ => rest.len(),
    };
    &rest[..end]
}

#[test]
fn boot_timeout_gives_a_junit_failure_and_a_complete_artifacts_tree() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let topo = env.topology("timeout.yaml", "DUT1_1", |d| {
        let vm = &mut d["vms"][0];
        vm["ready_markers"] = serde_yaml::to_value(["THIS-NEVER-APPEARS"]).unwrap();
        // `collect` runs over the agent (a collect without `qga` is refused at load).
        vm["qga"] = true.into();
        vm["boot_timeout"] = "5s".into();
        vm["collect"] = serde_yaml::to_value([["cat", "/proc/net/snmp6"]]).unwrap();
    });
    let (junit, art) = (env.path("junit.xml"), env.path("artifacts"));
    let out = env.run(&[
        "up",
        s(&topo),
        "--run-id",
        "pipe-timeout",
        "--format",
        "json",
        "--junit",
        s(&junit),
        "--artifacts",
        s(&art),
    ]);
    assert_eq!(out.status.code(), Some(4));
    let res = json(&out);
    assert_eq!(res["vms"][0]["failure"], "not_ready", "{res}");
    assert_run_gone("pipe-timeout");

    assert_valid_junit(&junit);
    let xml = std::fs::read_to_string(&junit).unwrap();
    eprintln!("{xml}");
    let vm = testcase(&xml, "DUT1_1");
    assert!(vm.contains(r#"classname="DUT1""#), "{vm}");
    assert!(vm.contains("<failure message=\"not ready after 5s (boot_timeout)"), "{vm}");
    assert!(vm.contains("; last serial lines: "), "{vm}");
    let last = res["vms"][0]["serial_tail"].as_array().unwrap().last().unwrap().as_str().unwrap().to_string();
    assert!(!last.is_empty() && vm.contains("--- last serial lines ---"), "{vm}");
    let setup = testcase(&xml, "setup");
    assert!(!setup.contains("<failure") && !setup.contains("<error"), "{setup}");
    assert!(setup.contains("facts: ") && setup.contains("upload: ") && setup.contains("hugepages: "), "{setup}");

    // The artifacts tree, read before cleanup stopped the VM.
    let vm_dir = art.join("DUT1/DUT1_1");
    for f in ["events.jsonl", "result.json", "junit.xml", "bundle.tar.gz", "missing.txt", "DUT1/facts.json"] {
        assert!(art.join(f).is_file(), "artifacts lack {f}");
    }
    for f in ["serial.log", "argv.txt", "argv.json", "error.txt", "files/init.sh"] {
        assert!(vm_dir.join(f).is_file(), "artifacts lack DUT1/DUT1_1/{f}");
    }
    let serial = std::fs::read_to_string(vm_dir.join("serial.log")).unwrap();
    assert!(serial.contains(last.trim()), "the serial log holds the tail the error showed");
    let manifest: Value = serde_json::from_slice(&std::fs::read(art.join("DUT1/manifest.json")).unwrap()).unwrap();
    let argv: Value = serde_json::from_slice(&std::fs::read(vm_dir.join("argv.json")).unwrap()).unwrap();
    assert_eq!(manifest["vms"][0]["argv"], argv);
    let result: Value = serde_json::from_slice(&std::fs::read(art.join("result.json")).unwrap()).unwrap();
    assert_eq!(result, res, "result.json is the --format json result");
    let events = std::fs::read_to_string(art.join("events.jsonl")).unwrap();
    let events: Vec<Value> = events.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.iter().all(|e| e["unix"].as_f64().unwrap() > 1.7e9), "timestamped");
    assert!(events.iter().any(|e| e["vm"] == "DUT1_1" && e["phase"] == "FAILED"));
    assert!(events.iter().any(|e| e["vm"] == "DUT1_1" && e["phase"] == "stopped"), "cleanup events too");
    // The counters could not be read from a guest that never came up: listed, not hung on.
    let missing = std::fs::read_to_string(art.join("missing.txt")).unwrap();
    assert!(missing.contains("DUT1/DUT1_1/collect/: not run: the VM was not ready"), "{missing}");
}

#[test]
fn unreachable_node_is_a_junit_error_and_its_vms_are_skipped() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    // Nothing listens on 127.0.0.1:9 (discard) in the lab.
    let topo = env.topology("unreach.yaml", "DUT2_1", |d| d["nodes"]["DUT2"]["port"] = 9.into());
    let (junit, art) = (env.path("junit.xml"), env.path("artifacts"));
    let out = env.run(&["up", s(&topo), "--run-id", "pipe-unreach", "--junit", s(&junit), "--artifacts", s(&art)]);
    assert_eq!(out.status.code(), Some(3));
    assert_valid_junit(&junit);
    let xml = std::fs::read_to_string(&junit).unwrap();
    let setup = testcase(&xml, "setup");
    assert!(setup.contains(r#"classname="DUT2""#) && setup.contains("<error message=\""), "{setup}");
    assert!(setup.contains("127.0.0.1:9"), "{setup}");
    let vm = testcase(&xml, "DUT2_1");
    assert!(vm.contains("<skipped message=\"not started: node DUT2 failed"), "{vm}");
    let missing = std::fs::read_to_string(art.join("missing.txt")).unwrap();
    assert!(missing.contains("DUT2/: node not reached"), "{missing}");
    assert!(art.join("result.json").is_file() && art.join("events.jsonl").is_file());

    // check --junit: the unreachable node's setup is an <error> as well.
    let cjunit = env.path("check.xml");
    let out = env.run(&["check", s(&topo), "--junit", s(&cjunit)]);
    assert_eq!(out.status.code(), Some(3));
    assert_valid_junit(&cjunit);
    let xml = std::fs::read_to_string(&cjunit).unwrap();
    let dut2 = &xml[xml.find(r#"classname="DUT2""#).unwrap()..];
    assert!(dut2[..dut2.find("</testcase>").unwrap()].contains("<error message="), "{xml}");
}

/// argv and files per VM from a node manifest on this host.
fn ran(run_id: &str, node: &str) -> Value {
    let m: Value =
        serde_json::from_slice(&std::fs::read(format!("/run/harness/{run_id}/manifest-{node}.json")).unwrap()).unwrap();
    m["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| serde_json::json!({"name": v["name"], "argv": v["argv"], "files": v["files"]}))
        .collect()
}

/// One lab run: `collect` over the real guest agent (snmp6 parsed), `bundle`, `down`; the bundle
/// replayed with a fresh state dir runs byte-identical argv and files; then a newer kernel
/// matching the topology's kernel prefix makes replay refuse, with the diff.
#[test]
fn collect_bundle_replay_and_drift() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    // A kernel *prefix*, resolved on the host to the newest match (readable by the lab users).
    let kdir = tempfile::Builder::new().prefix("pipe-kernels-").tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(kdir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(lab_dir().join("guest/vmlinux"), kdir.path().join("vmlinuz-6.1.0")).unwrap();
    let prefix = format!("{}/vmlinuz-", kdir.path().display());
    let topo = env.topology("repro.yaml", "DUT2_1", |d| {
        let vm = &mut d["vms"][0];
        vm["kernel"] = prefix.clone().into();
        vm["collect"] = serde_yaml::to_value(vec![
            serde_yaml::Value::from("cat /proc/net/snmp6"),
            serde_yaml::to_value(["uname", "-r"]).unwrap(),
        ])
        .unwrap();
    });
    let out = env.run(&["up", s(&topo), "--run-id", "pipe-repro", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let res = json(&out);
    let collected = res["vms"][0]["collected"].as_array().unwrap_or_else(|| panic!("no collected: {res}")).clone();
    assert_eq!(collected[0]["argv"], serde_json::json!(["cat", "/proc/net/snmp6"]));
    assert_eq!(collected[0]["exit_code"], 0, "{collected:?}");
    assert!(collected[0]["stdout"].as_str().unwrap().contains("Icmp6InMsgs"));
    let icmp6 = collected[0]["parsed"].as_object().unwrap();
    assert!(icmp6.contains_key("Icmp6OutMsgs") && icmp6.keys().all(|k| k.starts_with("Icmp6")), "{icmp6:?}");
    assert!(!collected[1]["stdout"].as_str().unwrap().trim().is_empty(), "uname -r in the guest");

    let bundle = env.path("repro.tar.gz");
    assert_eq!(env.run(&["bundle", "pipe-repro", "-o", s(&bundle)]).status.code(), Some(0));
    // The lab topology's CSIT-style node with a plaintext password: not in the bundle.
    let mut tarball = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(std::fs::File::open(&bundle).unwrap()), &mut tarball)
        .unwrap();
    let lab_text = std::fs::read_to_string(lab_topology("lab.yaml")).unwrap();
    let password = lab_text.lines().find_map(|l| l.trim().strip_prefix("password: ")).expect("lab.yaml has a password");
    assert!(!String::from_utf8_lossy(&tarball).contains(password), "the bundle carries the node's password");
    let first = ran("pipe-repro", "DUT2");
    // down collects the counters (and the rest) before it stops the guest.
    let (dart, djunit) = (env.path("down-artifacts"), env.path("down.xml"));
    let down = env.run(&["down", "--run", "pipe-repro", "--artifacts", s(&dart), "--junit", s(&djunit)]);
    assert_eq!(down.status.code(), Some(0));
    assert_run_gone("pipe-repro");
    let vm_dir = dart.join("pipe-repro/DUT2/DUT2_1");
    let icmp6: Value =
        serde_json::from_slice(&std::fs::read(vm_dir.join("collect/00-cat__proc_net_snmp6.json")).unwrap()).unwrap();
    assert!(icmp6.get("Icmp6InMsgs").is_some(), "{icmp6}");
    assert!(vm_dir.join("serial.log").is_file() && dart.join("pipe-repro/DUT2/manifest.json").is_file());
    assert_eq!(std::fs::read_to_string(dart.join("missing.txt")).unwrap(), "", "nothing missing");
    assert_valid_junit(&djunit);
    let xml = std::fs::read_to_string(&djunit).unwrap();
    assert!(!testcase(&xml, "pipe-repro/DUT2_1").contains("<error"), "{xml}");

    // Replay from the bundle alone: a fresh state dir, no topology argument.
    let fresh = tempfile::tempdir().unwrap();
    let out = env.run_in(fresh.path(), &["replay", s(&bundle)]);
    let second = if out.status.code() == Some(0) { Some(ran("pipe-repro", "DUT2")) } else { None };
    let down = env.run_in(fresh.path(), &["down", "--run", "pipe-repro"]);
    assert_eq!(out.status.code(), Some(0), "replay failed");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no drift"));
    assert_eq!(down.status.code(), Some(0));
    assert_eq!(second.unwrap(), first, "the replay ran other argv or files");
    assert_run_gone("pipe-repro");

    // A newer kernel now matches the prefix: the plan drifts and replay refuses to start.
    std::os::unix::fs::symlink(lab_dir().join("guest/vmlinux"), kdir.path().join("vmlinuz-6.10.0")).unwrap();
    let out = env.run_in(fresh.path(), &["replay", s(&bundle)]);
    assert_eq!(out.status.code(), Some(5));
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(diff.contains("--- DUT2/DUT2_1 argv (bundle)"), "{diff}");
    assert!(diff.contains(&format!("{prefix}6.1.0")) && diff.contains(&format!("{prefix}6.10.0")), "{diff}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to start"));
    assert_run_gone("pipe-repro");
    // `--vm` re-plans just that VM (same drift, same refusal); a VM the bundle lacks is an input error.
    let out = env.run_in(fresh.path(), &["replay", s(&bundle), "--vm", "DUT2_1"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--- DUT2/DUT2_1 argv (bundle)"));
    let out = env.run_in(fresh.path(), &["replay", s(&bundle), "--vm", "DUT9_9", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DUT9_9"));
    assert_run_gone("pipe-repro");
    // A changed template overlay drifts too (dry run: nothing starts either way).
    let tpl = env.path("tpl");
    std::fs::create_dir_all(&tpl).unwrap();
    std::fs::write(tpl.join("init.sh"), "#!/bin/sh\necho overlay\n").unwrap();
    let out = env.run_in(fresh.path(), &["replay", s(&bundle), "--dry-run", "--allow-drift", "--templates", s(&tpl)]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("init.sh (now)"));
    assert_run_gone("pipe-repro");
    // A file that is no bundle is bad input (exit 2), said with its path; nothing is asked of a host.
    let junk = env.path("junk.tar.gz");
    std::fs::write(&junk, b"not a bundle").unwrap();
    let out = env.run_in(fresh.path(), &["replay", s(&junk)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.tar.gz: not a readable harness bundle"));
    // What a bundle says reached the terminal raw: an escape sequence in its meta.json (set the
    // window title, recolour, rewrite lines) was printed as is. It is shown escaped now.
    let unpacked = env.path("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(&bundle).unwrap())).unpack(&unpacked).unwrap();
    let meta_path = unpacked.join("pipe-repro/meta.json");
    let mut meta: Value = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["command_line"] = serde_json::json!(["harness", "up", "\u{1b}]0;pwned\u{7}\u{1b}[2J"]);
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let hostile = env.path("hostile.tar.gz");
    let gz = flate2::write::GzEncoder::new(std::fs::File::create(&hostile).unwrap(), flate2::Compression::fast());
    let mut t = tar::Builder::new(gz);
    t.append_dir_all("pipe-repro", unpacked.join("pipe-repro")).unwrap();
    t.into_inner().unwrap().finish().unwrap();
    let out = env.run_in(fresh.path(), &["replay", s(&hostile), "--dry-run", "--allow-drift"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        !out.stderr.contains(&0x1b) && !out.stdout.contains(&0x1b),
        "an escape from the bundle reached the terminal"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("\\u{1b}]0;pwned\\u{7}"));
    assert_run_gone("pipe-repro");
}
