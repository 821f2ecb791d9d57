//! Hugepage reservations between runs, so QEMUs can start outside the host lock.
//!
//! QEMU's `prealloc=on` takes its pages while it starts, after our check. Two runs that checked
//! "enough free pages" and then started QEMUs concurrently could both have counted the same free
//! pages, so the check used to hold the host lock until every QEMU of the node had its memory:
//! nodes sharing a host started one after another. Now, under the lock, a node subtracts the
//! pages other nodes have reserved *and their QEMUs have not mapped yet* (a ledger next to the
//! lock file), records its own reservation and lets go of the lock; its QEMUs start outside
//! it, concurrently with other nodes'. A reservation's mapped pages are read from its QEMUs'
//! `/proc/<pid>/smaps` (hugetlb mappings, counted at `mmap`, exactly when the kernel's
//! free−reserved count drops), and read *before* the pools, so a QEMU mapping in between makes
//! pages count twice (a check sees fewer than there are), never zero times. A reservation is
//! dropped when its run removes it, when none of its VM directories exist any more (its run
//! was stopped or cleaned up), or after [`TTL`].

use std::time::Duration;

use crate::quote::quote;

/// Written next to a VM's pidfile once its `qemu … -daemonize` has returned (by the start
/// command itself): the QEMU has mapped its memory, and no reservation needs to count it.
pub const STARTED_MARK: &str = "qemu.started";

/// The ledger: one `ID EXPIRES SIZE_KB NUMA|- PAGES PIDFILE,PIDFILE…` line per reservation
/// (root-only directory).
pub const LEDGER: &str = "/run/harness-locks/hugepages.reserved";

/// Lifetime of a reservation whose run never removed it (crashed jumpbox, lost connection).
/// Expiry times are seconds of host uptime (`/proc/uptime`: no fork, and immune to clock
/// changes; the ledger is on `/run`, which a reboot empties).
pub const TTL: Duration = Duration::from_secs(600);

/// One reservation read back from the ledger: pages reserved but not yet mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: String,
    pub size_kb: u64,
    pub numa: Option<u32>,
    pub pages: u64,
}

/// Shell that prunes the ledger (expired, no VM directory left, or every page mapped) and sets
/// `$resv` to one `resv ID SIZE_KB NUMA|- UNMAPPED_PAGES` line per remaining reservation (and
/// `$now`). Run as root under the host lock.
///
/// Everyone on the host waits while this runs, and a fork+exec took 35 ms on a 2-core host busy
/// starting QEMUs, so it forks little: shell builtins, and a reservation is dropped for good as
/// soon as every one of its VM directories holds [`STARTED_MARK`] (QEMU's `-daemonize` returns
/// only after its memory is mapped, so the kernel counts those pages now). For QEMUs still
/// starting, ONE `awk` per scan reads the pages they have faulted in from `HugetlbPages` in
/// their `/proc/PID/status` (a counter, no page-table walk); a mapped page not faulted yet
/// counts twice, never zero times. That line sums every page size, so a reservation with
/// several sizes (one line each) reads `smaps` instead. An `awk` over `smaps` for every pending
/// reservation, as before, made the lock's hold 0.1-0.8 s a scan on the busy lab.
fn scan() -> String {
    format!(
        r#"l={l}; read -r now _ < /proc/uptime; now=${{now%%.*}}; resv=; inflight=
if [ -f "$l" ]; then
  sizes=; while read -r id exp kb rest; do sizes="$sizes $id=$kb"; done < "$l"
  while read -r id exp kb numa pages files; do
    [ -n "$files" ] && [ "$exp" -gt "$now" ] 2>/dev/null || continue
    live=0; pids=; started=1
    oifs=$IFS; IFS=,
    for p in $files; do
      [ -d "${{p%/*}}" ] && live=1
      [ -e "${{p%/*}}/{mark}" ] || started=
      pid=; read -r pid 2>/dev/null < "$p" || true
      [ -n "$pid" ] && [ -r "/proc/$pid/status" ] && pids="$pids $pid"
    done
    IFS=$oifs
    [ "$live" = 1 ] && [ -z "$started" ] || continue
    if [ -z "$pids" ]; then
      echo "$id $exp $kb $numa $pages $files" >&3
      resv="$resv
resv $id $kb $numa $pages"
      continue
    fi
    mixed=0; for e in $sizes; do case $e in "$id="*) [ "${{e#*=}}" = "$kb" ] || mixed=1;; esac; done
    inflight="$inflight
$id $exp $kb $numa $pages $files $mixed$pids"
  done < "$l" 3> "$l.tmp"
  if [ -n "$inflight" ]; then
    resv="$resv
$(printf '%s\n' "$inflight" | awk -v tmp="$l.tmp" '
NF >= 8 {{
  t = 0
  for (i = 8; i <= NF; i++) {{
    if ($7 == 0) {{
      f = "/proc/" $i "/status"
      while ((getline ln < f) > 0) if (split(ln, a, " ") >= 2 && a[1] == "HugetlbPages:") t += a[2]
    }} else {{
      f = "/proc/" $i "/smaps"; s = 0
      while ((getline ln < f) > 0) {{
        split(ln, a, " ")
        if (a[1] == "Size:") s = a[2]; else if (a[1] == "KernelPageSize:" && a[2] == $3) t += s
      }}
    }}
    close(f)
  }}
  m = int(t / $3)
  if (m < $5) {{ print $1, $2, $3, $4, $5, $6 >> tmp; print "resv", $1, $3, $4, $5 - m }}
}}')"
  fi
  mv -f -- "$l.tmp" "$l"
fi
"#,
        l = quote(LEDGER),
        mark = STARTED_MARK,
    )
}

