//! Does KVM really run a guest on this host?
//!
//! `/dev/kvm` can exist and still be unable to run anything (lab-notes §2: a PVM host without
//! vmx/svm aborts on `-cpu host`, other setups fail later). The probe boots a 64 KiB "BIOS"
//! whose reset vector is `mov al,0x2a; out 0xf4,al; hlt`: with `isa-debug-exit` QEMU exits with
//! status `(0x2a << 1) | 1 = 85` only if a vCPU really executed guest code. It takes ~70 ms and
//! uses the same `-cpu host` as a KVM plan, so a pass means our argv can start.

use crate::quote::quote;

/// Shell lines that print `kvm=ok` when KVM runs guest code. Run as root (or a `kvm` group member).
pub fn probe_script(arch: &str, qemu: &str) -> String {
    if arch != "x86_64" {
        // No equally cheap firmware-free probe on aarch64: trust a writable /dev/kvm there.
        return "[ -w /dev/kvm ] && echo kvm=ok\n".into();
    }
    format!(
        r#"if [ -w /dev/kvm ]; then
  t=$(mktemp -d)
  {{ head -c 65520 /dev/zero; printf '\260\052\346\364'; head -c 12 /dev/zero; }} > "$t/probe.bin"
  timeout 10 {qemu} -accel kvm -machine pc -cpu host -nodefaults -display none -no-user-config \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 -bios "$t/probe.bin" >/dev/null 2>&1
  rc=$?; rm -rf "$t"; [ $rc -eq 85 ] && echo kvm=ok
fi
true
"#,
        qemu = quote(qemu)
    )
}

pub fn probe_ok(output: &str) -> bool {
    output.lines().any(|l| l.trim() == "kvm=ok")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe firmware really runs: under TCG (always available where QEMU is) the same
    /// image must exit 85. This keeps the byte layout honest.
    #[test]
    fn probe_firmware_exits_85_under_tcg() {
        if std::process::Command::new("qemu-system-x86_64").arg("--version").output().is_err() {
            panic!("qemu-system-x86_64 is required for this test (scripts/test.sh installs it)");
        }
        let script = probe_script("x86_64", "qemu-system-x86_64")
            .replace("-accel kvm", "-accel tcg")
            .replace("-cpu host", "-cpu max")
            .replace("[ -w /dev/kvm ]", "true");
        let out = std::process::Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(probe_ok(&String::from_utf8_lossy(&out.stdout)), "{out:?}");
    }
}
