//! `harness render`: print the plan (argv, files, paths) without touching any host.

use crate::cli::{Format, GlobalArgs, RenderArgs};
use crate::exit;
use crate::plan::{self, PlanOptions};

pub fn run(g: &GlobalArgs, a: &RenderArgs) -> anyhow::Result<u8> {
    let (topology, templates) = super::load_topology(g, &a.topology)?;
    let mut plan = plan::build(&topology, &PlanOptions { run_id: a.run_id.clone(), templates: &templates })?;
    plan::select_vms(&mut plan, &a.vms)?;
    let out = match a.format {
        Format::Text => plan::render::text(&plan),
        Format::Json => plan::render::json(&plan)?,
    };
    print!("{out}");
    Ok(exit::OK)
}
