//! `harness render`.

use crate::cli::{GlobalArgs, RenderArgs};

pub fn run(_g: &GlobalArgs, _a: &RenderArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`harness render` is not implemented yet")
}
