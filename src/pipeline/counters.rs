//! VNF counters: the guest commands of a VM's `collect:` key (or its VNF's defaults) run over
//! the guest agent, their output kept raw and, where we know the format, parsed.
//!
//! Parsed forms: VPP `show errors` becomes `[{count, node, reason, severity}]`
//! ([`crate::collect::vpp_errors`]); `cat /proc/net/snmp6` becomes its `Icmp6*` counters
//! ([`crate::collect::snmp6`]). A parse failure is recorded next to the raw output, never fatal.
//! A command that did not exit 0 is not parsed at all: its `error` says how it ended.

use std::time::Duration;

use serde::Serialize;

use crate::run::guest;
use crate::ssh::Session;
use crate::topology::{Topology, Vm, Vnf};

/// How long one collect command may take, agent sync included: a dead guest must not hang
/// artifact collection or cleanup.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// The commands to run in `vm`: its own `collect:` list, else its VNF's defaults when it has a
/// guest agent to run them (VPP VMs without one simply collect nothing).
pub fn commands_for(vm: &Vm) -> Vec<Vec<String>> {
    if let Some(c) = &vm.collect {
        return c.clone();
    }
    if !vm.qga {
        return vec![];
    }
    let argv = |s: &[&str]| s.iter().map(|w| w.to_string()).collect::<Vec<String>>();
    match &vm.vnf {
        Vnf::Vpp(_) => vec![
            argv(&["vppctl", "show", "errors"]),
            argv(&["vppctl", "show", "interface"]),
            argv(&["vppctl", "show", "runtime"]),
        ],
        _ => vec![],
    }
}

/// The commands of VM `name` on `node`: a `vms:` entry's, or for a chain's VM its chain
/// template's. Chain VMs are only expanded into VMs by the plan, so `topology.vms` never has them.
pub fn commands_in(topology: &Topology, node: &str, name: &str) -> Vec<Vec<String>> {
    if let Some(vm) = topology.vms.iter().find(|v| v.node == node && v.name == name) {
        return commands_for(vm);
    }
    match topology.chain_on(node) {
        Some(c) if c.vm_ids().iter().any(|(_, n)| n == name) => commands_for(&c.template),
        _ => vec![],
    }
}

/// One command's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Collected {
    pub argv: Vec<String>,
    /// Exit code (`None`: killed by a signal, or never ran).
    pub exit_code: Option<i64>,
    /// Raw stdout (lossy UTF-8) and stderr.
    pub stdout: String,
    pub stderr: String,
    /// Parsed form, when the command is one we know.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parsed: Option<serde_json::Value>,
    /// Why there is no output or no parsed form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Collected {
    /// A file-name-safe name: the argv words joined by `_`, other characters dropped.
    pub fn file_stem(&self, index: usize) -> String {
        let words: String = self
            .argv
            .iter()
            .enumerate()
            .map(|(i, w)| if i == 0 { w.rsplit('/').next().unwrap_or(w) } else { w })
            .collect::<Vec<_>>()
            .join("_")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
            .take(60)
            .collect();
        format!("{index:02}-{words}")
    }
}

/// Which parser fits this command, if any.
fn parse(argv: &[String], stdout: &str) -> Option<Result<serde_json::Value, String>> {
    let words: Vec<&str> = argv.iter().map(String::as_str).collect();
    let prog = words.first()?.rsplit('/').next()?;
    let rest = &words[1..];
    if prog == "vppctl" && rest.len() >= 2 && rest[0] == "show" && rest[1].starts_with("err") {
        return Some(
            crate::collect::vpp_errors::parse(stdout)
                .map(|rows| serde_json::to_value(rows).expect("serialisable"))
                .map_err(|e| e.to_string()),
        );
    }
    if prog == "cat" && rest == ["/proc/net/snmp6"] {
        return Some(
            crate::collect::snmp6::parse(stdout)
                .map(|c| serde_json::to_value(crate::collect::snmp6::icmp6(&c)).expect("serialisable"))
                .map_err(|e| e.to_string()),
        );
    }
    None
}

/// Run each command in the guest behind `qga` on `session`, one after another (the agent
/// serves one client at a time), each bounded by [`COMMAND_TIMEOUT`].
pub async fn run_all(session: &Session, qga: Option<&str>, commands: &[Vec<String>]) -> Vec<Collected> {
    let mut out = Vec::new();
    for argv in commands {
        let res = tokio::time::timeout(COMMAND_TIMEOUT, guest::exec(session, qga, argv, COMMAND_TIMEOUT)).await;
        let c = match res {
            Err(_) => failed(argv, format!("no answer within {COMMAND_TIMEOUT:?}")),
            Ok(Err(e)) => failed(argv, e.to_string()),
            Ok(Ok(o)) => outcome(argv, &o),
        };
        out.push(c);
    }
    out
}

