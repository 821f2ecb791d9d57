//! `harness logs`.

use crate::cli::{GlobalArgs, LogsArgs};

pub async fn run(_g: &GlobalArgs, _a: &LogsArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`harness logs` is not implemented yet")
}
