//! `harness render`: print the plan (argv, files, paths) without touching any host. With
//! `--facts DIR` it plans with those hosts' facts, exactly as `up` would; without, the
//! host-dependent decisions are listed as unresolved.

use crate::cli::{Format, GlobalArgs, RenderArgs};
use crate::exit;
use crate::facts::{self, FactsByNode};
use crate::plan::{self, PlanOptions};

pub fn run(g: &GlobalArgs, a: &RenderArgs) -> anyhow::Result<u8> {
    let (topology, templates) = super::load_topology(g, &a.topology)?;
    let facts = match &a.facts {
        Some(dir) => facts::store::load_all(dir, topology.duts().map(|n| n.name.as_str()))?,
        None => FactsByNode::new(),
    };
    let opts = PlanOptions { run_id: a.run_id.clone(), templates: &templates, only_vms: &a.vms };
    let plan = plan::build(&topology, &facts, &opts).map_err(|e| super::positioned(&topology, e))?;
    let out = match a.format {
        Format::Text => plan::render::text(&plan),
        Format::Json => plan::render::json(&plan)?,
    };
    print!("{out}");
    Ok(exit::OK)
}
