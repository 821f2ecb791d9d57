//! Stage 2: upload every rendered file of the node's VMs, concurrently over the one connection
//! (outside the host lock: big templates can be slow).

use tokio::task::JoinSet;

use super::{UpError, fail};
use crate::plan::NodePlan;
use crate::ssh::{Session, SshError};

/// A failed upload; a lost connection stays a lost node (exit 3), not a failed write.
fn upload_error(prefix: &str, e: SshError) -> UpError {
    if e.is_connection_lost() || e.is_unreachable() {
        UpError::Lost(format!("{prefix}upload failed: {e}"))
    } else {
        fail(format!("{prefix}upload failed: {e}"))
    }
}

/// Every file of the node's VMs as `(content, path, mode)` when together they are small enough
/// for one round trip (the usual case); `None` when [`files`] must send them one by one.
pub(super) fn small_files(np: &NodePlan) -> Option<Vec<(&[u8], &str, u32)>> {
    let all: Vec<(&[u8], &str, u32)> =
        np.vms.iter().flat_map(|v| &v.files).map(|f| (f.content.as_bytes(), f.path.as_str(), f.mode)).collect();
    (all.iter().map(|(c, ..)| c.len()).sum::<usize>() <= crate::ssh::UPLOAD_MANY_MAX).then_some(all)
}

pub(super) async fn files(session: &Session, np: &NodePlan) -> Result<(), UpError> {
    if let Some(all) = small_files(np) {
        return session.upload_many(&all, true).await.map_err(|e| upload_error("", e));
    }
    let mut uploads = JoinSet::new();
    for v in &np.vms {
        for f in &v.files {
            let s = session.clone();
            let (content, path, mode) = (f.content.clone().into_bytes(), f.path.clone(), f.mode);
            let vm = v.name.clone();
            uploads.spawn(async move { s.upload(&content, &path, mode, true).await.map_err(|e| (vm, e)) });
        }
    }
    while let Some(r) = uploads.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err((vm, e))) => return Err(upload_error(&format!("{vm}: "), e)),
            Err(e) => return Err(fail(format!("upload task: {e}"))),
        }
    }
    Ok(())
}
