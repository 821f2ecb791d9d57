//! Drift between a frozen plan (a bundle's `plan.json`) and the plan made now: per VM, the
//! qemu argv and every file (path, mode, bytes), as a readable line diff, and the vCPU pinning
//! and guest memory's NUMA node, which the argv does not show.
//!
//! Both sides are the plan's JSON form (`plan::render::json`), so a bundle from an older
//! harness compares without the plan types having to deserialise.

use serde_json::Value;

/// The differences, one block per VM; empty when the plans agree on every argv and file.
pub fn diff(frozen: &Value, fresh: &Value, only_vms: &[String]) -> Vec<String> {
    let vms = |plan: &Value| -> Vec<(String, Value)> {
        let nodes = plan["nodes"].as_array().cloned().unwrap_or_default();
        nodes
            .iter()
            .flat_map(|n| {
                let node = n["name"].as_str().unwrap_or_default().to_string();
                n["vms"].as_array().cloned().unwrap_or_default().into_iter().map(move |v| (node.clone(), v))
            })
            .filter(|(_, v)| only_vms.is_empty() || only_vms.iter().any(|o| v["name"] == o.as_str()))
            .map(|(node, v)| (format!("{node}/{}", v["name"].as_str().unwrap_or_default()), v))
            .collect()
    };
    let (old, new) = (vms(frozen), vms(fresh));
    let mut out = Vec::new();
    for (key, o) in &old {
        match new.iter().find(|(k, _)| k == key) {
            None => out.push(format!("{key}: in the bundle, not planned now")),
            Some((_, n)) => out.extend(diff_vm(key, o, n)),
        }
    }
    for (key, _) in new.iter().filter(|(k, _)| !old.iter().any(|(o, _)| o == k)) {
        out.push(format!("{key}: planned now, not in the bundle"));
    }
    out
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().map(|s| s.as_str().unwrap_or_default().to_string()).collect()
}

fn diff_vm(key: &str, old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    // Where the VM runs on the host is not in its argv (taskset/chrt come after the start):
    // a chain placed from another `lscpu` pinned to other cores with "no drift". A bundle
    // from a harness that did not record a field is not drift for it.
    for (field, what) in [("pinning", "vCPU pinning"), ("numa", "NUMA node of guest memory")] {
        if let (Some(a), Some(b)) = (old.get(field), new.get(field))
            && a != b
        {
            out.push(format!("{key}: {what} {} (bundle) vs {} (now)", compact(a), compact(b)));
        }
    }
    let (a, b) = (strings(&old["argv"]), strings(&new["argv"]));
    if a != b {
        out.push(format!("--- {key} argv (bundle)\n+++ {key} argv (now)"));
        out.extend(lines_diff(&a, &b));
    }
    let files = |v: &Value| v["files"].as_array().cloned().unwrap_or_default();
    let (fa, fb) = (files(old), files(new));
    for f in &fa {
        let path = f["path"].as_str().unwrap_or_default();
        let Some(g) = fb.iter().find(|g| g["path"] == f["path"]) else {
            out.push(format!("{key}: file {path}: in the bundle, not planned now"));
            continue;
        };
        if f["mode"] != g["mode"] {
            out.push(format!("{key}: file {path}: mode {} (bundle) vs {} (now)", f["mode"], g["mode"]));
        }
        if f["content"] != g["content"] {
            let split = |v: &Value| v.as_str().unwrap_or_default().lines().map(String::from).collect::<Vec<_>>();
            out.push(format!("--- {key} {path} (bundle)\n+++ {key} {path} (now)"));
            out.extend(lines_diff(&split(&f["content"]), &split(&g["content"])));
        }
    }
    for g in fb.iter().filter(|g| !fa.iter().any(|f| f["path"] == g["path"])) {
        out.push(format!("{key}: file {}: planned now, not in the bundle", g["path"].as_str().unwrap_or_default()));
    }
    out
}

/// A plan value in one line: `{"cpus":[3,4],"sched":"rr"}`, or `none`.
fn compact(v: &Value) -> String {
    match v {
        Value::Null => "none".into(),
        v => v.to_string(),
    }
}

/// Changed lines only, `-`/`+` with their 1-based line numbers, from a longest common
/// subsequence (inputs are argv and small config files: quadratic is fine).
pub fn lines_diff(a: &[String], b: &[String]) -> Vec<String> {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("-{:>4}: {}", i + 1, a[i]));
            i += 1;
        } else {
            out.push(format!("+{:>4}: {}", j + 1, b[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn plan(kernel: &str, init: &str) -> Value {
        json!({"nodes": [{"name": "DUT1", "vms": [{"name": "DUT1_1",
            "argv": ["qemu", "-kernel", kernel, "-m", "256"],
            "files": [{"path": "/r/init.sh", "mode": "0755", "content": init}]}]}]})
    }

    #[test]
    fn same_plans_have_no_drift() {
        assert!(diff(&plan("/k1", "a\nb\n"), &plan("/k1", "a\nb\n"), &[]).is_empty());
    }

    #[test]
    fn argv_and_file_changes_are_shown_with_positions() {
        let d = diff(&plan("/boot/vmlinuz-6.1", "a\nb\n"), &plan("/boot/vmlinuz-6.9", "a\nB\n"), &[]);
        let text = d.join("\n");
        assert!(text.contains("--- DUT1/DUT1_1 argv (bundle)"), "{text}");
        assert!(text.contains("-   3: /boot/vmlinuz-6.1\n+   3: /boot/vmlinuz-6.9"), "{text}");
        assert!(text.contains("--- DUT1/DUT1_1 /r/init.sh (bundle)"), "{text}");
        assert!(text.contains("-   2: b\n+   2: B"), "{text}");
        // --vm limits the comparison.
        assert!(diff(&plan("/a", ""), &plan("/b", ""), &["DUT9_9".into()]).is_empty());
    }

    /// Only argv and files were compared: a chain re-placed from another host's `lscpu`
    /// (same CPU count, other numbering) pinned its vCPUs to other cores, and `replay` started
    /// it with "no drift".
    #[test]
    fn regression_other_vcpu_pinning_is_drift() {
        let pinned = |cpus: Value, numa: Value| {
            let mut p = plan("/k", "");
            p["nodes"][0]["vms"][0]["pinning"] = json!({"cpus": cpus, "sched": "rr"});
            p["nodes"][0]["vms"][0]["numa"] = numa;
            p
        };
        let a = pinned(json!([3, 4]), json!(0));
        assert!(diff(&a, &a.clone(), &[]).is_empty());
        let d = diff(&a, &pinned(json!([29, 30]), json!(1)), &[]);
        assert_eq!(
            d,
            [
                r#"DUT1/DUT1_1: vCPU pinning {"cpus":[3,4],"sched":"rr"} (bundle) vs {"cpus":[29,30],"sched":"rr"} (now)"#,
                "DUT1/DUT1_1: NUMA node of guest memory 0 (bundle) vs 1 (now)",
            ]
        );
        // A bundle without the fields (an older harness) is no drift for them.
        assert!(diff(&plan("/k", ""), &a, &[]).is_empty());
    }

    #[test]
    fn vms_on_one_side_only_are_named() {
        let empty = json!({"nodes": []});
        assert_eq!(diff(&plan("/k", ""), &empty, &[]), ["DUT1/DUT1_1: in the bundle, not planned now"]);
        assert_eq!(diff(&empty, &plan("/k", ""), &[]), ["DUT1/DUT1_1: planned now, not in the bundle"]);
    }
}
