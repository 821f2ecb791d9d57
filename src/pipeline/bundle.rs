//! The reproduction record of a run and its bundle.
//!
//! Every `up` keeps, in its local run directory (`<state>/runs/<id>/`), everything needed to
//! plan the run again: the topology exactly as read (`topology.yaml`, bytes), the `--templates`
//! overlay files it used (`templates/`), the host facts (`facts/`), the plan that ran
//! (`plan.json`) and `meta.json` (harness version and git revision, command line, paths).
//! `harness bundle` packs that directory into a `.tar.gz`; `harness replay` unpacks it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}: not a harness bundle (no meta.json)")]
    NotABundle(PathBuf),
    #[error("{path}: unreadable meta.json: {source}")]
    Meta { path: PathBuf, source: serde_json::Error },
    #[error("{0}: refusing an entry outside the bundle")]
    UnsafeEntry(String),
    #[error("{0}: refusing it: the bundle unpacks to more than {MAX_UNPACKED_BYTES} bytes or {MAX_ENTRIES} entries")]
    TooLarge(PathBuf),
    #[error("{path}: not a readable harness bundle (gzip'd tar): {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("{path}: the bundle's {member} is missing or unreadable: {message}")]
    Member { path: PathBuf, member: &'static str, message: String },
}

impl BundleError {
    /// The bundle given is not a good one (exit 2: invalid input), as opposed to a local file
    /// that could not be written.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, BundleError::Io { .. })
    }
}

