//! The local run record on the jumpbox (`<state_dir>/runs/<run_id>.json`): which topology and
//! nodes a run used, so `harness down --run ID` and `status` need no other argument.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub run_id: String,
    pub topology: PathBuf,
    pub nodes: Vec<String>,
    pub created_unix: u64,
    /// Final state written by `up`: `ready`, `failed`, `interrupted`.
    pub state: String,
}

/// `--state-dir`, else `$XDG_STATE_HOME/harness`, else `~/.local/state/harness`.
pub fn state_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("harness");
    }
    dirs::home_dir().unwrap_or_else(|| PathBuf::from("/tmp")).join(".local/state/harness")
}

/// `<state>/runs/<run_id>/`: the run's kept facts and plan.
pub fn run_dir(dir: &Path, run_id: &str) -> PathBuf {
    dir.join("runs").join(run_id)
}

pub fn save(dir: &Path, rec: &RunRecord) -> std::io::Result<()> {
    let runs = dir.join("runs");
    std::fs::create_dir_all(&runs)?;
    write_atomically(&runs.join(format!("{}.json", rec.run_id)), &serde_json::to_vec_pretty(rec).expect("serialisable"))
}

/// Write `rec` whole unless a record of its run id exists: false then (the id is in use). The
/// temporary file is linked into place, which fails on an existing name: of two `up`s racing
/// for one id exactly one gets true.
pub fn create(dir: &Path, rec: &RunRecord) -> std::io::Result<bool> {
    let runs = dir.join("runs");
    std::fs::create_dir_all(&runs)?;
    let path = runs.join(format!("{}.json", rec.run_id));
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = runs.join(format!(".{}.json.{}-{seq}.new", rec.run_id, std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(rec).expect("serialisable"))?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Write `path` whole or not at all (a temporary file beside it, then a rename): a harness
/// killed mid-write must not leave a truncated record that `down`, `bundle` or `replay` chokes on.
/// A failed write removes its temporary file and leaves `path` as it was.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

pub fn load(dir: &Path, run_id: &str) -> std::io::Result<RunRecord> {
    if let Some(p) = crate::remote::layout::run_id_problem(run_id) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("run id {run_id:?}: {p}")));
    }
    let bytes = std::fs::read(dir.join("runs").join(format!("{run_id}.json")))?;
    serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Drop the run's record (nothing of it runs any more) but keep its run directory: the
/// reproduction record a failed run leaves for `harness bundle`.
pub fn forget(dir: &Path, run_id: &str) {
    if crate::remote::layout::run_id_problem(run_id).is_some() {
        return;
    }
    let _ = std::fs::remove_file(dir.join("runs").join(format!("{run_id}.json")));
}

/// Remove a run's record. The id may come from a host's manifest: one that is not a plain path
/// component is ignored, so it can never name a path outside the state directory.
pub fn remove(dir: &Path, run_id: &str) {
    if crate::remote::layout::run_id_problem(run_id).is_some() {
        return;
    }
    let _ = std::fs::remove_file(dir.join("runs").join(format!("{run_id}.json")));
    let _ = std::fs::remove_dir_all(run_dir(dir, run_id));
}

/// All records, newest first.
pub fn list(dir: &Path) -> Vec<RunRecord> {
    let mut v: Vec<RunRecord> = std::fs::read_dir(dir.join("runs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    v.sort_by(|a: &RunRecord, b| b.created_unix.cmp(&a.created_unix).then(b.run_id.cmp(&a.run_id)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `up` checked for a record and wrote one later: two `up`s with one run id both passed the
    /// check, and the loser's cleanup then deleted the winner's record while its VMs ran.
    /// The record is created exclusively now: exactly one of many racers gets the id.
    #[test]
    fn regression_two_ups_with_one_run_id_cannot_both_create_its_record() {
        let d = tempfile::tempdir().unwrap();
        let rec = |n: usize| RunRecord {
            run_id: "r1".into(),
            topology: format!("/t/{n}.yaml").into(),
            nodes: vec![],
            created_unix: 1,
            state: "starting".into(),
        };
        let dir = d.path().to_path_buf();
        let wins: usize = (0..8)
            .map(|n| {
                let dir = dir.clone();
                std::thread::spawn(move || create(&dir, &rec(n)).unwrap())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| usize::from(t.join().unwrap()))
            .sum();
        assert_eq!(wins, 1);
        assert!(load(d.path(), "r1").is_ok(), "the winner's record is whole");
        assert!(!create(d.path(), &rec(9)).unwrap(), "a live id is refused");
        let leftovers = std::fs::read_dir(d.path().join("runs")).unwrap().count();
        assert_eq!(leftovers, 1, "temporary files left");
    }

    #[test]
    fn save_load_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let r1 = RunRecord {
            run_id: "a".into(),
            topology: "/t.yaml".into(),
            nodes: vec!["DUT1".into()],
            created_unix: 1,
            state: "ready".into(),
        };
        let r2 = RunRecord { run_id: "b".into(), created_unix: 2, ..r1.clone() };
        save(d.path(), &r1).unwrap();
        save(d.path(), &r2).unwrap();
        assert_eq!(load(d.path(), "a").unwrap(), r1);
        assert_eq!(list(d.path()).iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), ["b", "a"]);
        remove(d.path(), "b");
        assert_eq!(list(d.path()).len(), 1);
    }

    /// A failed `write_atomically` left its temporary file (`.NAME.tmp`) behind, next to the
    /// file it was meant to replace.
    #[test]
    fn regression_a_failed_atomic_write_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("taken");
        std::fs::create_dir(&path).unwrap();
        // A directory cannot be renamed over: the write fails after the temporary file is whole.
        assert!(write_atomically(&path, b"x").is_err());
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["taken"]);
    }
}
