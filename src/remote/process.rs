//! QEMU process control on a node: resolve kernel prefixes, stop our own VMs, pin vCPU threads.
//!
//! Every function here builds a shell script run as root through one SSH channel (one round
//! trip per operation) and parses its `key=value` output. The stop script only ever signals a
//! pid whose `/proc/<pid>/cmdline` contains this run's own pidfile path as an argument: never
//! `pkill qemu` (CSIT weakness 1), and a stale pidfile whose pid was reused is left alone.

use serde::{Deserialize, Serialize};

use crate::quote::quote;

/// Script printing, for each prefix, `found <path>` (an exact file wins; otherwise the newest
/// version-sorted `prefix*` match) or `missing <prefix>`.
pub fn lookup_script(prefixes: &[&str]) -> String {
    let mut s = String::new();
    for p in prefixes {
        let q = quote(p);
        s.push_str(&format!(
            "if [ -f {q} ]; then printf 'found %s\\n' {q}; else m=$(ls -1d -- {q}* 2>/dev/null | sort -V | tail -n 1); \
             if [ -n \"$m\" ]; then printf 'found %s\\n' \"$m\"; else printf 'missing %s\\n' {q}; fi; fi\n"
        ));
    }
    s
}

/// Parse [`lookup_script`] output into one `Result` per prefix, in order.
pub fn parse_lookup(out: &str) -> Vec<Result<String, String>> {
    out.lines()
        .filter_map(|l| {
            if let Some(p) = l.strip_prefix("found ") {
                Some(Ok(p.to_string()))
            } else {
                l.strip_prefix("missing ").map(|p| Err(p.to_string()))
            }
        })
        .collect()
}

/// How a VM ended up after [`stop_script`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopOutcome {
    /// It was running and is gone now (`how` says by which step).
    Stopped,
    /// Nothing was running under our pidfile (already stopped, or never started).
    NotRunning,
    /// The pidfile names a live process that is not ours (pid reused): left alone.
    NotOurs,
}

impl StopOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            StopOutcome::Stopped => "stopped",
            StopOutcome::NotRunning => "not running",
            StopOutcome::NotOurs => "not ours (left alone)",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopReport {
    pub outcome: StopOutcome,
    pub pid: Option<u32>,
    /// `quit` (QMP), `term`, `kill`.
    pub how: Option<String>,
}

/// Shell functions `ours PID PIDFILE` (the process's argv carries exactly PIDFILE as one
/// argument: QEMU started with `-pidfile PIDFILE`), `alive PID` (exists, and its main thread is
/// not a zombie or another of its threads still runs: QEMU daemonizes, so init reaps it quickly,
/// but its guest memory, hugepages included, is only freed with its last thread) and
/// `carriers PIDFILE` (every process whose argv carries PIDFILE, in `$_cr`). The one "is this pid
/// ours" check: `stop`, `status`, `ping` and readiness all use it.
pub fn ours_fns() -> &'static str {
    // `alive` and `ourpid` use only builtins, `ours` one `grep` (NUL-separated lines; a grep
    // without -z, exit 2, falls back to `tr` and a `read` loop): `down` of a node runs them for
    // every VM, and each process started costs the host ~1 ms. No helper ever has the pidfile
    // on its own argv (grep takes it on stdin): it would be a carrier itself, and a concurrent
    // stop of the same VM would kill it (and read "not ours" from its own check).
    // `carriers` greps all of /proc at once (whether grep can is probed once, on its own argv;
    // without -z or -f -, one `ours` per process). Their variables (sh has no locals) are prefixed so as not to clobber
    // a caller's.
    r#"ours() { [ -r /proc/$1/cmdline ] || return 1; printf '%s\n' "$2" | grep -qzxF -f - /proc/$1/cmdline 2>/dev/null; _ours_rc=$?; [ $_ours_rc -le 1 ] && return $_ours_rc; { tr '\0' '\n' < /proc/$1/cmdline; } 2>/dev/null | { while IFS= read -r _ours_a; do [ "$_ours_a" = "$2" ] && exit 0; done; exit 1; }; }
alive() { _alive_s=; { while read -r _alive_k _alive_v; do [ "$_alive_k" = State: ] && { _alive_s=${_alive_v%% *}; break; }; done < /proc/$1/status; } 2>/dev/null; [ -n "$_alive_s" ] || return 1; [ "$_alive_s" != Z ] && return 0; for _alive_t in /proc/$1/task/*; do [ -e "$_alive_t" ] && [ "${_alive_t##*/}" != "$1" ] && return 0; done; return 1; }
carriers() { _cr=; [ -n "$_cr_z" ] || { printf '%s\n' -f | grep -qzxF -f - /proc/self/cmdline 2>/dev/null && _cr_z=1 || _cr_z=0; }; if [ $_cr_z = 1 ]; then for _cr_f in $(printf '%s\n' "$1" | grep -lzxF -f - /proc/[0-9]*/cmdline 2>/dev/null); do _cr_p=${_cr_f#/proc/}; _cr_p=${_cr_p%/cmdline}; ours "$_cr_p" -daemonize && _cr="$_cr $_cr_p"; done; else for _cr_f in /proc/[0-9]*/cmdline; do _cr_p=${_cr_f#/proc/}; _cr_p=${_cr_p%/cmdline}; ours "$_cr_p" "$1" && ours "$_cr_p" -daemonize && _cr="$_cr $_cr_p"; done; fi; _cr=${_cr# }; }
ourpid() { p=; [ -f "$1" ] && [ ! -L "$1" ] && { read -r p < "$1"; } 2>/dev/null; case "$p" in ''|*[!0-9]*) p=;; esac; }
"#
}

