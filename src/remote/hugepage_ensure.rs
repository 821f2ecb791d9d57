//! The hugepage step of `up` as ONE root script under the host lock: read the other runs'
//! reservations ([`reserve`]), check each of the node's needs against its pool, allocate the
//! shortfall where the node allows it (journalled: [`hugepages::allocate_script`]) and record
//! this node's reservation.
//!
//! Nodes that share a kernel take the host lock one after another, so whatever runs under it
//! serialises them. It used to be four round trips (take the lock, probe, allocate, reserve),
//! about 0.45 s a node under load: 32 nodes of the lab spent 15 s queueing for the lock. The
//! decisions are the same as before, made on the host from the same numbers; the Rust side
//! ([`parse`]) turns the script's report into changes and messages.

use crate::quote::quote;
use crate::remote::hugepages::{self, HP_FNS};
use crate::remote::reserve;
use crate::topology::PageSize;

/// One hugepage need of the node (the plan's `HugepageNeed`).
#[derive(Debug, Clone)]
pub struct Need<'a> {
    pub size: PageSize,
    pub numa: Option<u32>,
    pub pages: u64,
    pub mount: &'a str,
}

/// What to ensure, and for whom.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub needs: Vec<Need<'a>>,
    /// The node lets harness raise its pools (`hugepages: {allocate: true}`).
    pub allocate: bool,
    /// This run's reservation id for the node (other reservations are subtracted).
    pub reservation: &'a str,
    /// The node's QEMU pidfiles (a reservation stops counting what they have mapped).
    pub pidfiles: &'a [String],
    /// The node's allocation journal (see [`hugepages::allocate_script`]).
    pub journal: &'a str,
}

/// What the host found for one need before deciding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Pages a new mapping can get from the pool (`None`: no such pool on the host).
    pub available: Option<u64>,
    /// Pages other runs have reserved and not mapped yet.
    pub others: u64,
    /// Filesystem type at the need's mount (`hugetlbfs`, `tmpfs`, `missing`, ...).
    pub fstype: String,
}

/// The script's report, need by need (indices into [`Request::needs`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub found: Vec<(usize, Found)>,
    /// Allocations tried: `Ok(the allocation's "added=…" line)` or `Err(its message)`.
    pub allocations: Vec<(usize, Result<String, String>)>,
    /// The reservation was recorded (every need was met).
    pub reserved: bool,
}

/// The script (run as root, wrapped in [`crate::remote::lock::locked_script`]).
pub fn script(req: &Request) -> String {
    let mut s = format!("{HP_FNS}{}bad=0\n", reserve::scan_fragment());
    for (i, n) in req.needs.iter().enumerate() {
        s.push_str(&need_script(i, n, req));
    }
    let needs: Vec<_> = req.needs.iter().map(|n| (n.size.kib(), n.numa, n.pages)).collect();
    s.push_str(&format!(
        "if [ \"$bad\" = 0 ]; then\n{}echo reserved\nfi\n",
        reserve::add_script(req.reservation, &needs, req.pidfiles)
    ));
    s
}

/// Check need `i` (and allocate it when allowed and short), printing `need I AVAIL|none OTHERS
/// FSTYPE` and `alloc I ok|fail TEXT`. A need after a failed one is only reported.
fn need_script(i: usize, n: &Need, req: &Request) -> String {
    let kb = n.size.kib();
    let numa = n.numa.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
    let global = format!("/sys/kernel/mm/hugepages/hugepages-{kb}kB");
    let (dir, avail) = match n.numa {
        None => (
            global.clone(),
            "free_resv \"$d\" \"$d\"; hp_read surp \"$d/surplus_hugepages\"; \
             hp_read over \"$d/nr_overcommit_hugepages\"; \
             avail=$(( (FREE > RESV ? FREE - RESV : 0) + (over > surp ? over - surp : 0) ))"
                .to_string(),
        ),
        // Reservations are global: any of them may take this node's free pages.
        Some(node) => (
            format!("/sys/devices/system/node/node{node}/hugepages/hugepages-{kb}kB"),
            format!("free_resv \"$d\" {g}; avail=$(( FREE > RESV ? FREE - RESV : 0 ))", g = quote(&global)),
        ),
    };
    let act = if req.allocate {
        allocation(i, &hugepages::allocate_script(n.size, "$hp_need", n.mount, n.numa, req.journal))
    } else {
        "  bad=1\n".to_string()
    };
    format!(
        r#"others=0
while read -r t rid rkb rnuma rpages; do
  [ "$t" = resv ] && [ "$rid" != {me} ] && [ "$rkb" = {kb} ] || continue
  [ {numa} = - ] || [ "$rnuma" = - ] || [ "$rnuma" = {numa} ] || continue
  others=$(( others + rpages ))
done <<EOF
$resv
EOF
d={dir}
if [ -d "$d" ]; then {avail}; else avail=none; fi
mnt_type {mnt} {kb}; fst=$FST
echo "need {i} $avail $others $fst"
hp_need=$(( {pages} + others ))
if [ "$bad" = 0 ] && {{ [ "$avail" = none ] || [ "$hp_need" -gt "$avail" ] || [ "$fst" != hugetlbfs ]; }}; then
{act}fi
"#,
        me = quote(req.reservation),
        dir = quote(&dir),
        mnt = quote(n.mount),
        pages = n.pages,
    )
}