/// Script (as root, under the host lock; run it *before* reading the pools): prune the ledger
/// and print every reservation's unmapped pages (see [`parse`]).
pub fn read_script() -> String {
    format!("{}printf '%s\\n' \"$resv\"\n", scan())
}

/// Script fragment (as root, under the host lock) that prunes the ledger and leaves the
/// reservations in `$resv` (the lines [`read_script`] prints), forking as little as it can.
pub fn scan_fragment() -> String {
    scan()
}

/// Parse [`read_script`] output (other lines are ignored: it may share a command's stdout).
pub fn parse(out: &str) -> Vec<Reservation> {
    out.lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["resv", id, kb, numa, pages] => Some(Reservation {
                id: id.to_string(),
                size_kb: kb.parse().ok()?,
                numa: if *numa == "-" { None } else { Some(numa.parse().ok()?) },
                pages: pages.parse().ok()?,
            }),
            _ => None,
        })
        .collect()
}

/// Pages of `size_kb` that others hold and a mapping on `numa` (or anywhere: `None`) must leave
/// alone. Conservative: a reservation without a NUMA node may land on any node, and every
/// reservation counts against the global pool.
pub fn held_by_others(list: &[Reservation], me: &str, size_kb: u64, numa: Option<u32>) -> u64 {
    list.iter()
        .filter(|r| r.id != me && r.size_kb == size_kb)
        .filter(|r| numa.is_none() || r.numa.is_none() || r.numa == numa)
        .map(|r| r.pages)
        .sum()
}

/// Script (as root, under the host lock) recording reservation `id` for `needs`
/// (`(size_kb, numa, pages)`) of the QEMUs writing `pidfiles`, replacing one of the same id.
/// Paths cannot hold `,` or whitespace (topology validation refuses them in `run_root`).
pub fn add_script(id: &str, needs: &[(u64, Option<u32>, u64)], pidfiles: &[String]) -> String {
    let mut s = format!(
        "l={l}; id={id}; read -r exp _ < /proc/uptime; exp=$(( ${{exp%%.*}} + {ttl} )); f={f}\n: >> \"$l\"\n\
         while read -r lid rest; do [ \"$lid\" = \"$id\" ] || printf '%s %s\\n' \"$lid\" \"$rest\"; done < \"$l\" > \"$l.tmp\"\n",
        l = quote(LEDGER),
        id = quote(id),
        ttl = TTL.as_secs(),
        f = quote(&pidfiles.join(","))
    );
    for (kb, numa, pages) in needs.iter().filter(|n| n.2 > 0) {
        let numa = numa.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "printf '%s %s %s %s %s %s\\n' \"$id\" \"$exp\" {kb} {numa} {pages} \"$f\" >> \"$l.tmp\"\n"
        ));
    }
    // Replaced by a rename, never rewritten in place: a script killed mid-rewrite (Ctrl-C, a
    // timeout) left a truncated ledger, and other runs' reservations were lost with it.
    s.push_str("mv -f -- \"$l.tmp\" \"$l\"\n");
    s
}

/// Script (as root; wrap it in the host lock) removing reservation `id`.
pub fn remove_script(id: &str) -> String {
    format!(
        "l={l}; if [ -f \"$l\" ]; then awk -v id={id} '$1 != id' \"$l\" > \"$l.tmp\" && mv -f \"$l.tmp\" \"$l\"; fi\n",
        l = quote(LEDGER),
        id = quote(id)
    )
}

