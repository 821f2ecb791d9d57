//! JUnit XML for CI (Jenkins, GitLab): one `<testsuite>` per run, one `<testcase>` per node
//! setup and per VM, written with the `quick-junit` crate.
//!
//! The input ([`JunitRun`]) is a plain description of the outcome, independent of the runner,
//! so `up` can fill it from its results and tests can build it by hand. Mapping:
//! - node setup (facts, upload, hugepages): testcase `classname = node`, `name = "setup"`;
//! - each VM: testcase `classname = node`, `name = VM`;
//! - [`Outcome::Failure`]: the thing under test misbehaved (a VM never became ready): `<failure>`,
//!   its message ending with the last serial lines so the CI summary shows them;
//! - [`Outcome::Error`]: the infrastructure did (node unreachable, auth or host key refused, QEMU
//!   did not start, vswitch wait timed out): `<error>`;
//! - [`Outcome::Skipped`]: never started because another node failed: `<skipped>`;
//! - phase timings go to `<system-out>`, one `phase: seconds` line each; durations become
//!   `time` attributes of testcases and the testsuite.

use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

/// How a node setup or a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// The guest or its workload failed (e.g. did not become ready).
    Failure {
        message: String,
        detail: String,
    },
    /// The harness or the lab failed (unreachable node, QEMU start failure, timeouts waiting
    /// for host-side resources).
    Error {
        message: String,
        detail: String,
    },
    /// Not attempted.
    Skipped {
        message: String,
    },
}

/// One run, as one test suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JunitRun {
    pub suite_name: String,
    pub run_id: String,
    pub duration: Duration,
    pub nodes: Vec<JunitNode>,
    pub vms: Vec<JunitVm>,
}

/// A node's setup: facts, uploads, hugepages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JunitNode {
    pub name: String,
    pub setup: Outcome,
    pub setup_duration: Duration,
    pub phases: Vec<(String, Duration)>,
}

/// One VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JunitVm {
    pub node: String,
    pub name: String,
    pub outcome: Outcome,
    pub duration: Duration,
    /// Last lines of the serial log, oldest first (shown for failures and errors).
    pub serial_tail: Vec<String>,
    pub phases: Vec<(String, Duration)>,
}

/// How many serial lines go into a failure's `message` attribute; all of `serial_tail` goes
/// into the element text. CI summaries show the message, so keep it to a glance.
pub const MESSAGE_SERIAL_LINES: usize = 5;

/// The run as a JUnit XML document (`<testsuites>` with one `<testsuite>`).
pub fn to_xml(run: &JunitRun) -> String {
    let mut suite = TestSuite::new(run.suite_name.as_str());
    suite.set_time(run.duration);
    suite.add_property(Property::new("run_id", run.run_id.as_str()));
    for node in &run.nodes {
        let mut case = TestCase::new("setup", status(&node.setup, &[]));
        case.set_classname(node.name.as_str()).set_time(node.setup_duration);
        if !node.phases.is_empty() {
            case.set_system_out(phases_text(&node.phases));
        }
        suite.add_test_case(case);
    }
    for vm in &run.vms {
        let mut case = TestCase::new(vm.name.as_str(), status(&vm.outcome, &vm.serial_tail));
        case.set_classname(vm.node.as_str()).set_time(vm.duration);
        if !vm.phases.is_empty() {
            case.set_system_out(phases_text(&vm.phases));
        }
        suite.add_test_case(case);
    }
    let mut report = Report::new(run.suite_name.as_str());
    report.set_time(run.duration);
    report.add_test_suite(suite);
    // Serialising into a String cannot fail: the only errors are I/O errors of the writer.
    let xml = report.to_string().expect("JUnit XML into a String");
    // quick-junit drops the C0 controls XML 1.0 forbids, not the noncharacters U+FFFE/U+FFFF it
    // forbids too (a guest's serial bytes EF BF BE): one makes a CI's parser reject the report.
    if xml.contains(['\u{fffe}', '\u{ffff}']) { xml.replace(['\u{fffe}', '\u{ffff}'], "") } else { xml }
}

