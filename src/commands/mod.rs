//! One module per subcommand: glue between parsed arguments and the library.

pub mod check;
pub mod down;
pub mod exec;
pub mod logs;
pub mod ping;
pub mod render;
pub mod status;
pub mod up;
pub mod validate;

use std::path::Path;

use crate::cli::GlobalArgs;
use crate::exit;
use crate::ssh::{ConnectOptions, SshError};
use crate::templates::{TemplateError, Templates};
use crate::topology::{Topology, TopologyError};

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Templates per `--templates`.
pub fn templates(g: &GlobalArgs) -> Result<Templates, TemplateError> {
    match &g.templates {
        Some(dir) => Templates::with_dir(dir),
        None => Ok(Templates::embedded()),
    }
}

/// Load a topology with the templates from `--templates` (for `vnf` checks).
pub fn load_topology(g: &GlobalArgs, path: &Path) -> anyhow::Result<(Topology, Templates)> {
    let templates = templates(g)?;
    let topo = crate::topology::load(path, &templates)?;
    Ok((topo, templates))
}

/// SSH options from the global flags.
pub fn connect_options(g: &GlobalArgs) -> ConnectOptions {
    let mut o = ConnectOptions {
        connect_timeout: g.connect_timeout,
        auth_timeout: g.auth_timeout,
        command_timeout: g.command_timeout,
        accept_new_host_keys: g.accept_new_host_keys,
        ..ConnectOptions::default()
    };
    match &g.ssh_config {
        Some(p) if p.as_os_str() == "none" => o.ssh_config = None,
        Some(p) => o.ssh_config = Some(p.clone()),
        None => {}
    }
    o
}

/// Map an error that reached the CLI edge to its exit code.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<TopologyError>() || cause.is::<TemplateError>() || cause.is::<crate::plan::PlanError>() {
            return exit::INVALID_INPUT;
        }
        if let Some(e) = cause.downcast_ref::<SshError>() {
            return if e.is_unreachable() { exit::UNREACHABLE } else { exit::FAILED };
        }
    }
    exit::FAILED
}