/// Shell fragment (as root, under the host lock) setting `$held` to the unmapped pages of
/// `size_kb` that reservations hold: what giving pages back must leave in the pool.
pub fn held_fragment(size_kb: u64) -> String {
    format!(
        "held=$( ( {scan} ) 2>/dev/null | awk -v kb={size_kb} '$1 == \"resv\" && $3 == kb {{ s += $5 }} END {{ print s + 0 }}')\n",
        scan = read_script().trim_end()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reservation whose QEMU is still starting (a live pid, no started mark) keeps what that
    /// process has not faulted in: read from its `/proc/PID/status` (one page size) or its
    /// `smaps` (several). This test process holds no hugepages, so everything stays reserved.
    /// The ledger was rewritten in place (`> "$l"`, then line by line): a script killed in
    /// between (harness's own kill on Ctrl-C or a timeout) left it truncated, and the other
    /// runs' reservations were lost, so a third run could count their pages as free. Every
    /// script now writes a temporary file and renames it.
    #[test]
    fn regression_the_ledger_is_never_truncated_in_place() {
        let scripts = [
            read_script(),
            add_script("r1", &[(2048, None, 8)], &["/run/harness/r1/DUT1_1/qemu.pid".into()]),
            remove_script("r1"),
        ];
        for s in &scripts {
            let truncating = s.replace(">> \"$l\"", "");
            assert!(!truncating.contains("> \"$l\"") && !truncating.contains(">\"$l\""), "rewritten in place: {s}");
            assert!(s.contains("mv -f") && s.contains("\"$l.tmp\" \"$l\""), "{s}");
        }
    }

    #[test]
    fn in_flight_reservations_subtract_only_faulted_pages() {
        let d = tempfile::tempdir().unwrap();
        let ledger = d.path().join("resv");
        let vm = d.path().join("vm1");
        std::fs::create_dir(&vm).unwrap();
        let pidfile = vm.join("qemu.pid");
        std::fs::write(&pidfile, format!("{}\n", std::process::id())).unwrap();
        let pf = vec![pidfile.display().to_string()];
        let sh = |s: String| {
            let s = s.replace(LEDGER, ledger.to_str().unwrap());
            let out = std::process::Command::new("sh").arg("-c").arg(s).output().unwrap();
            assert!(out.status.success(), "{out:?}");
            assert!(out.stderr.is_empty(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        sh(add_script("runE/DUT5", &[(2048, None, 30)], &pf));
        sh(add_script("runF/DUT6", &[(2048, None, 8), (1048576, Some(0), 2)], &pf));
        let list = parse(&sh(read_script()));
        let find = |id: &str, kb: u64| list.iter().find(|r| r.id == id && r.size_kb == kb).map(|r| r.pages);
        assert_eq!(find("runE/DUT5", 2048), Some(30), "{list:?}");
        assert_eq!(find("runF/DUT6", 2048), Some(8), "{list:?}");
        assert_eq!(find("runF/DUT6", 1048576), Some(2), "{list:?}");
    }

    /// The scripts against a scratch ledger: add, read back, expire, remove, forget stopped runs.
    /// (Mapped pages need a real QEMU: the scale e2e test covers them.)
    #[test]
    fn ledger_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let ledger = d.path().join("resv");
        let fix = |s: String| s.replace(LEDGER, ledger.to_str().unwrap());
        let sh = |s: String| {
            let out = std::process::Command::new("sh").arg("-c").arg(fix(s)).output().unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        let vm = d.path().join("vm1");
        std::fs::create_dir(&vm).unwrap();
        let files =
            vec![vm.join("qemu.pid").display().to_string(), d.path().join("gone/qemu.pid").display().to_string()];
        sh(add_script("runA/DUT1", &[(2048, None, 16), (1048576, Some(1), 2), (2048, Some(0), 0)], &files));
        sh(add_script("runB/DUT2", &[(2048, Some(0), 8)], &files));
        sh(add_script("runA/DUT1", &[(2048, None, 4)], &files)); // replaces runA's older lines
        sh(add_script("runC/DUT3", &[(2048, None, 50)], &files[1..])); // no VM directory: dropped
        // Every QEMU of the reservation started (the mark is there): its pages are mapped, dropped.
        let started = d.path().join("vm9");
        std::fs::create_dir(&started).unwrap();
        std::fs::write(started.join(STARTED_MARK), "").unwrap();
        sh(add_script("runD/DUT4", &[(2048, None, 70)], &[started.join("qemu.pid").display().to_string()]));
        let list = parse(&sh(read_script()));
        assert_eq!(list.len(), 2, "{list:?}");
        assert_eq!(held_by_others(&list, "me", 2048, None), 12);
        assert_eq!(held_by_others(&list, "runB/DUT2", 2048, Some(1)), 4);
        assert_eq!(held_by_others(&list, "me", 1048576, None), 0);
        assert_eq!(sh(format!("{}echo $held", held_fragment(2048))).trim(), "12");
        // An expired line disappears on the next read.
        let old = format!("old 1 2048 - 99 {}\n", files[0]);
        std::fs::write(&ledger, format!("{}{old}", std::fs::read_to_string(&ledger).unwrap())).unwrap();
        assert_eq!(sh(format!("{}echo $held", held_fragment(2048))).trim(), "12");
        assert_eq!(parse(&sh(read_script())).len(), 2);
        sh(remove_script("runA/DUT1"));
        assert_eq!(
            parse(&sh(read_script())),
            vec![Reservation { id: "runB/DUT2".into(), size_kb: 2048, numa: Some(0), pages: 8 }]
        );
    }
}
