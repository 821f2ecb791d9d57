//! TEMP stub until the guest branch merges.
use std::time::Duration;
#[derive(Debug, thiserror::Error)]
#[error("qga")]
pub struct QgaError;
pub struct GuestInterface {
    pub name: String,
    pub mac: Option<String>,
    pub ips: Vec<String>,
}
pub struct Qga<S> {
    _s: S,
}
impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Qga<S> {
    pub fn new(s: S) -> Self {
        Qga { _s: s }
    }
    pub async fn sync(&mut self, _t: Duration) -> Result<(), QgaError> {
        Err(QgaError)
    }
    pub async fn network_interfaces(&mut self, _t: Duration) -> Result<Vec<GuestInterface>, QgaError> {
        Err(QgaError)
    }
}
