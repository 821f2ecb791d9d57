//! `harness exec`.

use crate::cli::{ExecArgs, GlobalArgs};

pub async fn run(_g: &GlobalArgs, _a: &ExecArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`harness exec` is not implemented yet")
}
