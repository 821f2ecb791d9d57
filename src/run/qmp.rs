//! TEMP stub until the guest branch merges.
use std::time::Duration;
#[derive(Debug, thiserror::Error)]
#[error("qmp")]
pub struct QmpError;
pub struct VcpuThread {
    pub cpu_index: u32,
    pub thread_id: u32,
}
pub struct Qmp<S> {
    _s: S,
}
impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Qmp<S> {
    pub async fn connect(s: S, _t: Duration) -> Result<Self, QmpError> {
        Ok(Qmp { _s: s })
    }
    pub async fn vcpu_threads(&mut self) -> Result<Vec<VcpuThread>, QmpError> {
        Err(QmpError)
    }
}