/// A command that ran. Its output is parsed only when it exited 0: a failed `cat` prints
/// nothing, and nothing must not pass for a set of counters.
fn outcome(argv: &[String], o: &crate::run::qga::ExecOutput) -> Collected {
    use crate::run::qga::ExitStatus;
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let exit_code = match o.status {
        ExitStatus::Code(c) => Some(c),
        _ => None,
    };
    let (parsed, error) = if o.success() && o.stdout_truncated {
        // The agent cut the output at its capture limit: a row cut mid-way would parse as a
        // bogus counter, and the rows after it are not there.
        (None, Some(format!("output cut at the guest agent's capture limit ({} bytes kept)", o.stdout.len())))
    } else if o.success() {
        match parse(argv, &stdout) {
            Some(Ok(v)) => (Some(v), None),
            Some(Err(e)) => (None, Some(format!("unparsed: {e}"))),
            None => (None, None),
        }
    } else {
        let how = match o.status {
            ExitStatus::Code(c) => format!("exited {c}"),
            ExitStatus::Signal(s) => format!("killed by signal {s}"),
            ExitStatus::Unknown => "no exit status from the guest agent".to_string(),
        };
        match stderr.lines().map(str::trim).find(|l| !l.is_empty()) {
            Some(said) => (None, Some(format!("{how}: {said}"))),
            None => (None, Some(how)),
        }
    };
    Collected { argv: argv.to_vec(), exit_code, stdout, stderr, parsed, error }
}

