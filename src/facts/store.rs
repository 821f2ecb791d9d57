//! Facts on disk: `DIR/<node>.json` (the whole [`HostFacts`]) and `DIR/<node>.lscpu` (raw
//! `lscpu -p`). Written by `check --save-facts` and by every `up` (in its run record); read by
//! `render --facts`. A node may have only a `.lscpu` file: everything else is then unknown.

use std::path::{Path, PathBuf};

use super::{FactsByNode, HostFacts};

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a facts file: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{dir}: no facts for any node of the topology (expected <node>.json or <node>.lscpu)")]
    Empty { dir: PathBuf },
}

/// Write one node's facts (creating `dir`).
pub fn save(dir: &Path, node: &str, facts: &HostFacts) -> Result<(), FactsError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FactsError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let json = dir.join(format!("{node}.json"));
    let mut bytes = serde_json::to_vec_pretty(facts).expect("facts serialise");
    bytes.push(b'\n');
    std::fs::write(&json, bytes).map_err(io(&json))?;
    let lscpu = dir.join(format!("{node}.lscpu"));
    match &facts.lscpu {
        Some(text) => std::fs::write(&lscpu, text).map_err(io(&lscpu))?,
        None => {
            let _ = std::fs::remove_file(&lscpu);
        }
    }
    Ok(())
}

/// One node's facts, if the directory has any for it. A `.lscpu` file wins over the `lscpu`
/// text inside the `.json` (so a layout can be swapped in by hand).
pub fn load(dir: &Path, node: &str) -> Result<Option<HostFacts>, FactsError> {
    let json = dir.join(format!("{node}.json"));
    let lscpu = dir.join(format!("{node}.lscpu"));
    let mut facts = match std::fs::read(&json) {
        Ok(b) => {
            Some(serde_json::from_slice::<HostFacts>(&b).map_err(|source| FactsError::Json { path: json, source })?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(FactsError::Io { path: json, source }),
    };
    match std::fs::read_to_string(&lscpu) {
        Ok(text) => match facts.as_mut() {
            Some(f) => f.lscpu = Some(text),
            None => facts = Some(HostFacts::from_lscpu(text)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(FactsError::Io { path: lscpu, source }),
    }
    Ok(facts)
}

/// Facts for each of `nodes` found in `dir`; at least one node must have some.
pub fn load_all<'a>(dir: &Path, nodes: impl IntoIterator<Item = &'a str>) -> Result<FactsByNode, FactsError> {
    let mut all = FactsByNode::new();
    for n in nodes {
        if let Some(f) = load(dir, n)? {
            all.insert(n.to_string(), f);
        }
    }
    if all.is_empty() {
        return Err(FactsError::Empty { dir: dir.to_path_buf() });
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::Kvm;

    #[test]
    fn round_trip_and_lscpu_only_nodes() {
        let d = tempfile::tempdir().unwrap();
        let f = HostFacts {
            format: 1,
            kvm: Some(Kvm::Broken("no".into())),
            lscpu: Some("# CPU,Core,Socket,Node\n0,0,0,0\n".into()),
            ..HostFacts::default()
        };
        save(d.path(), "DUT1", &f).unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join("DUT1.lscpu")).unwrap(), "# CPU,Core,Socket,Node\n0,0,0,0\n");
        assert_eq!(load(d.path(), "DUT1").unwrap().unwrap(), f);
        std::fs::write(d.path().join("DUT2.lscpu"), "0,0,0,0\n").unwrap();
        let only = load(d.path(), "DUT2").unwrap().unwrap();
        assert_eq!(only.lscpu.as_deref(), Some("0,0,0,0\n"));
        assert_eq!(only.kvm, None, "everything but the layout is unknown");
        assert!(load(d.path(), "DUT3").unwrap().is_none());
        assert_eq!(load_all(d.path(), ["DUT1", "DUT2", "DUT3"]).unwrap().len(), 2);
        assert!(matches!(load_all(d.path(), ["X"]), Err(FactsError::Empty { .. })));
    }
}
