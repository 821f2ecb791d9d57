#!/usr/bin/env python3
"""Baselines for scripts/bench-up.sh, driven from `harness render --format json` of the same topology.

direct PLAN.json
    The physical limit on this machine: write the files locally, start every qemu in parallel
    (the lab's nodes are this host) and poll the serial logs every 10 ms for the ready marker.
csit PLAN.json KEY KNOWN_HOSTS NODE=PORT:USER...
    FD.io CSIT's way (csit-behaviour.md Appendix A): one fresh `ssh` per command, VMs one after
    another, `echo ... | sudo tee` uploads, `sudo tail -1` serial polls with 1 s sleeps, one-shot
    `(echo ...; sleep 1) | sudo socat` guest-agent calls, one `ssh` per `taskset`.

Both print the seconds from the first command until every VM is ready (and pinned, for csit),
then stop their VMs by the pids in their own pidfiles and remove their run directories.
"""
import json
import os
import shlex
import subprocess
import sys
import time

MARKER = os.environ.get("BENCH_MARKER", "HARNESS-LAB-READY")
POOL = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"


def vms(plan):
    return [(n, v) for n in plan["nodes"] for v in n["vms"]]


def pages(plan):
    return sum(v["mem_mib"] // 2 for _, v in vms(plan))


def stop_local(plan):
    for _, v in vms(plan):
        try:
            pid = int(open(v["paths"]["pidfile"]).read())
            os.kill(pid, 15)
            for _ in range(200):
                if not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z":
                    break
                time.sleep(0.05)
        except (OSError, ValueError):
            pass
    subprocess.run(["rm", "-rf", f"/run/harness/{plan['run_id']}"], check=False)


def direct(plan):
    nr = int(open(POOL).read())
    open(POOL, "w").write(str(nr + pages(plan)))
    for _, v in vms(plan):
        os.makedirs(v["paths"]["run_dir"], exist_ok=True)
        for f in v["files"]:
            with open(f["path"], "w") as fh:
                fh.write(f["content"])
            os.chmod(f["path"], int(f["mode"], 8))
    t0 = time.monotonic()
    procs = [subprocess.Popen(v["argv"]) for _, v in vms(plan)]
    for p in procs:
        p.wait()
    pending = {v["paths"]["serial_log"] for _, v in vms(plan)}
    while pending:
        for log in list(pending):
            try:
                if MARKER in open(log, errors="replace").read():
                    pending.discard(log)
            except OSError:
                pass
        time.sleep(0.01)
    dt = time.monotonic() - t0
    stop_local(plan)
    open(POOL, "w").write(str(nr))
    return dt


def csit(plan, key, known_hosts, nodes):
    def ssh(node, cmd):
        port, user = nodes[node]
        argv = ["ssh", "-i", key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={known_hosts}", "-p", port, f"{user}@127.0.0.1", cmd]
        return subprocess.run(argv, capture_output=True, text=True)

    nr = int(open(POOL).read())
    t0 = time.monotonic()
    for n, v in vms(plan):
        node, q = n["name"], shlex.quote
        ssh(node, f"sudo -n mkdir -p {q(v['paths']['run_dir'])}")
        for f in v["files"]:
            ssh(node, f"echo {q(f['content'])} | sudo -n tee {q(f['path'])}")
            if f["role"] == "init":
                ssh(node, f"sudo -n chmod +x {q(f['path'])}")
        ssh(node, "cat /sys/kernel/mm/hugepages/hugepages-2048kB/*hugepages*")
        ssh(node, f"nr=$(cat {POOL}); echo $((nr + {v['mem_mib'] // 2})) | sudo -n tee {POOL}")
        ssh(node, "sudo -n " + " ".join(q(a) for a in v["argv"]))
        while MARKER not in ssh(node, f"sudo -n tail -1 {q(v['paths']['serial_log'])}").stdout:
            time.sleep(1)
        if v["paths"].get("qga"):
            ping = '{"execute":"guest-ping"}'
            while '"return"' not in ssh(node, f"(echo {q(ping)}; sleep 1) | sudo -n socat - UNIX-CONNECT:{q(v['paths']['qga'])}").stdout:
                time.sleep(1)
        pf = q(v["paths"]["pidfile"])
        tids = ssh(node, f"grep -rwl 'CPU' /proc/$(sudo -n cat {pf})/task/*/comm | xargs dirname | sed -e 's/\\/.*\\///g' | uniq").stdout.split()
        for tid, cpu in zip(tids, (v.get("pinning") or {}).get("cpus", [])):
            ssh(node, f"sudo -n taskset -pc {cpu} {tid}")
    dt = time.monotonic() - t0
    stop_local(plan)
    open(POOL, "w").write(str(nr))
    return dt


def main():
    mode, plan = sys.argv[1], json.load(open(sys.argv[2]))
    if mode == "direct":
        print(f"{direct(plan):.3f}")
    elif mode == "csit":
        nodes = dict(a.split("=", 1) for a in sys.argv[5:])
        nodes = {k: tuple(val.split(":", 1)) for k, val in nodes.items()}
        print(f"{csit(plan, sys.argv[3], sys.argv[4], nodes):.3f}")
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
