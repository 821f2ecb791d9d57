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

/// Write the reproduction record into `run_dir`: meta, topology bytes, template overlays.
pub fn record(run_dir: &Path, meta: &Meta, topology: &[u8]) -> Result<(), BundleError> {
    std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
    let p = run_dir.join("topology.yaml");
    std::fs::write(&p, topology).map_err(io(&p))?;
    if let Some(dir) = &meta.templates_dir {
        let dest = run_dir.join("templates");
        std::fs::create_dir_all(&dest).map_err(io(&dest))?;
        // Templates are looked up by file name in that one directory: no recursion needed.
        for e in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                std::fs::copy(e.path(), dest.join(e.file_name())).map_err(io(&e.path()))?;
            }
        }
    }
    let p = run_dir.join("meta.json");
    std::fs::write(&p, serde_json::to_vec_pretty(meta).expect("serialisable")).map_err(io(&p))
}

pub fn read_meta(dir: &Path) -> Result<Meta, BundleError> {
    let p = dir.join("meta.json");
    let bytes = std::fs::read(&p).map_err(|_| BundleError::NotABundle(dir.to_path_buf()))?;
    serde_json::from_slice(&bytes).map_err(|source| BundleError::Meta { path: p, source })
}

/// Pack `run_dir` into `out` (gzip'd tar, entries under `<run_id>/`).
pub fn pack(run_dir: &Path, out: &Path) -> Result<(), BundleError> {
    let meta = read_meta(run_dir)?;
    let file = std::fs::File::create(out).map_err(io(out))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.append_dir_all(&meta.run_id, run_dir).map_err(io(run_dir))?;
    let gz = tar.into_inner().map_err(io(out))?;
    gz.finish().map_err(io(out))?;
    Ok(())
}

/// Unpack `bundle` into `dest`; returns the directory holding `meta.json`.
pub fn unpack(bundle: &Path, dest: &Path) -> Result<PathBuf, BundleError> {
    let file = std::fs::File::open(bundle).map_err(io(bundle))?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in ar.entries().map_err(io(bundle))? {
        let mut entry = entry.map_err(io(bundle))?;
        let path = entry.path().map_err(io(bundle))?.into_owned();
        // `unpack_in` refuses `..` and absolute paths itself; links could still point out.
        if entry.header().entry_type().is_symlink() || entry.header().entry_type().is_hard_link() {
            return Err(BundleError::UnsafeEntry(path.display().to_string()));
        }
        if !entry.unpack_in(dest).map_err(io(bundle))? {
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
