//! Topology loading and validation through the public API: CSIT files, defaults, every error class.

use std::path::{Path, PathBuf};

use harness::topology::{self, Diagnostic, Topology, TopologyError};

fn fixtures(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(dir)
}

#[test]
fn every_csit_topology_loads_unchanged() {
    let mut loaded = 0;
    let mut entries: Vec<_> =
        std::fs::read_dir(fixtures("csit-topologies")).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        let topo = topology::load_with(&path, &|_| panic!("CSIT files have no VMs"))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(topo.duts().count() >= 1, "{}", path.display());
        assert!(topo.vms.is_empty());
        loaded += 1;
    }
    assert_eq!(loaded, 22);
}