/// Script printing `alive PID` when the QEMU of `pidfile` runs (our pid, our argument), else
/// `dead PID` (pidfile names a pid that is gone or not ours) or `dead -`.
pub fn probe_script(pidfile: &str) -> String {
    format!(
        "{fns}pf={pf}; ourpid \"$pf\"\nif [ -n \"$p\" ] && alive \"$p\" && ours \"$p\" \"$pf\"; then echo \"alive $p\"; else echo \"dead ${{p:--}}\"; fi\n",
        fns = ours_fns(),
        pf = quote(pidfile)
    )
}

/// Parse [`probe_script`] output: `Some(pid)` when alive, with the pid last recorded either way.
pub fn parse_probe(out: &str) -> (bool, Option<u32>) {
    let line = out.lines().rev().find(|l| l.starts_with("alive ") || l.starts_with("dead ")).unwrap_or("dead -");
    let mut it = line.split_whitespace();
    (it.next() == Some("alive"), it.next().and_then(|p| p.parse().ok()))
}

/// File in a VM's directory that tells a start still on its way not to launch QEMU: written by
/// [`stop_script`] before it looks for the VM's processes, checked by `up`'s start script right
/// before it launches QEMU.
pub const STOPPING_FENCE: &str = ".stopping";

/// Script that stops the QEMU started with `-pidfile <pidfile>`: QMP `quit`, then SIGTERM, then
/// SIGKILL, waiting for the process (all its threads: its hugepages are free only then) to exit
/// after each (bounded). Without a live QEMU behind the pidfile, the start may have been cut
/// short (Ctrl-C while QEMUs start): then every process still carrying the pidfile as an
/// argument (and `-daemonize`, as every start's launcher and QEMU do: an engineer's
/// `tail -f …/qemu.pid` is left alone) is SIGKILLed, over and over until two scans 50 ms apart find none (a process in the
/// middle of `execve` reads as having no argv for that moment). Those are the start's own shells
/// (which would launch QEMU next), QEMU before `-daemonize`'s fork and its child after it,
/// before the child has written the pidfile; none has guest state yet. A start whose request has not
/// reached the host yet carries nothing to find: the [`STOPPING_FENCE`], written first, stops
/// it from launching QEMU (and once the directory is gone, QEMU cannot write its pidfile and
/// exits). Two stops of one VM may run at once (`down` of nodes sharing a host, each cleaning
/// the other's directory): a QEMU already exiting (its main thread a zombie, or its argv gone)
/// is waited for rather than called not ours, and a directory the other stop removed is no error.
/// A QEMU still exiting when the waits end (`outcome=still_exiting`, an error for
/// [`parse_stop`]: its memory is not free yet) keeps its directory for the next stop. Otherwise the
/// VM's run directory is removed, but only if it is a real directory exactly below `run_root`
/// (symlinks resolved). Callers pass paths recomputed by [`crate::remote::layout`], never paths
/// read from a manifest. Prints `outcome=... pid=... how=...`.
pub fn stop_script(run_root: &str, vm: &crate::remote::layout::VmPaths, grace_secs: u32) -> String {
    format!(
        r#"root={root}; pidfile={pf}; qmp={qmp}; dir={dir}
{fns}{safe}gone() {{ i=0; while alive "$1" && [ $i -lt $(( $2 * 20 )) ]; do sleep 0.05; i=$((i + 1)); done; ! alive "$1"; }}
safe=; if safe_dir "$dir"; then safe=1; printf '' 2>/dev/null > "$dir/{fence}"; fi
ourpid "$pidfile"; pid=$p
# ours, exiting, other (a live pid that is not ours), or none; judged once. A QEMU exiting
# under a concurrent stop's signal loses its argv before it is a zombie, so it gets a moment
# to go; one whose main thread is a zombie while other threads still free its memory (its pid
# cannot have been reused while that zombie exists) is waited for, never called not ours.
state=none
if [ -n "$pid" ] && alive "$pid"; then
  if ours "$pid" "$pidfile"; then state=ours
  elif ! gone "$pid" 1; then if [ "$_alive_s" = Z ]; then state=exiting; else state=other; fi
  fi
fi
keep=
if [ $state = other ]; then out="outcome=not_ours pid=$pid"
elif [ $state = exiting ]; then
  if gone "$pid" 15; then out="outcome=not_running"; else out="outcome=still_exiting pid=$pid"; keep=1; fi
elif [ $state = ours ]; then
  how=; sent=
  if [ -S "$qmp" ] && [ ! -L "$qmp" ]; then
    printf '{{"execute":"qmp_capabilities"}}\n{{"execute":"quit"}}\n' | timeout 5 socat -t 1 - "UNIX-CONNECT:$qmp,shut-none" >/dev/null 2>&1
    sent=quit; gone "$pid" {grace} && how=quit
  fi
  if [ -z "$how" ] && ours "$pid" "$pidfile"; then kill -TERM "$pid" 2>/dev/null; sent=term; gone "$pid" 5 && how=term; fi
  if [ -z "$how" ] && ours "$pid" "$pidfile"; then kill -KILL "$pid" 2>/dev/null; sent=kill; gone "$pid" 5 && how=kill; fi
  # Caught exiting after a step (its argv gone with its main thread, its memory not yet
  # freed): no longer ours to signal, not gone either. Stopped only once its last thread is.
  if [ -z "$how" ]; then gone "$pid" 10 && how=${{sent:-exit}}; fi
  if [ -n "$how" ]; then out="outcome=stopped pid=$pid how=$how"; else out="outcome=still_exiting pid=$pid"; keep=1; fi
else
  killed=; n=0; quiet=0
  while [ $n -lt 40 ]; do
    carriers "$pidfile"
    if [ -z "$_cr" ]; then
      quiet=$((quiet + 1)); [ $quiet -ge 2 ] && break
      sleep 0.05; n=$((n + 1)); continue
    fi
    quiet=0
    kill -KILL $_cr 2>/dev/null; for q in $_cr; do gone "$q" 5; done
    killed=${{killed:-$_cr}}; n=$((n + 1))
  done
  if [ -n "$killed" ]; then out="outcome=stopped pid=${{killed%% *}} how=kill"; else out="outcome=not_running"; fi
fi
# A QEMU still exiting keeps its directory: its pidfile lets the next `down` wait for it again.
if [ -n "$keep" ]; then :; elif [ -n "$safe" ]; then rm -rf -- "$dir"; elif [ -e "$dir" ] || [ -L "$dir" ]; then echo "refused to remove $dir: not a directory below $root" >&2; fi
echo "$out"
"#,
        fence = STOPPING_FENCE,
        root = quote(run_root),
        pf = quote(&vm.pidfile),
        qmp = quote(&vm.qmp),
        dir = quote(&vm.dir),
        fns = ours_fns(),
        safe = crate::remote::layout::safe_dir_fn(),
        grace = grace_secs,
    )
}

