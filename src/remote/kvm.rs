//! Does KVM really run a guest on this host? One probe, used by `harness check` and by `up`
//! with `accel: auto`.
//!
//! `/dev/kvm` can exist and still be unable to run anything (lab-notes §2: a PVM host without
//! vmx/svm aborts on `-cpu host`, other setups fail later). The probe boots a 64 KiB "BIOS"
//! whose reset vector is `mov al,0x2a; out 0xf4,al; hlt`: with `isa-debug-exit` QEMU exits with
//! status `(0x2a << 1) | 1 = 85` only if a vCPU really executed guest code. It takes ~70 ms and
//! uses the same `-cpu host` as a KVM plan, so a pass means our argv can start. There is no
//! equally cheap firmware-free probe on aarch64: there KVM stays unverified, and `accel: auto`
//! uses TCG (set `accel: kvm` to insist).

use crate::quote::quote;

/// QEMU's exit status when the probe guest ran.
pub const PROBE_OK: i32 = 85;

/// Commands, run as root, that boot the probe firmware and print `kvm_probe=<exit status>` and
/// `kvm_err=<QEMU's first error line>`. Killed (harness's kill signals the command's process
/// group, which `timeout --foreground` keeps QEMU in), the script still removes its directory.
pub fn root_probe(qemu: &str) -> String {
    format!(
        "t=$(mktemp -d) || exit 1; trap 'rm -rf \"$t\"; exit 143' HUP INT TERM; \
         {{ head -c 65520 /dev/zero; printf '\\260\\052\\346\\364'; head -c 12 /dev/zero; }} > \"$t/fw.bin\"; \
         timeout --foreground 10 {q} -accel kvm -cpu host -machine pc -nodefaults -no-user-config -display none -m 16 \
         -device isa-debug-exit,iobase=0xf4,iosize=4 -bios \"$t/fw.bin\" >/dev/null 2>\"$t/err\"; rc=$?; \
         echo \"kvm_probe=$rc\"; echo \"kvm_err=$(grep -v warning \"$t/err\" | head -n 1)\"; rm -rf \"$t\"; trap - HUP INT TERM\n",
        q = quote(qemu)
    )
}

/// For `up` (the script runs as root): the probe, on x86_64 hosts that have `/dev/kvm`.
pub fn probe_script(arch: &str, qemu: &str) -> String {
    if arch != "x86_64" {
        return String::new();
    }
    format!("if [ -e /dev/kvm ]; then {}fi\n", root_probe(qemu))
}

/// Did [`root_probe`] show a working KVM?
pub fn probe_ok(output: &str) -> bool {
    output.lines().any(|l| l.trim() == format!("kvm_probe={PROBE_OK}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt as _;

    /// The probe firmware really runs: under TCG (available wherever QEMU is) the same image must
    /// exit 85. This keeps the byte layout honest.
    #[test]
    fn probe_firmware_exits_85_under_tcg() {
        let script =
            root_probe("qemu-system-x86_64").replace("-accel kvm", "-accel tcg").replace("-cpu host", "-cpu max");
        let out = std::process::Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(probe_ok(&String::from_utf8_lossy(&out.stdout)), "{out:?}");
    }

    /// A probe killed mid-way (the facts command timed out or `up` was interrupted) left its
    /// `mktemp -d` directory in /tmp: `timeout` had moved QEMU to its own process group, out of
    /// reach of the kill, and the script's `rm -rf` never ran. Now the directory goes.
    #[test]
    fn regression_a_killed_probe_leaves_no_temporary_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = tmp.path().join("qemu");
        std::fs::write(&fake, "#!/bin/sh\nsleep 30\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let scratch = tmp.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(root_probe(fake.to_str().unwrap()))
            .env("TMPDIR", &scratch)
            .process_group(0)
            .spawn()
            .unwrap();
        // The probe is running once its firmware is written.
        let t = std::time::Instant::now();
        while !std::fs::read_dir(&scratch).unwrap().flatten().any(|d| d.path().join("fw.bin").exists()) {
            assert!(t.elapsed() < std::time::Duration::from_secs(5), "the probe never started");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
        child.wait().unwrap();
        assert!(t.elapsed() < std::time::Duration::from_secs(5), "the probe outlived the kill");
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0, "the probe's directory was left");
    }

    #[test]
    fn only_exit_85_counts() {
        assert!(probe_ok("x\nkvm_probe=85\nkvm_err=\n"));
        assert!(!probe_ok("kvm_probe=134\nkvm_err=qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n"));
        assert!(!probe_ok(""));
    }
}
