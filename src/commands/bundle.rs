//! `harness bundle RUN -o FILE.tar.gz`: pack a run's reproduction record (topology bytes,
//! template overlays, facts, plan, harness version and command line) for `harness replay`.

use anyhow::Context;

use crate::cli::{BundleArgs, GlobalArgs};
use crate::exit;
use crate::pipeline::bundle;
use crate::run::record;

pub fn run(g: &GlobalArgs, a: &BundleArgs) -> anyhow::Result<u8> {
    let state = record::state_dir(g.state_dir.as_deref());
    let dir = record::run_dir(&state, &a.run);
    if !dir.join("meta.json").is_file() {
        anyhow::bail!(
            "no reproduction record of run {} under {} (it is written by `up`; `down` removes it)",
            a.run,
            state.display()
        );
    }
    bundle::pack(&dir, &a.output).with_context(|| format!("writing {}", a.output.display()))?;
    println!("{}", a.output.display());
    Ok(exit::OK)
}
