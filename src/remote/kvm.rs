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
/// `kvm_err=<QEMU's first error line>`.
pub fn root_probe(qemu: &str) -> String {
    format!(
        "t=$(mktemp -d) || exit 1; {{ head -c 65520 /dev/zero; printf '\\260\\052\\346\\364'; head -c 12 /dev/zero; }} > \"$t/fw.bin\"; \
         timeout 10 {q} -accel kvm -cpu host -machine pc -nodefaults -no-user-config -display none -m 16 \
         -device isa-debug-exit,iobase=0xf4,iosize=4 -bios \"$t/fw.bin\" >/dev/null 2>\"$t/err\"; rc=$?; \
         echo \"kvm_probe=$rc\"; echo \"kvm_err=$(grep -v warning \"$t/err\" | head -n 1)\"; rm -rf \"$t\"\n",
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

    /// The probe firmware really runs: under TCG (available wherever QEMU is) the same image must
    /// exit 85. This keeps the byte layout honest.
    #[test]
    fn probe_firmware_exits_85_under_tcg() {
        let script =
            root_probe("qemu-system-x86_64").replace("-accel kvm", "-accel tcg").replace("-cpu host", "-cpu max");
        let out = std::process::Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(probe_ok(&String::from_utf8_lossy(&out.stdout)), "{out:?}");
    }

    #[test]
    fn only_exit_85_counts() {
        assert!(probe_ok("x\nkvm_probe=85\nkvm_err=\n"));
        assert!(!probe_ok("kvm_probe=134\nkvm_err=qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n"));
        assert!(!probe_ok(""));
    }
}
