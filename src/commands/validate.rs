//! `harness validate`.

use crate::cli::{GlobalArgs, ValidateArgs};

pub fn run(_g: &GlobalArgs, _a: &ValidateArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`harness validate` is not implemented yet")
}