fn failed(argv: &[String], error: String) -> Collected {
    Collected {
        argv: argv.to_vec(),
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        parsed: None,
        error: Some(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn show_errors_and_snmp6_are_parsed_others_kept_raw() {
        let errors = "   Count                  Node                              Reason               Severity \n\
                      \x20       2             ip6-icmp-input            neighbor solicitations for unknown    error\n";
        let p = parse(&v(&["vppctl", "show", "errors"]), errors).unwrap().unwrap();
        assert_eq!(p[0]["count"], 2);
        assert_eq!(p[0]["node"], "ip6-icmp-input");
        let snmp = "Ip6InReceives 10\nIcmp6InMsgs 3\nIcmp6OutMsgs 4\n";
        let p = parse(&v(&["cat", "/proc/net/snmp6"]), snmp).unwrap().unwrap();
        assert_eq!(p, serde_json::json!({"Icmp6InMsgs": 3, "Icmp6OutMsgs": 4}));
        assert!(parse(&v(&["vppctl", "show", "runtime"]), "x").is_none());
        assert!(parse(&v(&["cat", "/proc/net/snmp6"]), "garbage line here\n").unwrap().is_err());
    }

    const TOPO: &str = "nodes:\n  DUT1: {type: DUT, host: 10.0.0.2}\nvms:\n";

    fn load(vms: &str) -> Result<crate::topology::Topology, crate::topology::TopologyError> {
        crate::topology::load_str_with(&format!("{TOPO}{vms}"), std::path::Path::new("t.yaml"), &|_| true)
    }

    #[test]
    fn collect_key_strings_lists_defaults_and_errors() {
        let t = load(
            "  - {node: DUT1, qga: true, collect: [\"cat /proc/net/snmp6\", [uname, -r], \"echo 'a b'\"]}\n  \
             - {node: DUT1, qga: true}\n",
        )
        .unwrap();
        assert_eq!(commands_for(&t.vms[0]), [v(&["cat", "/proc/net/snmp6"]), v(&["uname", "-r"]), v(&["echo", "a b"])]);
        assert!(commands_for(&t.vms[1]).is_empty(), "no VNF, no defaults");
        let mut vpp = t.vms[1].clone();
        vpp.vnf = Vnf::Vpp("vppip4_2vhostvr1024".into());
        assert_eq!(commands_for(&vpp)[0], v(&["vppctl", "show", "errors"]));
        vpp.collect = Some(vec![]);
        assert!(commands_for(&vpp).is_empty(), "`collect: []` turns the defaults off");

        let err =
            load("  - {node: DUT1, qga: true, collect: [\"echo 'open\", \"\", [a, [b]]]}\n").unwrap_err().to_string();
        assert!(err.contains("vms[0].collect[0]: unbalanced quotes"), "{err}");
        assert!(err.contains("vms[0].collect[1]: an empty command"), "{err}");
        assert!(err.contains("vms[0].collect[2][1]: expected a string"), "{err}");
        let err = load("  - {node: DUT1, qga: true, collect: ls}\n").unwrap_err().to_string();
        assert!(err.contains("vms[0].collect: expected a list"), "{err}");
        let err = load("  - {node: DUT1, ready_markers: [X], collect: [ls]}\n").unwrap_err().to_string();
        assert!(err.contains("vms[0].collect: collect runs its commands over the guest agent"), "{err}");
        vpp.collect = None;
        vpp.qga = false;
        assert!(commands_for(&vpp).is_empty(), "no agent, no default counters");
    }

    /// `topologies/csit-chain.yaml` with these keys added to the chain's `vm:` template.
    fn chain_topology(vm_keys: &str) -> Topology {
        let path = format!("{}/topologies/csit-chain.yaml", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let text = format!("{}\n{vm_keys}", text.trim_end());
        crate::topology::load_str_with(&text, std::path::Path::new(&path), &|_| true).unwrap()
    }

    /// Chain VMs never collected counters, not even an explicit `collect:`: `up` and `down`
    /// looked the commands up in `topology.vms`, where only `vms:` entries are (chain VMs exist
    /// once the plan expands the chain).
    #[test]
    fn regression_chain_vms_collect_their_templates_commands() {
        let t = chain_topology("      qga: true\n      collect: [\"cat /proc/net/snmp6\"]\n");
        assert!(t.vms.is_empty(), "the fixture has chain VMs only");
        for q in 1..=4 {
            assert_eq!(commands_in(&t, "DUT1", &format!("DUT1_{q}")), [v(&["cat", "/proc/net/snmp6"])], "DUT1_{q}");
        }
        assert!(commands_in(&t, "DUT1", "DUT1_5").is_empty(), "not a VM of the chain");
        assert!(commands_in(&t, "TG", "DUT1_1").is_empty(), "another node's chain");
        // Without `collect:`, the chain's VPP VNF gives its defaults when the VMs have an agent.
        let t = chain_topology("      qga: true\n");
        assert_eq!(commands_in(&t, "DUT1", "DUT1_2")[0], v(&["vppctl", "show", "errors"]));
        assert!(commands_in(&chain_topology(""), "DUT1", "DUT1_2").is_empty(), "no agent, no defaults");
    }

    fn ran(status: crate::run::qga::ExitStatus, stdout: &str, stderr: &str) -> crate::run::qga::ExecOutput {
        crate::run::qga::ExecOutput {
            pid: 1,
            status,
            stdout: stdout.into(),
            stderr: stderr.into(),
            stdout_truncated: false,
            stderr_truncated: false,
        }
    }

    /// A guest with IPv6 disabled: `cat /proc/net/snmp6` exits 1 with nothing on stdout, and
    /// that was parsed as no counters at all (`parsed: {}`, no error, nothing in missing.txt),
    /// so a check like `Icmp6InErrors == 0` passed.
    #[test]
    fn regression_a_failed_command_is_not_parsed_and_is_an_error() {
        use crate::run::qga::ExitStatus;
        let cat = v(&["cat", "/proc/net/snmp6"]);
        let c = outcome(&cat, &ran(ExitStatus::Code(1), "", "cat: /proc/net/snmp6: No such file or directory\n"));
        assert_eq!(c.parsed, None);
        assert_eq!(c.exit_code, Some(1));
        assert_eq!(c.error.as_deref(), Some("exited 1: cat: /proc/net/snmp6: No such file or directory"));
        // Even output that would parse is not counters of a command that failed.
        let c = outcome(&cat, &ran(ExitStatus::Signal(9), "Icmp6InErrors 0\n", ""));
        assert_eq!((c.parsed, c.error.as_deref()), (None, Some("killed by signal 9")));
        let c = outcome(&cat, &ran(ExitStatus::Unknown, "Icmp6InErrors 0\n", ""));
        assert_eq!(c.parsed, None);
        assert!(c.error.is_some());
        // Exit 0: parsed as before.
        let c = outcome(&cat, &ran(ExitStatus::Code(0), "Icmp6InErrors 0\n", ""));
        assert_eq!((c.parsed, c.error), (Some(serde_json::json!({"Icmp6InErrors": 0})), None));
        let c = outcome(&v(&["vppctl", "show", "runtime"]), &ran(ExitStatus::Code(0), "x", ""));
        assert_eq!((c.parsed, c.error), (None, None));
    }

    /// Output the guest agent cut at its capture limit was parsed as if whole: a row cut
    /// mid-way became a bogus counter, with no error and nothing in missing.txt.
    #[test]
    fn regression_truncated_guest_output_is_not_parsed() {
        use crate::run::qga::ExitStatus;
        let mut o = ran(ExitStatus::Code(0), "Icmp6InErrors 0\nIcmp6OutEr", "");
        o.stdout_truncated = true;
        let c = outcome(&v(&["cat", "/proc/net/snmp6"]), &o);
        assert_eq!(c.parsed, None);
        assert!(c.error.as_deref().is_some_and(|e| e.contains("capture limit")), "{:?}", c.error);
    }

    #[test]
    fn file_stems_are_safe() {
        let c = failed(&v(&["/usr/bin/vppctl", "show", "errors"]), "x".into());
        assert_eq!(c.file_stem(0), "00-vppctl_show_errors");
        let c = failed(&v(&["cat", "/proc/net/snmp6"]), "x".into());
        assert_eq!(c.file_stem(3), "03-cat__proc_net_snmp6");
    }
}
