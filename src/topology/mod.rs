//! Topology files: CSIT's `metadata:` + `nodes:` format, extended with `vms:` and node keys.
//!
//! [`load`] reads a file, checks every key and value, applies defaults and cross-checks
//! (VM on an existing DUT, unique ids and names, CPU lists, PCI addresses, ...). All problems are
//! reported at once as [`Diagnostic`]s naming `file:line:column` and the key path.

mod chain_load;
pub mod chains;
mod cx;
mod load;

mod model;
pub(crate) mod validate;
mod vm;
mod yaml;

pub use model::*;

use std::path::{Path, PathBuf};

use crate::templates::Templates;

/// One problem in a topology file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Key path, e.g. `vms[0].smp` or `nodes.DUT1.port`.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys and messages quote the file's text; keep a hostile file from driving the terminal.
        use crate::report::sanitize::escape_control;
        let (key, message) = (escape_control(&self.key), escape_control(&self.message));
        write!(
            f,
            "{}:{}:{}: {key}: {message}",
            escape_control(&self.file.display().to_string()),
            self.line,
            self.column
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{}: cannot read", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}", render_diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render_diagnostics(d: &[Diagnostic]) -> String {
    // The count first, so the CLI's `error: ` prefix does not land on a `file:line:col` line.
    let lines: Vec<String> = d.iter().map(|d| d.to_string()).collect();
    let file = d.first().map(|d| format!(" {}", d.file.display())).unwrap_or_default();
    format!("{} error(s) in topology{file}:\n{}", d.len(), lines.join("\n"))
}

pub(crate) use load::nodes_have_other_values;

/// Load and validate a topology file.
pub fn load(path: &Path, templates: &Templates) -> Result<Topology, TopologyError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| TopologyError::Read { path: path.to_path_buf(), source })?;
    load_str(&text, path, templates)
}

/// Validate topology text; `path` is only used in messages and for relative paths.
pub fn load_str(text: &str, path: &Path, templates: &Templates) -> Result<Topology, TopologyError> {
    load_str_with(text, path, &|vnf| templates.has(&format!("{vnf}.exec")))
}

/// [`load`] with the VNF check supplied by the caller: `has_vnf("vppip4_...")` says whether a
/// `vpp*` VNF has its `.exec` template. Lets tools and tests validate without a template set.
pub fn load_with(path: &Path, has_vnf: &dyn Fn(&str) -> bool) -> Result<Topology, TopologyError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| TopologyError::Read { path: path.to_path_buf(), source })?;
    load_str_with(&text, path, has_vnf)
}

/// [`load_str`] with the VNF check supplied by the caller (see [`load_with`]).
pub fn load_str_with(text: &str, path: &Path, has_vnf: &dyn Fn(&str) -> bool) -> Result<Topology, TopologyError> {
    load::load(text, path, has_vnf)
}