fn status(outcome: &Outcome, serial_tail: &[String]) -> TestCaseStatus {
    let non_success = |kind, message: &str, detail: &str| {
        let mut st = TestCaseStatus::non_success(kind);
        let tail = &serial_tail[serial_tail.len().saturating_sub(MESSAGE_SERIAL_LINES)..];
        // Attribute values cannot keep newlines (XML parsers turn them into spaces), so the
        // message joins the lines with " | "; the element text keeps them one per line.
        let msg = if tail.is_empty() {
            message.to_string()
        } else {
            format!("{message}; last serial lines: {}", tail.join(" | "))
        };
        st.set_message(msg);
        let mut text = detail.to_string();
        if !serial_tail.is_empty() {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str("--- last serial lines ---\n");
            text.push_str(&serial_tail.join("\n"));
        }
        if !text.is_empty() {
            st.set_description(text);
        }
        st
    };
    match outcome {
        Outcome::Passed => TestCaseStatus::success(),
        Outcome::Failure { message, detail } => non_success(NonSuccessKind::Failure, message, detail),
        Outcome::Error { message, detail } => non_success(NonSuccessKind::Error, message, detail),
        Outcome::Skipped { message } => {
            let mut st = TestCaseStatus::skipped();
            st.set_message(message.as_str());
            st
        }
    }
}