/// `member` of the unpacked bundle at `root`, as text.
pub fn read_member(root: &Path, member: &'static str) -> Result<String, BundleError> {
    std::fs::read_to_string(root.join(member)).map_err(|e| BundleError::Member {
        path: root.to_path_buf(),
        member,
        message: e.to_string(),
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io { path: path.to_path_buf(), source }
}

/// `meta.json`: who planned the run, from what.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub format: u32,
    pub run_id: String,
    pub harness_version: String,
    pub git_revision: String,
    /// The command line, word by word.
    pub command_line: Vec<String>,
    /// The topology's absolute path on the jumpbox that ran it (relative paths inside the
    /// topology resolve against its directory).
    pub topology_path: PathBuf,
    /// The `--templates` directory, if one was given (its files are under `templates/`).
    pub templates_dir: Option<PathBuf>,
    /// `--vm` selection.
    pub only_vms: Vec<String>,
    pub created_unix: u64,
}

impl Meta {
    pub fn new(run_id: &str, topology_path: &Path, templates_dir: Option<&Path>, only_vms: &[String]) -> Meta {
        Meta {
            format: FORMAT,
            run_id: run_id.into(),
            harness_version: env!("CARGO_PKG_VERSION").into(),
            git_revision: env!("HARNESS_GIT_REV").into(),
            command_line: std::env::args().collect(),
            topology_path: topology_path.into(),
            templates_dir: templates_dir.map(Path::to_path_buf),
            only_vms: only_vms.to_vec(),
            created_unix: crate::run::now_unix(),
        }
    }
}

/// What a secret of the topology reads as in a record or bundle (as it does in any output).
pub const REDACTED: &str = "<redacted>";

/// Node keys whose values are secrets (CSIT's plaintext `password:` and inline `priv_key:`).
const SECRET_KEYS: [&str; 2] = ["password", "priv_key"];

/// What the record keeps instead of a topology it cannot show without its secrets.
const WITHHELD: &[u8] =
    b"# topology withheld by harness: it may hold node passwords or private keys that could not be redacted\n";

/// The topology as kept for reproduction: unchanged if no node has a secret in it; otherwise
/// re-serialised with each `password:` and `priv_key:` value replaced by [`REDACTED`] (comments
/// are lost then). A bundle is a CI artifact: a plaintext password in it would be published
/// with it. `replay` of such a bundle needs the nodes from `--topology`. Fails closed: text
/// that still holds a secret as the loader reads it (or that it cannot read) is [`WITHHELD`].
pub fn redact_secrets(topology: &[u8]) -> Vec<u8> {
    let kept = serde_redacted(topology);
    // serde_yaml refuses some files the loader accepts (nesting past its 128 levels), and then
    // redacted nothing: the loader's own parser judges what is kept.
    let clean = std::str::from_utf8(&kept)
        .ok()
        .and_then(|text| crate::topology::nodes_have_other_values(text, &SECRET_KEYS, REDACTED));
    if clean == Some(false) { kept } else { WITHHELD.to_vec() }
}

/// `topology` with its nodes' secrets replaced by serde_yaml, or unchanged when serde_yaml finds
/// none (or cannot read it).
fn serde_redacted(topology: &[u8]) -> Vec<u8> {
    let Ok(mut doc) = serde_yaml::from_slice::<serde_yaml::Value>(topology) else { return topology.to_vec() };
    let mut redacted = false;
    if let Some(nodes) = doc.get_mut("nodes").and_then(serde_yaml::Value::as_mapping_mut) {
        for node in nodes.values_mut().filter_map(serde_yaml::Value::as_mapping_mut) {
            for key in SECRET_KEYS {
                if let Some(v) = node.get_mut(key) {
                    *v = serde_yaml::Value::String(REDACTED.into());
                    redacted = true;
                }
            }
        }
    }
    // A secret under a YAML anchor comes back wherever its alias is (`metadata: {x: *pw}`):
    // serde_yaml expands it, and only the node's own key was redacted.
    if redacted && has_alias(topology) {
        return WITHHELD.to_vec();
    }
    match redacted.then(|| serde_yaml::to_string(&doc)).and_then(Result::ok) {
        Some(text) => format!("# node passwords and private keys redacted by harness\n{text}").into_bytes(),
        None if redacted => WITHHELD.to_vec(),
        None => topology.to_vec(),
    }
}

/// Whether YAML text uses an alias (`*name` where a value starts): a plain scalar cannot start
/// with `*`, so quoted text and `a*b` do not count. Errs on the side of yes.
fn has_alias(text: &[u8]) -> bool {
    String::from_utf8_lossy(text).lines().any(|l| {
        let b = l.as_bytes();
        (0..b.len()).any(|i| {
            b[i] == b'*'
                && b.get(i + 1).is_some_and(|c| c.is_ascii_alphanumeric() || b"_-".contains(c))
                && b[..i].iter().rev().find(|c| !c.is_ascii_whitespace()).is_none_or(|c| b":-[,{?".contains(c))
        })
    })
}

/// Whether a recorded topology is the [`WITHHELD`] placeholder (`replay` will need
/// `--topology`).
pub fn is_withheld(recorded: &[u8]) -> bool {
    recorded == WITHHELD
}

/// Write the reproduction record into `run_dir`: meta, topology bytes (secrets redacted, owner
/// only), template overlays. What an earlier run of the same id left there (a failed run's
/// record is kept) is replaced whole: its overlays and facts must not pass for this run's.
pub fn record(run_dir: &Path, meta: &Meta, topology: &[u8]) -> Result<(), BundleError> {
    match std::fs::remove_dir_all(run_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(run_dir)(e)),
        _ => {}
    }
    std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
    let p = run_dir.join("topology.yaml");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&p).map_err(io(&p))?;
        f.write_all(&redact_secrets(topology)).map_err(io(&p))?;
    }
    if let Some(dir) = &meta.templates_dir {
        let dest = run_dir.join("templates");
        std::fs::create_dir_all(&dest).map_err(io(&dest))?;
        // Templates are looked up by file name in that one directory: no recursion needed.
        // A symlink counts as the file it points to, as it does when the templates are read
        // (`DirEntry::file_type` does not follow it: symlinked overlays went unrecorded).
        for e in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
            if std::fs::metadata(e.path()).is_ok_and(|m| m.is_file()) {
                std::fs::copy(e.path(), dest.join(e.file_name())).map_err(io(&e.path()))?;
            }
        }
    }
    let p = run_dir.join("meta.json");
    crate::run::record::write_atomically(&p, &serde_json::to_vec_pretty(meta).expect("serialisable")).map_err(io(&p))
}

pub fn read_meta(dir: &Path) -> Result<Meta, BundleError> {
    let p = dir.join("meta.json");
    let bytes = std::fs::read(&p).map_err(|_| BundleError::NotABundle(dir.to_path_buf()))?;
    serde_json::from_slice(&bytes).map_err(|source| BundleError::Meta { path: p, source })
}