pub fn parse_stop(out: &str) -> Result<StopReport, String> {
    let line =
        out.lines().rev().find(|l| l.starts_with("outcome=")).ok_or_else(|| format!("unexpected output: {out:?}"))?;
    let mut rep = StopReport { outcome: StopOutcome::NotRunning, pid: None, how: None };
    for kv in line.split_whitespace() {
        match kv.split_once('=') {
            Some(("outcome", "stopped")) => rep.outcome = StopOutcome::Stopped,
            Some(("outcome", "not_running")) => rep.outcome = StopOutcome::NotRunning,
            Some(("outcome", "not_ours")) => rep.outcome = StopOutcome::NotOurs,
            Some(("outcome", "still_exiting")) => {
                return Err(format!(
                    "QEMU {} was still exiting when the stop gave up waiting: its memory (hugepages \
                     included) is not free yet; run `harness down` again",
                    line.split_whitespace()
                        .find_map(|kv| kv.strip_prefix("pid="))
                        .map_or("?".into(), |p| format!("pid {p}"))
                ));
            }
            Some(("pid", v)) => rep.pid = v.parse().ok(),
            Some(("how", v)) if !v.is_empty() => rep.how = Some(v.to_string()),
            _ => {}
        }
    }
    Ok(rep)
}

/// Script listing `tid comm` for every thread of `pid` (fallback vCPU discovery).
pub fn threads_script(pid: u32) -> String {
    format!("for t in /proc/{pid}/task/*; do printf '%s %s\\n' \"${{t##*/}}\" \"$(cat $t/comm)\"; done")
}

/// vCPU threads from `tid comm` lines: QEMU names them `CPU <n>/KVM` or `CPU <n>/TCG` with
/// `debug-threads=on`. Sorted by vCPU index (CSIT sorted by TID string: weakness 32).
pub fn parse_vcpu_threads(out: &str) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = out
        .lines()
        .filter_map(|l| {
            let (tid, comm) = l.split_once(' ')?;
            let rest = comm.strip_prefix("CPU ")?;
            let (idx, accel) = rest.split_once('/')?;
            if !matches!(accel.trim(), "KVM" | "TCG" | "HVF" | "WHPX") {
                return None;
            }
            Some((idx.parse().ok()?, tid.parse().ok()?))
        })
        .collect();
    v.sort();
    v
}

/// One pinned vCPU thread as read back from the host after pinning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedThread {
    pub vcpu: u32,
    pub tid: u32,
    /// Affinity list as `taskset -pc` reports it (e.g. `3`).
    pub affinity: String,
    /// `SCHED_RR`, `SCHED_OTHER`, ...
    pub policy: String,
    pub priority: u32,
}

/// Script pinning each `(vcpu, tid, cpu)` with `taskset -pc` (and `chrt -r -p 1` when `rr`),
/// then reading both back. Prints `pin vcpu=.. tid=.. aff=.. policy=.. prio=..` per thread.
pub fn pin_script(threads: &[(u32, u32, u32)], rr: bool) -> String {
    // The read-back parses chrt's English words (as pin_by_name_script does).
    let mut s = String::from("set -e\nLC_ALL=C; export LC_ALL\n");
    for (vcpu, tid, cpu) in threads {
        s.push_str(&format!("taskset -pc {cpu} {tid} >/dev/null\n"));
        if rr {
            s.push_str(&format!("chrt -r -p 1 {tid}\n"));
        }
        s.push_str(&format!(
            "a=$(taskset -pc {tid} | sed 's/.*: *//'); p=$(chrt -p {tid} | sed -n 's/.*policy: *//p'); \
             r=$(chrt -p {tid} | sed -n 's/.*priority: *//p'); echo \"pin vcpu={vcpu} tid={tid} aff=$a policy=$p prio=$r\"\n"
        ));
    }
    s
}

