//! `harness status`.

use crate::cli::{GlobalArgs, StatusArgs};

pub async fn run(_g: &GlobalArgs, _a: &StatusArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`harness status` is not implemented yet")
}
