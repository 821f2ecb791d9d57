//! `harness check`.

use crate::cli::{CheckArgs, GlobalArgs};

pub async fn run(_g: &GlobalArgs, _a: &CheckArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`harness check` is not implemented yet")
}