/// Pack `run_dir` into `out` (gzip'd tar, entries under `<run_id>/`). Packed into a temporary
/// file beside `out`, renamed over it once complete and removed on failure: a failed pack
/// leaves neither a truncated bundle nor a damaged earlier one at `out`.
pub fn pack(run_dir: &Path, out: &Path) -> Result<(), BundleError> {
    let meta = read_meta(run_dir)?;
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = out.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let packed = pack_to(&meta.run_id, run_dir, &tmp, out).and_then(|()| std::fs::rename(&tmp, out).map_err(io(out)));
    if packed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    packed
}

/// The tarball of `run_dir` written to `tmp`; errors name `out`, the file the user asked for.
fn pack_to(run_id: &str, run_dir: &Path, tmp: &Path, out: &Path) -> Result<(), BundleError> {
    let file = std::fs::File::create(tmp).map_err(io(out))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.append_dir_all(run_id, run_dir).map_err(io(run_dir))?;
    let gz = tar.into_inner().map_err(io(out))?;
    gz.finish().map_err(io(out))?;
    Ok(())
}

/// Most a bundle may unpack to: a run record is kilobytes to a few megabytes (serial logs are
/// artifacts, not part of it); a gzip bomb handed to `replay` must not fill the disk.
pub const MAX_UNPACKED_BYTES: u64 = 256 << 20;
/// Most entries a bundle may hold.
pub const MAX_ENTRIES: usize = 10_000;