/// Exit status of [`pin_by_name_script`] when a vCPU has no thread of that name.
pub const PIN_THREAD_MISSING: u32 = 3;

/// Script: find each vCPU's thread by the name QEMU gives it with `debug-threads=on`
/// (`CPU <n>/KVM`, `CPU <n>/TCG`: `n` is the vCPU index, so the order is right, unlike CSIT's
/// weakness 32), pin it (`taskset -pc`, whose "new affinity list" line is the read-back; and
/// `chrt -r -p 1` with `rr`) and read its policy back (`chrt -p`). One sudo, two or three
/// processes per vCPU, where discovery over QMP costs a bridge (a channel, sudo and socat) per
/// VM more. Nothing is pinned unless every vCPU's thread is found: otherwise it exits with
/// [`PIN_THREAD_MISSING`] and the caller asks QMP. `cpus[i]` is vCPU i's host CPU.
pub fn pin_by_name_script(pid: u32, cpus: &[u32], rr: bool) -> String {
    let mut s = format!(
        "LC_ALL=C; export LC_ALL; pid={pid}\n\
         tid_of() {{ for t in /proc/$pid/task/*; do read -r c 2>/dev/null < \"$t/comm\" || continue; \
         case \"$c\" in \"CPU $1/\"*) echo \"${{t##*/}}\"; return 0;; esac; done; return 1; }}\n"
    );
    for i in 0..cpus.len() {
        s.push_str(&format!("t{i}=$(tid_of {i}) || exit {PIN_THREAD_MISSING}\n"));
    }
    s.push_str("set -e\n");
    for (i, cpu) in cpus.iter().enumerate() {
        s.push_str(&format!("echo \"vcpu {i} tid $t{i}\"; taskset -pc {cpu} \"$t{i}\"\n"));
        if rr {
            s.push_str(&format!("chrt -r -p 1 \"$t{i}\"\n"));
        }
        s.push_str(&format!("chrt -p \"$t{i}\"\n"));
    }
    s
}

/// [`pin_by_name_script`]'s output: per vCPU its `vcpu N tid T` line, then what `taskset` and
/// `chrt` say of that tid (in the C locale).
pub fn parse_pins_by_name(out: &str) -> Vec<PinnedThread> {
    let mut pins: Vec<PinnedThread> = Vec::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("vcpu ") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if let [n, "tid", t] = f[..]
                && let (Ok(vcpu), Ok(tid)) = (n.parse(), t.parse())
            {
                pins.push(PinnedThread { vcpu, tid, affinity: String::new(), policy: String::new(), priority: 0 });
            }
            continue;
        }
        let Some(cur) = pins.last_mut() else { continue };
        let Some(said) = line.strip_prefix(&format!("pid {}'s ", cur.tid)) else { continue };
        if let Some(a) = said.strip_prefix("new affinity list: ") {
            cur.affinity = a.trim().to_string();
        } else if let Some(p) = said.strip_prefix("current scheduling policy: ") {
            cur.policy = p.trim().to_string();
        } else if let Some(p) = said.strip_prefix("current scheduling priority: ") {
            cur.priority = p.trim().parse().unwrap_or(0);
        }
    }
    pins
}