/// Run `alloc` (a `set -e` script) in a command substitution and print `alloc I ok added=...`
/// or `alloc I fail MESSAGE`. Not `if o=$(...)`: a shell ignores `set -e` in an `if` condition,
/// and bash (`/bin/sh` on RHEL) carries that into the substitution, so a failed `mount` or
/// sysfs write went on to report `ok`; dash did not, which is why Debian never showed it.
fn allocation(i: usize, alloc: &str) -> String {
    format!(
        "  o=$( {{\n{alloc}}} 2>&1 ); rc=$?\n  if [ $rc = 0 ]; then\n    \
         while read -r l; do case $l in added=*) echo \"alloc {i} ok $l\";; esac; done <<EOF\n$o\nEOF\n  \
         else\n    msg=; while read -r l; do msg=\"$msg $l\"; done <<EOF\n$o\nEOF\n    \
         echo \"alloc {i} fail $msg\"; bad=1\n  fi\n"
    )
}

/// Parse the script's output (other lines are ignored).
pub fn parse(out: &str) -> Result<Report, String> {
    let mut r = Report::default();
    for line in out.lines() {
        let f: Vec<&str> = line.splitn(5, ' ').collect();
        let idx = |s: &str| s.parse::<usize>().map_err(|_| format!("bad hugepage report line: {line}"));
        match f.as_slice() {
            ["need", i, avail, others, fstype] => {
                let available = match *avail {
                    "none" => None,
                    a => Some(a.parse().map_err(|_| format!("bad hugepage report line: {line}"))?),
                };
                let others = others.parse().map_err(|_| format!("bad hugepage report line: {line}"))?;
                r.found.push((idx(i)?, Found { available, others, fstype: fstype.trim().to_string() }));
            }
            ["alloc", i, "ok", rest @ ..] => r.allocations.push((idx(i)?, Ok(rest.join(" ")))),
            ["alloc", i, "fail", rest @ ..] => r.allocations.push((idx(i)?, Err(rest.join(" ").trim().to_string()))),
            ["reserved"] => r.reserved = true,
            _ => {}
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under bash as `/bin/sh`, an allocation whose `mount` or sysfs write failed reported
    /// `ok`: `set -e` inside `if o=$(...)` is ignored there. Both shells must say `fail`.
    #[test]
    fn regression_a_failed_allocation_step_fails_under_bash_too() {
        let step =
            allocation(0, "set -e\necho 'mount: permission denied' >&2; false\necho added=4 mounted=1 map_was=-\n");
        let ok = allocation(1, "set -e\necho added=4 mounted=0 map_was=-\n");
        for shell in [&["dash", "-c"][..], &["bash", "--posix", "-c"], &["bash", "-c"]] {
            let out = std::process::Command::new(shell[0])
                .args(&shell[1..])
                .arg(format!("bad=0\nif [ \"$bad\" = 0 ]; then\n{step}fi\necho bad=$bad\n{ok}"))
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                text, "alloc 0 fail  mount: permission denied\nbad=1\nalloc 1 ok added=4 mounted=0 map_was=-\n",
                "{shell:?}"
            );
        }
    }

    fn req<'a>(needs: Vec<Need<'a>>, allocate: bool, pidfiles: &'a [String]) -> Request<'a> {
        Request { needs, allocate, reservation: "r1/DUT1", pidfiles, journal: "/run/harness/r1/hugepages-DUT1.journal" }
    }

    #[test]
    fn script_is_valid_shell() {
        let pf = vec!["/run/harness/r1/DUT1_1/qemu.pid".to_string()];
        for allocate in [false, true] {
            let needs = vec![
                Need { size: PageSize::M2, numa: None, pages: 64, mount: "/dev/hugepages" },
                Need { size: PageSize::G1, numa: Some(1), pages: 2, mount: "/mnt/it's" },
            ];
            let s = script(&req(needs, allocate, &pf));
            let st = std::process::Command::new("sh").arg("-n").arg("-c").arg(&s).status().unwrap();
            assert!(st.success(), "not valid sh:\n{s}");
        }
    }

    #[test]
    fn report_parses_need_by_need() {
        let out = "resv x\nneed 0 12 4 hugetlbfs\nalloc 0 ok added=56 mounted=0 map_was=-\n\
                   need 1 none 0 missing\nalloc 1 fail no 1G hugepage pool on this host \nreserved\n";
        let r = parse(out).unwrap();
        assert_eq!(r.found[0], (0, Found { available: Some(12), others: 4, fstype: "hugetlbfs".into() }));
        assert_eq!(r.found[1].1.available, None);
        assert_eq!(r.allocations[0], (0, Ok("added=56 mounted=0 map_was=-".into())));
        assert_eq!(r.allocations[1], (1, Err("no 1G hugepage pool on this host".into())));
        assert!(r.reserved);
        assert!(parse("need x 1 2 hugetlbfs").is_err());
    }
}