fn phases_text(phases: &[(String, Duration)]) -> String {
    phases.iter().map(|(name, d)| format!("{name}: {:.3}s\n", d.as_secs_f64())).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Two nodes: DUT1 set up fine, one VM ready and one that never booted; DUT2 refused its
    /// host key, so its VM never started.
    pub(crate) fn sample() -> JunitRun {
        JunitRun {
            suite_name: "harness up topologies/lab.yaml".into(),
            run_id: "20261129-114000-ab12".into(),
            duration: ms(93_500),
            nodes: vec![
                JunitNode {
                    name: "DUT1".into(),
                    setup: Outcome::Passed,
                    setup_duration: ms(2_250),
                    phases: vec![
                        ("facts".into(), ms(250)),
                        ("upload".into(), ms(1_500)),
                        ("hugepages".into(), ms(500)),
                    ],
                },
                JunitNode {
                    name: "DUT2".into(),
                    setup: Outcome::Error {
                        message: "DUT2 (127.0.0.1:2202): host key refused".into(),
                        detail: "unknown host key SHA256:abc; run with --accept-new-host-keys to record it".into(),
                    },
                    setup_duration: ms(120),
                    phases: vec![],
                },
            ],
            vms: vec![
                JunitVm {
                    node: "DUT1".into(),
                    name: "DUT1_1".into(),
                    outcome: Outcome::Passed,
                    duration: ms(41_000),
                    serial_tail: vec![],
                    phases: vec![
                        ("starting".into(), ms(800)),
                        ("booting".into(), ms(39_000)),
                        ("pinning".into(), ms(1_200)),
                    ],
                },
                JunitVm {
                    node: "DUT1".into(),
                    name: "DUT1_2".into(),
                    outcome: Outcome::Failure {
                        message: "not ready within 90s".into(),
                        detail: "waiting for marker HARNESS-READY".into(),
                    },
                    duration: ms(90_000),
                    serial_tail: vec![
                        "[    1.234] Run /init as init process".into(),
                        "Kernel panic - not syncing: VFS: Unable to mount root fs <&>".into(),
                    ],
                    phases: vec![("starting".into(), ms(700)), ("booting".into(), ms(89_300))],
                },
                JunitVm {
                    node: "DUT2".into(),
                    name: "DUT2_1".into(),
                    outcome: Outcome::Skipped { message: "not started: node DUT2 failed".into() },
                    duration: Duration::ZERO,
                    serial_tail: vec![],
                    phases: vec![],
                },
            ],
        }
    }

    /// The text between `<tag` and its end (`/>` or `</tag>`) of the testcase named `name`.
    fn testcase<'a>(xml: &'a str, name: &str) -> &'a str {
        let start = xml.find(&format!("<testcase name=\"{name}\"")).unwrap_or_else(|| panic!("{name} in {xml}"));
        let rest = &xml[start..];
        let end = rest.find("</testcase>").map(|e| e + "</testcase>".len());
        let self_closed = rest.find("/>").map(|e| e + 2);
        match (end, self_closed) {
            (Some(e), Some(s)) if s < rest.find('>').unwrap() + 1 => &rest[..s.min(e)],
            (Some(e), _) => &rest[..e],
            (None, Some(s)) => &rest[..s],
            _ => panic!("unterminated testcase {name}"),
        }
    }

    /// A serial tail with U+FFFE (bytes EF BF BE from the guest) made the whole report
    /// ill-formed XML ("not well-formed" in expat), so the CI dropped every result.
    #[test]
    fn regression_xml_forbidden_noncharacters_are_dropped() {
        let mut run = sample();
        for vm in &mut run.vms {
            vm.serial_tail.push("boot \u{fffe}ok\u{ffff}".into());
        }
        let xml = to_xml(&run);
        assert!(!xml.contains(['\u{fffe}', '\u{ffff}']));
        assert!(xml.contains("boot ok"), "the serial tail of a failed VM is in the report: {xml}");
    }

    #[test]
    fn one_testcase_per_node_setup_and_per_vm() {
        let xml = to_xml(&sample());
        assert_eq!(xml.matches("<testcase ").count(), 5, "{xml}");
        assert_eq!(xml.matches("<testsuite ").count(), 1);
        assert!(xml.contains(r#"tests="5""#) && xml.contains(r#"failures="1""#), "{xml}");
        assert!(xml.contains(r#"errors="1""#) && xml.contains(r#"skipped="1""#), "{xml}");
        assert!(xml.contains(r#"time="93.500""#), "suite time: {xml}");
        assert!(xml.contains(r#"<property name="run_id" value="20261129-114000-ab12"/>"#), "{xml}");

        let setup = testcase(&xml, "setup");
        assert!(setup.contains(r#"classname="DUT1""#) && setup.contains(r#"time="2.250""#), "{setup}");
        assert!(
            setup.contains("<system-out>facts: 0.250s\nupload: 1.500s\nhugepages: 0.500s\n</system-out>"),
            "{setup}"
        );

        let ok = testcase(&xml, "DUT1_1");
        assert!(ok.contains(r#"classname="DUT1""#) && ok.contains(r#"time="41.000""#), "{ok}");
        assert!(!ok.contains("<failure") && !ok.contains("<error"), "{ok}");
        assert!(ok.contains("booting: 39.000s"), "{ok}");
    }

    #[test]
    fn not_ready_vm_is_a_failure_with_the_serial_tail() {
        let xml = to_xml(&sample());
        let vm = testcase(&xml, "DUT1_2");
        assert!(vm.contains("<failure "), "{vm}");
        // Message: the reason, then the last serial lines (escaped).
        assert!(
            vm.contains(
                "message=\"not ready within 90s; last serial lines: [    1.234] Run /init as init process | \
                 Kernel panic - not syncing: VFS: Unable to mount root fs &lt;&amp;&gt;\""
            ),
            "{vm}"
        );
        assert!(
            vm.contains("waiting for marker HARNESS-READY\n--- last serial lines ---\n[    1.234] Run /init"),
            "{vm}"
        );
    }

    #[test]
    fn infrastructure_is_an_error_and_unstarted_vms_are_skipped() {
        let xml = to_xml(&sample());
        let start = xml.find(r#"classname="DUT2""#).unwrap();
        let dut2_setup = &xml[xml[..start].rfind("<testcase").unwrap()..];
        let dut2_setup = &dut2_setup[..dut2_setup.find("</testcase>").unwrap()];
        assert!(dut2_setup.contains(r#"<error message="DUT2 (127.0.0.1:2202): host key refused""#), "{dut2_setup}");
        assert!(dut2_setup.contains("--accept-new-host-keys"), "{dut2_setup}");
        let skipped = testcase(&xml, "DUT2_1");
        assert!(skipped.contains(r#"<skipped message="not started: node DUT2 failed"/>"#), "{skipped}");
    }

    #[test]
    fn long_serial_tails_are_cut_in_the_message_only() {
        let mut run = sample();
        run.vms[1].serial_tail = (1..=8).map(|i| format!("line {i}")).collect();
        let xml = to_xml(&run);
        let vm = testcase(&xml, "DUT1_2");
        assert!(vm.contains("last serial lines: line 4 | line 5 | line 6 | line 7 | line 8\""), "{vm}");
        assert!(vm.contains("---\nline 1\nline 2\n"), "{vm}");
    }
}
