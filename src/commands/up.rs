//! `harness up`.

use crate::cli::{GlobalArgs, UpArgs};

pub async fn run(_g: &GlobalArgs, _a: &UpArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`harness up` is not implemented yet")
}
