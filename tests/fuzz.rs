//! Property tests ("fuzzing" on a fixed budget) for the two parsers of untrusted text: the
//! topology loader and the shell quoting.
//!
//! The loader is fed random mutations of real files (the examples in `topologies/`, the CSIT
//! topologies and the corpus in `tests/fuzz-corpus/`, which holds the regression inputs of the
//! hardening issue) and random YAML-ish token soup. It must never panic, hang or abort and must
//! return `Ok` or a `TopologyError` whose text holds no terminal control characters.
//! `quote::quote` must round-trip through a POSIX shell-word parser (`shlex`).
//!
//! The budget is `HARNESS_FUZZ_CASES` cases per property (default 100000: about 45 s for all
//! properties on the 2-core CI machine kind, debug build). CI runs the default; a quick local
//! run is `HARNESS_FUZZ_CASES=2000`, a longer one e.g.
//! `HARNESS_FUZZ_CASES=5000000 cargo test --release --test fuzz -- --nocapture`.
//! Each property prints how many cases it executed and how large the corpus was.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use harness::topology::{self, TopologyError};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cases() -> u32 {
    std::env::var("HARNESS_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

fn config() -> Config {
    // No persistence files next to the sources; failures print their minimal input instead.
    Config { cases: cases(), failure_persistence: None, ..Config::default() }
}

/// Every seed file: `topologies/`, the CSIT fixtures and `tests/fuzz-corpus/`.
fn seeds() -> &'static [(PathBuf, String)] {
    static SEEDS: OnceLock<Vec<(PathBuf, String)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut out = Vec::new();
        for dir in ["topologies", "tests/fixtures/csit-topologies", "tests/fuzz-corpus"] {
            let mut paths: Vec<PathBuf> =
                std::fs::read_dir(root().join(dir)).unwrap().map(|e| e.unwrap().path()).collect();
            paths.sort();
            for p in paths {
                let bytes = std::fs::read(&p).unwrap();
                out.push((p, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
        out
    })
}

fn corpus_size() -> usize {
    std::fs::read_dir(root().join("tests/fuzz-corpus")).unwrap().count()
}

/// Load `text` and check the contract: no panic (proptest reports one), `Ok` or `Invalid`, and
/// the rendered diagnostics stay printable.
fn check_load(text: &str) -> Result<(), TestCaseError> {
    match topology::load_str_with(text, Path::new("fuzz.yaml"), &|vnf| vnf.starts_with("vpp")) {
        Ok(_) => Ok(()),
        Err(TopologyError::Invalid(d)) => {
            prop_assert!(!d.is_empty());
            let shown = TopologyError::Invalid(d).to_string();
            prop_assert!(!shown.chars().any(|c| c.is_control() && c != '\n' && c != '\t'), "{shown:?}");
            Ok(())
        }
        Err(e) => Err(TestCaseError::fail(format!("unexpected error kind: {e}"))),
    }
}

/// Snippets that make the loader work: structure, known keys, hostile values.
const TOKENS: &[&str] = &[
    "nodes:",
    "vms:",
    "metadata:",
    "\n",
    "\n  ",
    "\n    ",
    "  ",
    "- ",
    ": ",
    ", ",
    "{",
    "}",
    "[",
    "]",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "!!str ",
    "!!int ",
    "'",
    "\"",
    "# c",
    "? ",
    "|",
    ">",
    "---",
    "...",
    "%YAML 1.2",
    "\t",
    "\u{feff}",
    "\u{1b}[2J",
    "\r",
    "\\n",
    "DUT1",
    "TG",
    "type: DUT",
    "type: TG",
    "host: 10.0.0.2",
    "port: 22",
    "node: DUT1",
    "qemu_id: 1",
    "qemu_id: 256",
    "name: ..",
    "name: .x",
    "name: a/b",
    "smp: 2",
    "smp: 99999999999999999999",
    "mem: 4096",
    "mem: 1",
    "cpus: [1, 2]",
    "cpus: []",
    "page_size: 1G",
    "page_size: 4K",
    "vnf: vppip4",
    "vnf: testpmd_io",
    "vnf: nosuchvnf",
    "kind: image",
    "image: /i.img",
    "qga: true",
    "queues: 0",
    "jumbo: yes",
    "boot_timeout: 1e30s",
    "boot_timeout: 1.5s",
    "boot_timeout: 169h",
    "run_root: /",
    "run_root: /tmp/x",
    "run_root: /run/../x",
    "run_root: /r,un",
    "vars: {a: \"x\\ny\"}",
    "vars: {1a: b}",
    "interfaces:",
    "vhost_user: {socket: /a,b}",
    "vhost_user: {socket: /run/s1}",
    "vfio_pci: 0000:00:01.0",
    "net_user:",
    "net_user: {host_port: 2222}",
    "hugepages: {size: 1G, allocate: true}",
    "qemu: {accel: kvm}",
    "proxy_jump: J",
    "arch: aarch64",
    "sched: rr",
    "unique_macs: true",
    "ready_markers: ['']",
    "drives: [{file: /d}]",
    "password: pw",
    "identity_file: ~/k",
    "0",
    "-1",
    "~",
    "null",
    "",
    "\u{0}",
    "é",
];

/// One edit of a seed text.
#[derive(Debug, Clone)]
enum Mutation {
    Insert(usize, &'static str),
    Delete(usize, usize),
    Duplicate(usize, usize),
    Byte(usize, u8),
    SwapLines(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), prop::sample::select(TOKENS)).prop_map(|(p, t)| Mutation::Insert(p, t)),
        (any::<usize>(), 0usize..64).prop_map(|(p, n)| Mutation::Delete(p, n)),
        (any::<usize>(), 0usize..256).prop_map(|(p, n)| Mutation::Duplicate(p, n)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Byte(p, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

/// Apply `m` to `text` at byte level; the result is read back lossily (as `load` would see a
/// file with invalid UTF-8 after the user fixed the encoding error: the loader takes `&str`).
fn apply(text: &str, muts: &[Mutation]) -> String {
    let mut b = text.as_bytes().to_vec();
    for m in muts {
        let at = |p: usize, b: &Vec<u8>| if b.is_empty() { 0 } else { p % (b.len() + 1) };
        match *m {
            Mutation::Insert(p, t) => {
                let i = at(p, &b);
                b.splice(i..i, t.bytes());
            }
            Mutation::Delete(p, n) => {
                let i = at(p, &b);
                let j = (i + n).min(b.len());
                b.drain(i..j);
            }
            Mutation::Duplicate(p, n) => {
                let i = at(p, &b);
                let j = (i + n).min(b.len());
                let chunk: Vec<u8> = b[i..j].to_vec();
                b.splice(j..j, chunk);
            }
            Mutation::Byte(p, v) => {
                if !b.is_empty() {
                    let i = p % b.len();
                    b[i] = v;
                }
            }
            Mutation::SwapLines(x, y) => {
                let s = String::from_utf8_lossy(&b).into_owned();
                let mut lines: Vec<&str> = s.split('\n').collect();
                let n = lines.len();
                lines.swap(x % n, y % n);
                b = lines.join("\n").into_bytes();
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// Run one property with the budget, print the executed case count.
fn run<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let executed = AtomicUsize::new(0);
    let mut runner = TestRunner::new(config());
    let result = runner.run(&strategy, |v| {
        executed.fetch_add(1, Ordering::Relaxed);
        test(v)
    });
    println!(
        "fuzz {name}: {} cases executed (budget {}), {} seed files, corpus tests/fuzz-corpus: {} files",
        executed.load(Ordering::Relaxed),
        cases(),
        seeds().len(),
        corpus_size()
    );
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

#[test]
fn every_seed_loads_without_panic() {
    for (path, text) in seeds() {
        check_load(text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn loader_survives_mutated_seeds() {
    let strategy = (0..seeds().len(), prop::collection::vec(mutation(), 1..8));
    run("loader_mutations", strategy, |(i, muts)| check_load(&apply(&seeds()[i].1, &muts)));
}

#[test]
fn loader_survives_token_soup() {
    let strategy = prop::collection::vec(prop::sample::select(TOKENS), 0..96);
    run("loader_token_soup", strategy, |tokens| check_load(&tokens.concat()));
}

#[test]
fn loader_survives_arbitrary_text() {
    run("loader_arbitrary", any::<String>(), |s| check_load(&s));
}

#[test]
fn quote_round_trips_through_shlex() {
    let no_nul = any::<String>().prop_map(|s| s.replace('\0', ""));
    run("quote_round_trip", prop::collection::vec(no_nul, 1..5), |argv| {
        for a in &argv {
            let q = harness::quote::quote(a);
            prop_assert_eq!(shlex::split(&q), Some(vec![a.clone()]), "quoted: {:?}", q);
        }
        let joined = harness::quote::join(&argv);
        prop_assert_eq!(shlex::split(&joined), Some(argv.clone()), "joined: {:?}", joined);
        Ok(())
    });
}

#[test]
fn socat_address_is_refused_or_plain() {
    run("socat_address", any::<String>(), |s| {
        if let Ok(addr) = harness::quote::socat_unix_address(&s) {
            prop_assert_eq!(addr.strip_prefix("UNIX-CONNECT:"), Some(s.as_str()));
            let specials = [',', ':', '!', '"', '\'', ' ', '\n', '\\', '[', '{', '('];
            prop_assert!(!s.contains(specials), "{:?}", s);
        }
        Ok(())
    });
}