pub fn parse_pins(out: &str) -> Vec<PinnedThread> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("pin ")?;
            let mut t = PinnedThread { vcpu: 0, tid: 0, affinity: String::new(), policy: String::new(), priority: 0 };
            for kv in rest.split_whitespace() {
                match kv.split_once('=')? {
                    ("vcpu", v) => t.vcpu = v.parse().ok()?,
                    ("tid", v) => t.tid = v.parse().ok()?,
                    ("aff", v) => t.affinity = v.to_string(),
                    ("policy", v) => t.policy = v.to_string(),
                    ("prio", v) => t.priority = v.parse().unwrap_or(0),
                    _ => {}
                }
            }
            Some(t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> String {
        let out = std::process::Command::new("sh").arg("-c").arg(script).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn lookup_prefers_exact_then_newest_version() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("vmlinuz");
        for v in ["vmlinuz-6.1.0-9", "vmlinuz-6.1.0-10", "vmlinuz-5.10.0"] {
            std::fs::write(d.path().join(v), b"").unwrap();
        }
        let exact = d.path().join("initrd.img");
        std::fs::write(&exact, b"").unwrap();
        let none = d.path().join("nothing");
        let res = parse_lookup(&sh(&lookup_script(&[
            base.to_str().unwrap(),
            exact.to_str().unwrap(),
            none.to_str().unwrap(),
        ])));
        assert_eq!(res.len(), 3);
        assert_eq!(res[0].as_deref().unwrap(), d.path().join("vmlinuz-6.1.0-10").to_str().unwrap());
        assert_eq!(res[1].as_deref().unwrap(), exact.to_str().unwrap());
        assert!(res[2].is_err());
    }

    /// CSIT took TIDs in glob (string) order, so vCPU 0 could be pinned to a worker CPU.
    #[test]
    fn vcpu_threads_sorted_by_vcpu_index_not_tid_string() {
        let out = "100 qemu-system-x86\n1000 CPU 1/KVM\n999 CPU 0/KVM\n1001 worker\n1002 CPU 10/TCG\n";
        assert_eq!(parse_vcpu_threads(out), vec![(0, 999), (1, 1000), (10, 1002)]);
    }

    /// Against real threads named as QEMU names its vCPUs (`CPU <n>/TCG`), created in this
    /// process, started in reverse order so that TID order is not vCPU order.
    #[test]
    fn pin_by_name_script_pins_each_vcpu_thread_by_its_index_and_reads_it_back() {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::Barrier::new(3));
        let mut handles = vec![];
        for n in [1, 0] {
            let (tx, stop) = (tx.clone(), stop.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("CPU {n}/TCG"))
                    .spawn(move || {
                        tx.send((n, unsafe { libc::gettid() } as u32)).unwrap();
                        stop.wait();
                    })
                    .unwrap(),
            );
        }
        let tids: std::collections::BTreeMap<u32, u32> = (0..2).map(|_| rx.recv().unwrap()).collect();
        let cpu = 0; // every machine has CPU 0
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(pin_by_name_script(std::process::id(), &[cpu, cpu], false))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let pins = parse_pins_by_name(&text);
        // A third vCPU has no thread: nothing is pinned, and the caller is told to ask QMP.
        let missing = std::process::Command::new("sh")
            .arg("-c")
            .arg(pin_by_name_script(std::process::id(), &[cpu, cpu, cpu], false))
            .output()
            .unwrap();
        stop.wait();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(pins.len(), 2, "{text}");
        for (i, p) in pins.iter().enumerate() {
            assert_eq!((p.vcpu, p.tid), (i as u32, tids[&(i as u32)]), "{text}");
            assert_eq!((p.affinity.as_str(), p.policy.as_str(), p.priority), ("0", "SCHED_OTHER", 0), "{text}");
        }
        assert_eq!(missing.status.code(), Some(PIN_THREAD_MISSING as i32));
        assert!(missing.stdout.is_empty(), "nothing pinned: {}", String::from_utf8_lossy(&missing.stdout));
    }

    #[test]
    fn pins_by_name_parse_only_lines_about_their_own_tid() {
        let out = "vcpu 0 tid 41\npid 41's current affinity list: 0,1\npid 41's new affinity list: 3\n\
                   pid 41's current scheduling policy: SCHED_RR\npid 41's current scheduling priority: 1\n\
                   vcpu 1 tid 42\npid 41's new affinity list: 9\npid 42's new affinity list: 4\n\
                   pid 42's current scheduling policy: SCHED_OTHER\npid 42's current scheduling priority: 0\n";
        let p = parse_pins_by_name(out);
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].vcpu, p[0].tid, p[0].affinity.as_str(), p[0].policy.as_str(), p[0].priority),
            (0, 41, "3", "SCHED_RR", 1)
        );
        assert_eq!((p[1].vcpu, p[1].tid, p[1].affinity.as_str(), p[1].policy.as_str()), (1, 42, "4", "SCHED_OTHER"));
    }

    #[test]
    fn stop_report_parses() {
        let r = parse_stop("x\noutcome=stopped pid=42 how=quit\n").unwrap();
        assert_eq!((r.outcome, r.pid, r.how.as_deref()), (StopOutcome::Stopped, Some(42), Some("quit")));
        let r = parse_stop("outcome=not_ours pid=7").unwrap();
        assert_eq!(r.outcome, StopOutcome::NotOurs);
        assert!(parse_stop("garbage").is_err());
    }

    /// The stop script against a real local process: it must leave a process that is not ours
    /// alone (pid reused), and stop one that carries our pidfile argument.
    #[test]
    fn stop_script_only_kills_processes_carrying_our_pidfile() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().to_str().unwrap();
        let paths = crate::remote::layout::vm_paths(root, "vm").unwrap();
        let pidfile = std::path::PathBuf::from(&paths.pidfile);
        let vmdir = std::path::PathBuf::from(&paths.dir);
        std::fs::create_dir(&vmdir).unwrap();
        // A decoy: a live process whose pid is in our pidfile but whose cmdline is not ours.
        let mut decoy = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        std::fs::write(&pidfile, decoy.id().to_string()).unwrap();
        let script = stop_script(root, &paths, 1);
        let r = parse_stop(&sh(&script)).unwrap();
        assert_eq!(r.outcome, StopOutcome::NotOurs);
        assert!(decoy.try_wait().unwrap().is_none(), "decoy must survive");
        decoy.kill().unwrap();
        decoy.wait().unwrap();
        // Ours: argv carries the pidfile path, and the pidfile is there.
        std::fs::create_dir_all(&vmdir).unwrap();
        let mut ours = carrying(pidfile.to_str().unwrap());
        std::fs::write(&pidfile, format!("{}\n", ours.id())).unwrap();
        let r = parse_stop(&sh(&script)).unwrap();
        assert_eq!((r.outcome, r.pid, r.how.as_deref()), (StopOutcome::Stopped, Some(ours.id()), Some("term")));
        ours.wait().unwrap();
        assert!(!vmdir.exists(), "VM run dir removed");
        let r = parse_stop(&sh(&script)).unwrap();
        assert_eq!(r.outcome, StopOutcome::NotRunning, "idempotent");
    }

    /// A scratch run root holding one VM directory, and that VM's paths.
    fn scratch_vm() -> (tempfile::TempDir, crate::remote::layout::VmPaths) {
        let d = tempfile::tempdir().unwrap();
        let paths = crate::remote::layout::vm_paths(d.path().to_str().unwrap(), "vm").unwrap();
        std::fs::create_dir(&paths.dir).unwrap();
        (d, paths)
    }

    /// `sh -c 'sleep 30; : "$0"' ARG`: a process whose argv carries ARG as one argument.
    fn carrying(arg: &str) -> std::process::Child {
        std::process::Command::new("sh").arg("-c").arg("sleep 30; : \"$0\"").arg(arg).spawn().unwrap()
    }

    /// A start's launcher or QEMU: ARG (the pidfile) and `-daemonize` among its arguments.
    fn launching(arg: &str) -> std::process::Child {
        std::process::Command::new("sh")
            .arg("-c")
            .arg("sleep 30; : \"$0\" \"$1\"")
            .arg(arg)
            .arg("-daemonize")
            .spawn()
            .unwrap()
    }

    /// With no live QEMU behind the pidfile, stop SIGKILLed every process with the pidfile
    /// among its arguments, as root: an engineer's `tail -f …/qemu.pid` (or an editor on it)
    /// too. Only a start's own processes (they carry `-daemonize` as well) are killed now.
    #[test]
    fn regression_stop_leaves_a_bystander_naming_the_pidfile_alone() {
        let (d, paths) = scratch_vm();
        let root = d.path().to_str().unwrap();
        let mut bystander = carrying(&paths.pidfile);
        let mut launcher = launching(&paths.pidfile);
        let r = parse_stop(&sh(&stop_script(root, &paths, 1))).unwrap();
        let bystander_alive = bystander.try_wait().unwrap().is_none();
        let launcher_gone = launcher.try_wait().unwrap().is_some();
        for c in [&mut bystander, &mut launcher] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(bystander_alive, "a process that only names the pidfile was killed: {r:?}");
        assert!(launcher_gone, "the start's launcher survived: {r:?}");
    }

    /// Ctrl-C while a node's QEMUs were starting left QEMUs running after `up` said "everything
    /// it started was stopped": with no pidfile yet, stop took the first process carrying the
    /// pidfile (often the start's own shell), TERMed it, and the QEMU lived on. Every carrier
    /// goes now (launcher, QEMU before and after `-daemonize`'s fork); another VM's does not.
    #[test]
    fn regression_a_start_cut_short_leaves_no_process_carrying_the_pidfile() {
        let (d, paths) = scratch_vm();
        let root = d.path().to_str().unwrap();
        let mut carriers: Vec<_> = (0..3).map(|_| launching(&paths.pidfile)).collect();
        // spawn() returns once the child has exec'd: its argv is in place.
        let mut other = launching(&format!("{}.other", paths.pidfile));
        let r = parse_stop(&sh(&stop_script(root, &paths, 1))).unwrap();
        let gone: Vec<bool> = carriers.iter_mut().map(|c| c.try_wait().unwrap().is_some()).collect();
        let other_alive = other.try_wait().unwrap().is_none();
        for c in carriers.iter_mut().chain([&mut other]) {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert_eq!(gone, [true, true, true], "a process carrying the pidfile survived: {r:?}");
        assert!(other_alive, "another VM's process was killed");
        assert_eq!((r.outcome, r.how.as_deref()), (StopOutcome::Stopped, Some("kill")));
        assert!(carriers.iter().any(|c| Some(c.id()) == r.pid), "{r:?}");
        assert!(!std::path::Path::new(&paths.dir).exists(), "VM run dir removed");
    }

    /// `down` of lab nodes sharing a host ran two stops of one VM at once (a node's own, and
    /// another's cleaning the run directory once its manifests were gone). The second one's
    /// fence write into the directory the first had just removed ended its shell (a failed
    /// redirection of the special builtin `:`), so it printed no outcome: "stop script failed".
    /// A QEMU exiting under the other's signal, its argv already gone, was "not ours (left
    /// alone)". And `ours` ran grep with the pidfile on its argv: a concurrent stop's sweep took
    /// that grep for a carrier and killed it.
    #[test]
    fn regression_concurrent_stops_of_one_vm_each_report_an_outcome() {
        let (d, paths) = scratch_vm();
        let root = d.path().to_str().unwrap();
        let mut qemu = carrying(&paths.pidfile);
        std::fs::write(&paths.pidfile, format!("{}\n", qemu.id())).unwrap();
        let script = stop_script(root, &paths, 1);
        let stops: Vec<_> = (0..8)
            .map(|_| {
                std::process::Command::new("sh")
                    .arg("-c")
                    .arg(&script)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<_> = stops.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
        let _ = qemu.kill();
        qemu.wait().unwrap();
        let reports: Vec<StopReport> = outs
            .iter()
            .map(|o| parse_stop(&String::from_utf8_lossy(&o.stdout)).unwrap_or_else(|e| panic!("{e}: {o:?}")))
            .collect();
        assert!(reports.iter().any(|r| r.outcome == StopOutcome::Stopped), "{reports:?}");
        assert!(reports.iter().all(|r| r.outcome != StopOutcome::NotOurs), "{reports:?}");
        assert!(outs.iter().all(|o| o.stderr.is_empty()), "{outs:?}");
        assert!(!std::path::Path::new(&paths.dir).exists());
    }

    /// The grep half of the defect above, made likely: while one shell runs `ours` over and
    /// over, `carriers` must only ever find the real carrier, never a helper of `ours`.
    #[test]
    fn regression_no_helper_of_ours_carries_the_pidfile() {
        let d = tempfile::tempdir().unwrap();
        let pf = d.path().join("vm/qemu.pid").display().to_string();
        let mut carrier = launching(&pf);
        let c = carrier.id();
        let (q, done) = (quote(&pf), quote(&d.path().join("done").display().to_string()));
        // One shell checks `ours` 1000 times in the background; the other scans until it is done.
        let scans = sh(&format!(
            "{fns}( i=0; while [ $i -lt 1000 ]; do ours {c} {q}; i=$((i + 1)); done; : > {done} ) &\n\
             while [ ! -e {done} ]; do carriers {q}; echo \"$_cr\"; done\nwait\n",
            fns = ours_fns()
        ));
        carrier.kill().unwrap();
        carrier.wait().unwrap();
        let wrong: Vec<&str> = scans.lines().filter(|l| *l != c.to_string()).collect();
        assert!(scans.lines().count() > 10, "{scans}");
        assert!(wrong.is_empty(), "carriers other than {c}: {wrong:?}");
    }

    /// The exiting half of the defect above, made exact: the pidfile names a process whose main
    /// thread has exited (argv empty) while a thread still runs for a moment.
    #[test]
    fn regression_a_qemu_caught_exiting_is_waited_for_not_called_not_ours() {
        let (d, paths) = scratch_vm();
        let root = d.path().to_str().unwrap();
        let (mut p, pid) = main_thread_exited(1);
        std::fs::write(&paths.pidfile, format!("{pid}\n")).unwrap();
        let r = parse_stop(&sh(&stop_script(root, &paths, 1))).unwrap();
        let exited = p.try_wait().unwrap().is_some() || state(pid) == Some('Z');
        let _ = p.kill();
        p.wait().unwrap();
        assert_eq!(r.outcome, StopOutcome::NotRunning, "{r:?}");
        assert!(exited, "stop returned before the process had exited");
    }

    /// A QEMU that takes longer than the stop's wait after SIGTERM to free its memory (its main
    /// thread gone, so its argv too, another thread still tearing down) was reported `stopped`
    /// while it still ran: the SIGKILL step saw no argv and was skipped, nothing waited any
    /// longer, and the hugepage give-back after it found the pages in use.
    #[test]
    fn regression_a_qemu_exiting_past_the_term_wait_is_waited_for_before_stopped() {
        let (d, paths) = scratch_vm();
        let root = d.path().to_str().unwrap();
        // On SIGTERM: a thread lives 6 s more (past the 5 s wait after TERM), the main thread
        // exits at once. Its argv carries the pidfile, as QEMU's does.
        let mut p = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import ctypes, signal, sys, threading, time\n\
                 def term(*_):\n\
                 \tthreading.Thread(target=time.sleep, args=(6,)).start()\n\
                 \tctypes.CDLL(None).pthread_exit(None)\n\
                 signal.signal(signal.SIGTERM, term)\n\
                 print(flush=True)\n\
                 time.sleep(60)",
            )
            .arg(&paths.pidfile)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = p.id();
        // Its handler is in place once it has printed.
        std::io::BufRead::read_line(&mut std::io::BufReader::new(p.stdout.take().unwrap()), &mut String::new())
            .unwrap();
        std::fs::write(&paths.pidfile, format!("{pid}\n")).unwrap();
        let r = parse_stop(&sh(&stop_script(root, &paths, 1)));
        // Threads besides the main one (a zombie until this test waits for it).
        let threads_left = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.filter(|t| t.as_ref().is_ok_and(|t| t.file_name() != *pid.to_string())).count())
            .unwrap_or(0);
        let _ = p.kill();
        p.wait().unwrap();
        assert_eq!(threads_left, 0, "stop returned while the process still ran ({r:?})");
        let r = r.unwrap();
        assert_eq!((r.outcome, r.pid, r.how.as_deref()), (StopOutcome::Stopped, Some(pid), Some("term")));
    }

    #[test]
    fn a_qemu_still_exiting_when_the_stop_gives_up_is_an_error_naming_it() {
        let e = parse_stop("outcome=still_exiting pid=4242\n").unwrap_err();
        assert!(e.contains("pid 4242") && e.contains("still exiting"), "{e}");
        assert!(parse_stop("outcome=stopped pid=1 how=term").is_ok());
    }

    /// First letter of the `State:` of `pid`, if it exists.
    fn state(pid: u32) -> Option<char> {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("State:").map(|s| s.trim().chars().next().unwrap_or('?')))
    }

    /// A process whose main thread has exited (a zombie, its argv gone) while a second thread
    /// sleeps `secs` more (python3: ctypes releases the GIL for pthread_exit). Returns once the
    /// main thread is a zombie.
    fn main_thread_exited(secs: u32) -> (std::process::Child, u32) {
        let p = std::process::Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import ctypes, threading, time\n\
                 threading.Thread(target=time.sleep, args=({secs},)).start()\n\
                 ctypes.CDLL(None).pthread_exit(None)"
            ))
            .spawn()
            .unwrap();
        let pid = p.id();
        let t = std::time::Instant::now();
        while state(pid) != Some('Z') && t.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(state(pid), Some('Z'), "main thread never exited");
        (p, pid)
    }

    /// A QEMU whose main thread has exited (a zombie) while another of its threads still runs
    /// still holds its guest memory: stop declared it gone, and the hugepage give-back that
    /// follows found those pages still in use and left the pool raised for good.
    #[test]
    fn regression_a_qemu_is_alive_until_its_last_thread_exits() {
        let (mut p, pid) = main_thread_exited(30);
        let alive = |pid: u32| sh(&format!("{}alive {pid} && echo alive || echo dead", ours_fns()));
        let with_thread = alive(pid);
        p.kill().unwrap();
        p.wait().unwrap();
        assert_eq!(state(pid), None, "reaped");
        assert_eq!(with_thread, "alive\n", "main thread a zombie, another thread running");
        let mut z = std::process::Command::new("true").spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let zombie = alive(z.id());
        z.wait().unwrap();
        assert_eq!(zombie, "dead\n", "a zombie with no thread left");
    }

    /// The "is this pid ours" functions against real processes: a live one, a zombie, a pid
    /// that does not exist (silently), pidfiles well- and ill-formed.
    #[test]
    fn ours_alive_and_ourpid_judge_real_processes() {
        let d = tempfile::tempdir().unwrap();
        let pf = d.path().join("qemu.pid");
        let pf = pf.to_str().unwrap();
        let mut live = std::process::Command::new("sh").args(["-c", "sleep 30; : \"$0\"", pf]).spawn().unwrap();
        // Exits at once and is never waited for until the end: a zombie.
        let mut zombie = std::process::Command::new("true").spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let q = quote(pf);
        let script = format!(
            "{fns}alive {l} && echo live-alive; alive {z} || echo zombie-dead; alive 999999999 || echo none-dead\n\
             ours {l} {q} && echo live-ours; ours {l} {q}x || echo other-arg-not-ours; ours $$ {q} || echo self-not-ours\n\
             printf '%s\\n' {l} > {q}; ourpid {q}; echo \"pid=$p\"\n\
             printf '12x\\n' > {q}; ourpid {q}; echo \"bad=$p\"\n\
             printf '77' > {q}; ourpid {q}; echo \"no-newline=$p\"\n\
             rm {q}; ln -s /dev/null {q}; ourpid {q}; echo \"link=$p\"; rm {q}; ourpid {q}; echo \"missing=$p\"\n",
            fns = ours_fns(),
            l = live.id(),
            z = zombie.id(),
        );
        let out = std::process::Command::new("sh").arg("-c").arg(&script).output().unwrap();
        // A grep without -z (exit 2, as BusyBox builds without it): `ours` still answers.
        let path = crate::testsupport::path_with(
            "grep",
            "case \"$1\" in -*z*) echo \"grep: invalid option -- 'z'\" >&2; exit 2;; esac; exec /bin/grep \"$@\"",
        );
        let no_z = crate::testsupport::output(|| {
            let mut c = std::process::Command::new("sh");
            c.arg("-c")
                .arg(format!(
                    "{fns}ours {l} {q} && echo ours; ours {l} {q}x || echo not-ours",
                    fns = ours_fns(),
                    l = live.id()
                ))
                .env("PATH", &path);
            c
        });
        assert_eq!(String::from_utf8_lossy(&no_z.stdout), "ours\nnot-ours\n", "{no_z:?}");
        assert_eq!(String::from_utf8_lossy(&no_z.stderr), "");
        live.kill().unwrap();
        live.wait().unwrap();
        zombie.wait().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "no noise on stderr");
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
        assert_eq!(
            lines,
            [
                "live-alive",
                "zombie-dead",
                "none-dead",
                "live-ours",
                "other-arg-not-ours",
                "self-not-ours",
                &format!("pid={}", live.id()),
                "bad=",
                "no-newline=77",
                "link=",
                "missing="
            ]
        );
    }

    /// The QMP fallback's pin script read `chrt -p` in the host's language: with a translated
    /// util-linux and `LANG` passed through, the policy read back empty and an `rr` pin failed
    /// as "policy  wanted SCHED_RR".
    #[test]
    fn regression_the_pin_read_back_is_in_the_c_locale() {
        let path = crate::testsupport::path_with(
            "chrt",
            "if [ \"$LC_ALL\" = C ]; then echo \"pid $2's current scheduling policy: SCHED_OTHER\"; \
             echo \"pid $2's current scheduling priority: 0\"; \
             else echo \"Richtlinie von PID $2: SCHED_OTHER\"; echo \"Prioritaet von PID $2: 0\"; fi",
        );
        let mut victim = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let tid = victim.id();
        let cpu = crate::testsupport::output(|| {
            let mut c = std::process::Command::new("sh");
            c.arg("-c").arg(format!("taskset -pc {tid} | sed 's/.*: *//'")).env("PATH", &path);
            c
        });
        let cpu: u32 = String::from_utf8_lossy(&cpu.stdout).trim().split([',', '-']).next().unwrap().parse().unwrap();
        let out = crate::testsupport::output(|| {
            let mut c = std::process::Command::new("sh");
            c.arg("-c").arg(pin_script(&[(0, tid, cpu)], false)).env("PATH", &path).env("LANG", "de_DE.UTF-8");
            c
        });
        victim.kill().unwrap();
        victim.wait().unwrap();
        let pins = parse_pins(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(pins.len(), 1, "{out:?}");
        assert_eq!((pins[0].policy.as_str(), pins[0].priority), ("SCHED_OTHER", 0), "{out:?}");
    }

    #[test]
    fn pins_parse() {
        let p = parse_pins("pin vcpu=0 tid=12 aff=3 policy=SCHED_RR prio=1\nother\n");
        assert_eq!(
            p,
            vec![PinnedThread { vcpu: 0, tid: 12, affinity: "3".into(), policy: "SCHED_RR".into(), priority: 1 }]
        );
        let st =
            std::process::Command::new("sh").arg("-n").arg("-c").arg(pin_script(&[(0, 1, 2)], true)).status().unwrap();
        assert!(st.success());
    }
}
