//! The JUnit XML that `report::junit` writes, checked by tools CI systems trust: the Jenkins
//! xunit-plugin schema via `xmllint --schema` (Debian libxml2-utils), and python3-junitparser
//! reading back the failure text. Both tools are installed by scripts/install-deps.sh; a missing
//! tool fails the test.

use std::process::Command;
use std::time::Duration;

use harness::report::junit::{JunitNode, JunitRun, JunitVm, Outcome, to_xml};

const XSD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/junit/jenkins-junit-10.xsd");

fn run() -> JunitRun {
    let ms = Duration::from_millis;
    JunitRun {
        suite_name: "harness up lab.yaml".into(),
        run_id: "20261129-114000-ab12".into(),
        duration: ms(61_250),
        nodes: vec![
            JunitNode {
                name: "DUT1".into(),
                setup: Outcome::Passed,
                setup_duration: ms(1_750),
                phases: vec![("facts".into(), ms(250)), ("upload".into(), ms(1_000)), ("hugepages".into(), ms(500))],
            },
            JunitNode {
                name: "DUT2".into(),
                setup: Outcome::Error {
                    message: "DUT2 (10.0.0.3:22): unreachable: connect timed out after 10s".into(),
                    detail: String::new(),
                },
                setup_duration: ms(10_000),
                phases: vec![],
            },
        ],
        vms: vec![
            JunitVm {
                node: "DUT1".into(),
                name: "DUT1_1".into(),
                outcome: Outcome::Failure {
                    message: "not ready within 60s".into(),
                    detail: "serial marker HARNESS-READY not seen".into(),
                },
                duration: ms(60_000),
                serial_tail: vec!["Booting Linux".into(), "end Kernel panic - not syncing: <oops> & more".into()],
                phases: vec![("starting".into(), ms(500)), ("booting".into(), ms(59_500))],
            },
            JunitVm {
                node: "DUT1".into(),
                name: "DUT1_2".into(),
                outcome: Outcome::Error {
                    message: "qemu-system-x86_64 exited with status 1".into(),
                    detail: "qemu-system-x86_64: unable to map backing store for guest RAM: Cannot allocate memory"
                        .into(),
                },
                duration: ms(300),
                serial_tail: vec![],
                phases: vec![],
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

fn write_temp(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn xmllint(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new("xmllint")
        .args(args)
        .output()
        .expect("xmllint not found: install the Debian package libxml2-utils (scripts/install-deps.sh)")
}

#[test]
fn every_testsuite_validates_against_the_jenkins_junit_schema() {
    let xml = to_xml(&run());
    let dir = tempfile::tempdir().unwrap();
    // The Jenkins schema's <testsuites> wrapper predates the `skipped` count that quick-junit
    // (like Maven Surefire and pytest) writes on it, and CI readers ignore it there; so the
    // wrapper is checked by hand below and each <testsuite>, which carries the content, is
    // validated by the schema as a document of its own (the schema allows it as root).
    let start = xml.find("<testsuite ").expect("a testsuite");
    let end = xml.rfind("</testsuite>").expect("a closed testsuite") + "</testsuite>".len();
    let suite = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}\n", &xml[start..end]);
    let path = write_temp(&dir, "suite.xml", &suite);
    let out = xmllint(&["--noout".as_ref(), "--schema".as_ref(), XSD.as_ref(), path.as_os_str()]);
    assert!(out.status.success(), "schema validation failed:\n{}\n{suite}", String::from_utf8_lossy(&out.stderr));

    let wrapper = &xml[xml.find("<testsuites").unwrap()..start];
    let attrs: Vec<&str> =
        wrapper.split_whitespace().skip(1).filter_map(|a| a.split_once('=').map(|(k, _)| k)).collect();
    for a in &attrs {
        assert!(
            ["name", "time", "tests", "failures", "errors", "skipped"].contains(a),
            "unexpected <testsuites> attribute {a}: {wrapper}"
        );
    }

    // And the whole document is well-formed XML.
    let path = write_temp(&dir, "report.xml", &xml);
    let out = xmllint(&["--noout".as_ref(), path.as_os_str()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_schema_check_catches_an_invalid_report() {
    // Proves the test above can fail: a testcase without its required name is rejected.
    let dir = tempfile::tempdir().unwrap();
    let bad = "<?xml version=\"1.0\"?>\n<testsuite name=\"x\" tests=\"1\" failures=\"0\" errors=\"0\"><testcase classname=\"DUT1\"/></testsuite>\n";
    let path = write_temp(&dir, "bad.xml", bad);
    let out = xmllint(&["--noout".as_ref(), "--schema".as_ref(), XSD.as_ref(), path.as_os_str()]);
    assert!(!out.status.success(), "xmllint accepted an invalid report");
}

#[test]
fn junitparser_reads_back_outcomes_and_failure_text() {
    let xml = to_xml(&run());
    let dir = tempfile::tempdir().unwrap();
    let path = write_temp(&dir, "report.xml", &xml);
    let script = r#"
import sys
from junitparser import JUnitXml, Failure, Error, Skipped
xml = JUnitXml.fromfile(sys.argv[1])
for suite in xml:
    print("suite", suite.name, suite.tests, suite.failures, suite.errors, suite.skipped, suite.time)
    for case in suite:
        kinds = [type(r).__name__ for r in case.result]
        print("case", case.classname, case.name, case.time, ",".join(kinds) or "passed")
        for r in case.result:
            print("message", r.message)
            print("text", (r.text or "").replace("\n", "\\n"))
"#;
    // Debian's interpreter, where python3-junitparser lives; a pyenv or venv python3 earlier
    // on PATH would not see it.
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .expect("/usr/bin/python3 not found: install python3-junitparser (scripts/install-deps.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "junitparser failed (install python3-junitparser via scripts/install-deps.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "suite harness up lab.yaml 5 1 2 1 61.25", "{stdout}");
    assert!(lines.contains(&"case DUT1 setup 1.75 passed"), "{stdout}");
    assert!(lines.contains(&"case DUT2 setup 10.0 Error"), "{stdout}");
    assert!(lines.contains(&"case DUT1 DUT1_1 60.0 Failure"), "{stdout}");
    assert!(
        lines.contains(
            &"message not ready within 60s; last serial lines: Booting Linux | end Kernel panic - not syncing: <oops> & more"
        ),
        "{stdout}"
    );
    assert!(
        lines.contains(
            &"text serial marker HARNESS-READY not seen\\n--- last serial lines ---\\nBooting Linux\\nend Kernel panic - not syncing: <oops> & more"
        ),
        "{stdout}"
    );
    assert!(lines.contains(&"case DUT1 DUT1_2 0.3 Error"), "{stdout}");
    assert!(lines.contains(&"case DUT2 DUT2_1 0.0 Skipped"), "{stdout}");
    assert!(lines.contains(&"message not started: node DUT2 failed"), "{stdout}");
}
