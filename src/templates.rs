//! minijinja templates for the files a VM needs: VPP startup.conf, `<vnf>.exec`, the guest init.
//!
//! The defaults live in `templates/` and are embedded in the binary; `--templates DIR` overlays a
//! directory (a file there with the same name wins). Undefined variables are errors (strict
//! undefined), never silently empty: CSIT's `$nat` bug cannot happen here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {name}: {message}")]
    Render { name: String, message: String },
    #[error("template {name}: not found (looked in {searched})")]
    NotFound { name: String, searched: String },
    #[error("{}: {message}", path.display())]
    Dir { path: PathBuf, message: String },
}

pub struct Templates {
    user_dir: Option<PathBuf>,
}

impl Templates {
    pub fn embedded() -> Self {
        Templates { user_dir: None }
    }
    pub fn with_dir(dir: &Path) -> Result<Self, TemplateError> {
        Ok(Templates { user_dir: Some(dir.to_path_buf()) })
    }
    /// Is there a template with this file name (e.g. `vppip4_2vhostvr1024.exec`)?
    pub fn has(&self, _name: &str) -> bool {
        todo!("templates: has")
    }
    /// Names of the `.exec` templates (VPP VNFs), without the extension.
    pub fn vpp_vnfs(&self) -> Vec<String> {
        todo!("templates: vpp_vnfs")
    }
    pub fn render(&self, _name: &str, _vars: &BTreeMap<String, serde_json::Value>) -> Result<String, TemplateError> {
        let _ = &self.user_dir;
        todo!("templates: render")
    }
}
