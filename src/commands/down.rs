//! `harness down`.

use crate::cli::{DownArgs, GlobalArgs};

pub async fn run(_g: &GlobalArgs, _a: &DownArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`harness down` is not implemented yet")
}