/// Unpack `bundle` into `dest`; returns the directory holding `meta.json`.
pub fn unpack(bundle: &Path, dest: &Path) -> Result<PathBuf, BundleError> {
    let file = std::fs::File::open(bundle).map_err(io(bundle))?;
    let bad = |source| BundleError::Unreadable { path: bundle.to_path_buf(), source };
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let (mut bytes, mut entries) = (0u64, 0usize);
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        // Checked before anything is written: the header says how much is coming.
        bytes = bytes.saturating_add(entry.header().size().map_err(bad)?);
        entries += 1;
        if bytes > MAX_UNPACKED_BYTES || entries > MAX_ENTRIES {
            return Err(BundleError::TooLarge(bundle.to_path_buf()));
        }
        let path = entry.path().map_err(bad)?.into_owned();
        // `unpack_in` refuses `..` and absolute paths itself; links could still point out.
        if entry.header().entry_type().is_symlink() || entry.header().entry_type().is_hard_link() {
            return Err(BundleError::UnsafeEntry(path.display().to_string()));
        }
        if !entry.unpack_in(dest).map_err(bad)? {
            return Err(BundleError::UnsafeEntry(path.display().to_string()));
        }
    }
    let root = std::fs::read_dir(dest)
        .map_err(io(dest))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("meta.json").is_file())
        .ok_or_else(|| BundleError::NotABundle(bundle.to_path_buf()))?;
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `unpack` took whatever a bundle held: a small gzip bomb (gigabytes of zeros) given to
    /// `replay` filled the disk. Sizes come from the headers and are checked first.
    #[test]
    fn regression_a_bundle_that_unpacks_too_large_is_refused_before_writing() {
        let d = tempfile::tempdir().unwrap();
        let bomb = d.path().join("bomb.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(std::fs::File::create(&bomb).unwrap(), flate2::Compression::fast());
            let mut tar = tar::Builder::new(gz);
            let mut h = tar::Header::new_gnu();
            let size = MAX_UNPACKED_BYTES + 1;
            h.set_size(size);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, "r1/plan.json", std::io::Read::take(std::io::repeat(0), size)).unwrap();
            tar.into_inner().unwrap().finish().unwrap();
        }
        assert!(std::fs::metadata(&bomb).unwrap().len() < 2 << 20, "the bomb is small");
        let dest = d.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        let e = unpack(&bomb, &dest).unwrap_err();
        assert!(matches!(e, BundleError::TooLarge(_)), "{e}");
        assert!(!dest.join("r1/plan.json").exists(), "written before the check");
    }

    /// `pack` wrote the bundle in place and left it when it failed: in place of the good one an
    /// earlier `harness bundle` had written, a file that looked like a bundle (tar and gzip
    /// finish the stream when dropped) but lacked what came after the failure.
    #[test]
    fn regression_a_failed_pack_leaves_no_bundle_and_keeps_the_previous_one() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("b.tar.gz");
        let earlier = d.path().join("runs/r0");
        record(&earlier, &Meta::new("r0", Path::new("/t/lab.yaml"), None, &[]), b"nodes: {}\n").unwrap();
        pack(&earlier, &out).unwrap();
        let good = std::fs::read(&out).unwrap();
        let run = d.path().join("runs/r1");
        record(&run, &Meta::new("r1", Path::new("/t/lab.yaml"), None, &[]), b"nodes: {}\n").unwrap();
        // tar cannot archive a socket: the pack fails part-way.
        let _sock = std::os::unix::net::UnixListener::bind(run.join("agent.sock")).unwrap();
        let e = pack(&run, &out).unwrap_err();
        assert!(e.to_string().contains("socket can not be archived"), "{e}");
        assert!(std::fs::read(&out).unwrap() == good, "the previous bundle is kept as it was");
        std::fs::remove_file(&out).unwrap();
        assert!(pack(&run, &out).is_err());
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["runs"], "no bundle and no temporary file left");
    }

    #[test]
    fn record_pack_unpack_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let tpl = d.path().join("tpl");
        std::fs::create_dir_all(&tpl).unwrap();
        std::fs::write(tpl.join("init.sh"), "#!/bin/sh\n").unwrap();
        let run = d.path().join("runs/r1");
        let meta = Meta::new("r1", Path::new("/t/lab.yaml"), Some(&tpl), &[]);
        record(&run, &meta, b"nodes: {}\n# exact bytes\t\n").unwrap();
        std::fs::create_dir_all(run.join("facts")).unwrap();
        std::fs::write(run.join("facts/DUT1.json"), "{}").unwrap();
        let out = d.path().join("b.tar.gz");
        pack(&run, &out).unwrap();
        let dest = d.path().join("x");
        std::fs::create_dir_all(&dest).unwrap();
        let root = unpack(&out, &dest).unwrap();
        assert_eq!(read_meta(&root).unwrap(), meta);
        assert_eq!(std::fs::read(root.join("topology.yaml")).unwrap(), b"nodes: {}\n# exact bytes\t\n");
        assert_eq!(std::fs::read_to_string(root.join("templates/init.sh")).unwrap(), "#!/bin/sh\n");
        assert!(root.join("facts/DUT1.json").is_file());
        assert!(!meta.git_revision.is_empty());
    }

    /// A CSIT topology's plaintext `password:` and inline `priv_key:` went into every run
    /// record and bundle verbatim (the bundle is a published CI artifact), world-readable.
    #[test]
    fn regression_a_bundle_carries_no_password_or_private_key() {
        let d = tempfile::tempdir().unwrap();
        let topo = "nodes:\n  DUT1:\n    type: DUT\n    host: 10.0.0.1\n    password: hunter2\n    \
                    priv_key: |\n      -----BEGIN OPENSSH PRIVATE KEY-----\n      c2VjcmV0a2V5\n      \
                    -----END OPENSSH PRIVATE KEY-----\n  DUT2: {type: DUT, host: 10.0.0.2, password: 'flow secret'}\n";
        let run = d.path().join("runs/r1");
        record(&run, &Meta::new("r1", Path::new("/t/lab.yaml"), None, &[]), topo.as_bytes()).unwrap();
        let out = d.path().join("b.tar.gz");
        pack(&run, &out).unwrap();
        let mut tarball = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(std::fs::File::open(&out).unwrap()), &mut tarball)
            .unwrap();
        let tar_text = String::from_utf8_lossy(&tarball);
        for secret in ["hunter2", "c2VjcmV0a2V5", "flow secret", "PRIVATE KEY"] {
            assert!(!tar_text.contains(secret), "{secret} in the bundle");
        }
        let kept = std::fs::read_to_string(run.join("topology.yaml")).unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(&kept).unwrap();
        assert_eq!(doc["nodes"]["DUT1"]["password"], REDACTED);
        assert_eq!(doc["nodes"]["DUT1"]["priv_key"], REDACTED);
        assert_eq!(doc["nodes"]["DUT2"]["host"], "10.0.0.2");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(run.join("topology.yaml")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // Nothing secret: the exact bytes, comments included.
        let plain = b"nodes:\n  DUT1: {type: DUT, host: h, password_env: PW}  # note\n";
        assert_eq!(redact_secrets(plain), plain.to_vec());
    }

    /// A password under a YAML anchor, used again through its alias elsewhere
    /// (`metadata: {note: *pw}`), was copied there by serde_yaml's expansion, and only the
    /// node's own `password:` was redacted: the bundle published it.
    #[test]
    fn regression_a_password_reused_through_a_yaml_alias_is_withheld() {
        // The anchor comes first in the file, the alias after it.
        let topo =
            "nodes:\n  DUT1:\n    type: DUT\n    host: 10.0.0.2\n    password: &pw hunter2\nmetadata: {note: *pw}\n";
        let kept = redact_secrets(topo.as_bytes());
        assert!(!String::from_utf8_lossy(&kept).contains("hunter2"), "{}", String::from_utf8_lossy(&kept));
        assert!(is_withheld(&kept));
        // No alias: redacted, kept; a `*` in a quoted value or a glob is no alias.
        let plain =
            "metadata: {glob: \"*dut\", x: a*b}\nnodes:\n  DUT1:\n    type: DUT\n    host: h\n    password: hunter2\n";
        let kept = redact_secrets(plain.as_bytes());
        assert!(!is_withheld(&kept) && !String::from_utf8_lossy(&kept).contains("hunter2"));
        assert!(has_alias(b"a: *x") && has_alias(b"- *x") && has_alias(b"[1, *x]"));
        assert!(!has_alias(b"a: \"*x\"") && !has_alias(b"a: b*c") && !has_alias(b"# *note"));
    }

    /// A topology the loader reads but serde_yaml refuses (metadata nested past serde_yaml's 128
    /// levels; the loader allows 256) was kept byte for byte, plaintext `password:` included,
    /// and published by `harness bundle`: redaction failed open.
    #[test]
    fn regression_a_topology_serde_yaml_cannot_parse_keeps_no_password() {
        let deep = format!("{}x{}", "[".repeat(130), "]".repeat(130));
        let topo = format!(
            "metadata: {{note: {deep}}}\nnodes:\n  DUT1:\n    type: DUT\n    host: 10.0.0.2\n    password: hunter2\n"
        );
        assert!(serde_yaml::from_str::<serde_yaml::Value>(&topo).is_err(), "the case needs serde_yaml to refuse it");
        crate::topology::load_str_with(&topo, Path::new("t.yaml"), &|_| false).expect("the loader reads it");
        let kept = redact_secrets(topo.as_bytes());
        assert_eq!(kept, WITHHELD);
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("runs/r1");
        record(&run, &Meta::new("r1", Path::new("/t/lab.yaml"), None, &[]), topo.as_bytes()).unwrap();
        assert!(!std::fs::read_to_string(run.join("topology.yaml")).unwrap().contains("hunter2"));
        // A private key too; and the same depth without a secret is kept exactly.
        let key = topo.replace("password: hunter2", "priv_key: |\n      c2VjcmV0a2V5");
        assert_eq!(redact_secrets(key.as_bytes()), WITHHELD);
        let plain = topo.replace("password: hunter2", "password_env: PW");
        assert_eq!(redact_secrets(plain.as_bytes()), plain.as_bytes());
        // What neither parser reads cannot be judged: withheld.
        let broken = b"nodes: {DUT1: {password: hunter2}\n";
        assert_eq!(redact_secrets(broken), WITHHELD);
    }

    /// A `--templates` overlay whose files are symlinks (one shared template tree, linked
    /// into each lab's overlay) was recorded empty: `replay` then planned with the embedded
    /// templates, and showed no drift for what had really run.
    #[test]
    fn regression_symlinked_template_overlays_are_recorded() {
        let d = tempfile::tempdir().unwrap();
        let (shared, tpl) = (d.path().join("shared"), d.path().join("tpl"));
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::create_dir_all(tpl.join("subdir")).unwrap();
        std::fs::write(shared.join("init.sh"), "#!/bin/sh\necho shared\n").unwrap();
        std::os::unix::fs::symlink(shared.join("init.sh"), tpl.join("init.sh")).unwrap();
        std::os::unix::fs::symlink(d.path().join("nowhere"), tpl.join("dangling.j2")).unwrap();
        let run = d.path().join("runs/r1");
        record(&run, &Meta::new("r1", Path::new("/t/lab.yaml"), Some(&tpl), &[]), b"nodes: {}\n").unwrap();
        let copy = run.join("templates/init.sh");
        assert!(!copy.is_symlink(), "the overlay's content is recorded, not a link to it");
        assert_eq!(std::fs::read_to_string(copy).unwrap(), "#!/bin/sh\necho shared\n");
        assert!(!run.join("templates/dangling.j2").exists() && !run.join("templates/subdir").exists());
    }

    /// A run id used again after a failed run (whose record is kept for `bundle`) recorded
    /// into the old directory: the earlier overlays and facts stayed in, and a bundle of the new
    /// run carried templates and facts it never used.
    #[test]
    fn regression_a_reused_run_id_does_not_mix_record_files() {
        let d = tempfile::tempdir().unwrap();
        let (tpl1, tpl2) = (d.path().join("tpl1"), d.path().join("tpl2"));
        for (t, f) in [(&tpl1, "old.j2"), (&tpl2, "new.j2")] {
            std::fs::create_dir_all(t).unwrap();
            std::fs::write(t.join(f), "x").unwrap();
        }
        let run = d.path().join("runs/r1");
        record(&run, &Meta::new("r1", Path::new("/t/a.yaml"), Some(&tpl1), &[]), b"a: 1\n").unwrap();
        std::fs::create_dir_all(run.join("facts")).unwrap();
        std::fs::write(run.join("facts/DUT9.json"), "{}").unwrap();
        std::fs::write(run.join("plan.json"), "{}").unwrap();
        record(&run, &Meta::new("r1", Path::new("/t/b.yaml"), Some(&tpl2), &[]), b"b: 2\n").unwrap();
        let names = |p: &Path| {
            let mut v: Vec<String> =
                std::fs::read_dir(p).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            v.sort();
            v
        };
        assert_eq!(names(&run), ["meta.json", "templates", "topology.yaml"]);
        assert_eq!(names(&run.join("templates")), ["new.j2"]);
        assert_eq!(read_meta(&run).unwrap().topology_path, Path::new("/t/b.yaml"));
    }

    /// `replay` of a file that is not a bundle (or is cut short) exited 1, as if a host had
    /// failed: it is bad input, exit 2. A local file that cannot be written stays exit 1.
    #[test]
    fn regression_a_bad_bundle_is_invalid_input() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("u");
        std::fs::create_dir_all(&dest).unwrap();
        let junk = d.path().join("junk.tar.gz");
        std::fs::write(&junk, b"this is no gzip").unwrap();
        let e = unpack(&junk, &dest).unwrap_err();
        assert!(matches!(e, BundleError::Unreadable { .. }), "{e:?}");
        // A good bundle cut short.
        let run = d.path().join("runs/r1");
        record(&run, &Meta::new("r1", Path::new("/t/lab.yaml"), None, &[]), &vec![b'#'; 100_000]).unwrap();
        let out = d.path().join("b.tar.gz");
        pack(&run, &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        std::fs::write(&out, &bytes[..bytes.len() / 2]).unwrap();
        let e = unpack(&out, &dest).unwrap_err();
        assert!(e.is_bad_input(), "{e:?}");
        let e = read_member(&dest, "plan.json").unwrap_err();
        assert!(e.is_bad_input() && e.to_string().contains("plan.json"), "{e}");
        let code = |e: BundleError| crate::commands::exit_code_for(&anyhow::Error::new(e));
        assert_eq!(code(BundleError::NotABundle(junk.clone())), crate::exit::INVALID_INPUT);
        assert_eq!(code(unpack(&junk, &dest).unwrap_err()), crate::exit::INVALID_INPUT);
        let unwritable = BundleError::Io { path: junk, source: std::io::ErrorKind::PermissionDenied.into() };
        assert_eq!(code(unwritable), crate::exit::FAILED);
    }

    #[test]
    fn a_tarball_without_meta_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("b.tar.gz");
        let gz = flate2::write::GzEncoder::new(std::fs::File::create(&out).unwrap(), flate2::Compression::fast());
        let mut t = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_cksum();
        t.append_data(&mut h, "x/other.txt", &b"hi"[..]).unwrap();
        t.into_inner().unwrap().finish().unwrap();
        let dest = d.path().join("u");
        std::fs::create_dir_all(&dest).unwrap();
        assert!(matches!(unpack(&out, &dest), Err(BundleError::NotABundle(_))));
    }
}
