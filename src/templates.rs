//! minijinja templates for the files a VM needs: VPP startup.conf, `<vnf>.exec`, the guest init.
//!
//! The defaults live in `templates/` and are embedded in the binary; `--templates DIR` overlays a
//! directory (a file there with the same name wins, new names are added). Undefined variables are
//! errors (strict undefined), never silently empty: CSIT's `$nat` bug cannot happen here. Output is
//! byte-exact: `trim_blocks` and `lstrip_blocks` let `{% if %}` lines vanish completely, and
//! `keep_trailing_newline` keeps the file's last newline, so a template without tags renders to
//! itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use minijinja::{Environment, ErrorKind, UndefinedBehavior};

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {name}: {message}")]
    Render { name: String, message: String },
    #[error("template {name}: not found (looked in {searched})")]
    NotFound { name: String, searched: String },
    #[error("{}: {message}", path.display())]
    Dir { path: PathBuf, message: String },
}

/// The templates shipped in the binary, by file name.
const EMBEDDED: &[(&str, &str)] = &[
    ("startup.conf", include_str!("../templates/startup.conf")),
    ("init.sh", include_str!("../templates/init.sh")),
    ("vppip4_2vhostvr1024.exec", include_str!("../templates/vppip4_2vhostvr1024.exec")),
    ("vppip4_2virtiovr1024.exec", include_str!("../templates/vppip4_2virtiovr1024.exec")),
    ("vppip4noarp_2vhostvr1024.exec", include_str!("../templates/vppip4noarp_2vhostvr1024.exec")),
    ("vppip4noarp_2virtiovr1024.exec", include_str!("../templates/vppip4noarp_2virtiovr1024.exec")),
    ("vppip6_2vhostvr1024.exec", include_str!("../templates/vppip6_2vhostvr1024.exec")),
    ("vppip6_2virtiovr1024.exec", include_str!("../templates/vppip6_2virtiovr1024.exec")),
    ("vppl2xc_2vhostvr1024.exec", include_str!("../templates/vppl2xc_2vhostvr1024.exec")),
    ("vppl2xc_2virtiovr1024.exec", include_str!("../templates/vppl2xc_2virtiovr1024.exec")),
    ("vpp_2vfpt_ip4base_plen24.exec", include_str!("../templates/vpp_2vfpt_ip4base_plen24.exec")),
    ("vpp_2vfpt_ip4scale2k_plen30.exec", include_str!("../templates/vpp_2vfpt_ip4scale2k_plen30.exec")),
    ("vpp_2vfpt_ip4scale20k_plen30.exec", include_str!("../templates/vpp_2vfpt_ip4scale20k_plen30.exec")),
    ("vpp_2vfpt_ip4scale200k_plen30.exec", include_str!("../templates/vpp_2vfpt_ip4scale200k_plen30.exec")),
    (
        "vpp_2vfpt_ethip4_nat44ed_h1024_p63_s64512.exec",
        include_str!("../templates/vpp_2vfpt_ethip4_nat44ed_h1024_p63_s64512.exec"),
    ),
    (
        "vpp_2vfpt_ethip4_nat44ed_h4096_p63_s258048.exec",
        include_str!("../templates/vpp_2vfpt_ethip4_nat44ed_h4096_p63_s258048.exec"),
    ),
    (
        "vpp_2vfpt_ethip4_nat44ed_h16384_p63_s1032192.exec",
        include_str!("../templates/vpp_2vfpt_ethip4_nat44ed_h16384_p63_s1032192.exec"),
    ),
    ("vpp_2vfpt_ethip4ipsec1tnl_plen30.exec", include_str!("../templates/vpp_2vfpt_ethip4ipsec1tnl_plen30.exec")),
    ("vpp_2vfpt_ethip4ipsec40tnl_plen30.exec", include_str!("../templates/vpp_2vfpt_ethip4ipsec40tnl_plen30.exec")),
];

pub struct Templates {
    user_dir: Option<PathBuf>,
    /// File name → source; the embedded set overlaid with the user directory.
    sources: BTreeMap<String, String>,
}

impl Templates {
    pub fn embedded() -> Self {
        let sources = EMBEDDED.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect();
        Templates { user_dir: None, sources }
    }

    /// The embedded templates overlaid with every regular file in `dir` (not recursive). Each file
    /// is parsed here, so a syntax error shows before anything runs.
    pub fn with_dir(dir: &Path) -> Result<Self, TemplateError> {
        let dir_err = |message: String| TemplateError::Dir { path: dir.to_path_buf(), message };
        let mut t = Templates::embedded();
        let entries = std::fs::read_dir(dir).map_err(|e| dir_err(format!("cannot read template directory: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| dir_err(format!("cannot read template directory: {e}")))?;
            let path = entry.path();
            if !path.is_file() {
                continue;
            }
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let source = std::fs::read_to_string(&path)
                .map_err(|e| TemplateError::Dir { path: path.clone(), message: format!("cannot read: {e}") })?;
            let env = environment();
            env.template_from_named_str(&name, &source)
                .map_err(|e| TemplateError::Render { name: format!("{}", path.display()), message: detail(&e) })?;
            t.sources.insert(name, source);
        }
        t.user_dir = Some(dir.to_path_buf());
        Ok(t)
    }

    /// Is there a template with this file name (e.g. `vppip4_2vhostvr1024.exec`)?
    pub fn has(&self, name: &str) -> bool {
        self.sources.contains_key(name)
    }

    /// Names of the `.exec` templates (VPP VNFs), without the extension.
    pub fn vpp_vnfs(&self) -> Vec<String> {
        self.sources.keys().filter_map(|n| n.strip_suffix(".exec")).map(str::to_string).collect()
    }

    /// The source of a template (for `render` and tests).
    pub fn source(&self, name: &str) -> Option<&str> {
        self.sources.get(name).map(String::as_str)
    }

    pub fn render(&self, name: &str, vars: &BTreeMap<String, serde_json::Value>) -> Result<String, TemplateError> {
        let source = self.sources.get(name).ok_or_else(|| TemplateError::NotFound {
            name: name.to_string(),
            searched: match &self.user_dir {
                Some(d) => format!("{} and the embedded templates", d.display()),
                None => "the embedded templates".to_string(),
            },
        })?;
        let env = environment();
        let tmpl = env
            .template_from_named_str(name, source)
            .map_err(|e| TemplateError::Render { name: name.to_string(), message: detail(&e) })?;
        tmpl.render(minijinja::Value::from_serialize(vars)).map_err(|e| {
            let mut message = detail(&e);
            if e.kind() == ErrorKind::UndefinedError {
                // minijinja does not name the variable; the difference between what the template
                // reads and what we supplied does.
                let supplied: BTreeSet<&str> = vars.keys().map(String::as_str).collect();
                let missing: BTreeSet<String> =
                    tmpl.undeclared_variables(false).into_iter().filter(|v| !supplied.contains(v.as_str())).collect();
                if !missing.is_empty() {
                    let list: Vec<String> = missing.iter().map(|v| format!("`{v}`")).collect();
                    message = format!("undefined variable {} ({message})", list.join(", "));
                }
            }
            TemplateError::Render { name: name.to_string(), message }
        })
    }
}

/// The one environment configuration every template is parsed and rendered with.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    // `{{ path | sh }}`: shell-quote a value with the same function every remote argument uses.
    env.add_filter("sh", |v: minijinja::Value| crate::quote::quote(&v.to_string()));
    env
}

/// minijinja's message plus the line, without the multi-line source excerpt of its Display.
fn detail(e: &minijinja::Error) -> String {
    let what = e.detail().map(str::to_string).unwrap_or_else(|| e.kind().to_string());
    match e.line() {
        Some(line) => format!("{what} (line {line})"),
        None => what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(pairs: &[(&str, serde_json::Value)]) -> BTreeMap<String, serde_json::Value> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn tagless_template_renders_to_itself() {
        let t = Templates::embedded();
        let src = t.source("vppl2xc_2vhostvr1024.exec").unwrap();
        assert!(src.ends_with("show version\n"));
        assert_eq!(t.render("vppl2xc_2vhostvr1024.exec", &BTreeMap::new()).unwrap(), src);
    }

    #[test]
    fn block_lines_vanish_and_trailing_spaces_survive() {
        let t = Templates::embedded();
        let mut v = vars(&[
            ("vpp_cli_listen", json!("/run/vpp/cli.sock")),
            ("vpp_api_socket", json!("/run/vpp/api.sock")),
            ("running_exec", json!("/x/running.exec")),
            ("page_size", json!("2M")),
            ("smp", json!(1)),
            ("queues", json!(1)),
            ("jumbo", json!(false)),
            ("vnf", json!("vppl2xc_2virtiovr1024")),
        ]);
        let out = t.render("startup.conf", &v).unwrap();
        assert!(out.contains("cpu\n{\n  main-core 0\n}\nplugins\n"), "{out}");
        assert!(out.contains("  nodaemon \n"));
        assert!(out.contains("    disable  \n"));
        assert!(!out.contains("dpdk"));
        assert!(out.ends_with("}\n") && !out.ends_with("}\n\n"));
        v.insert("smp".into(), json!(3));
        assert!(t.render("startup.conf", &v).unwrap().contains("  main-core 0\n  corelist-workers 1-2\n}\n"));
    }

    #[test]
    fn missing_variable_is_named() {
        let t = Templates::embedded();
        let err =
            t.render("vppip4_2vhostvr1024.exec", &vars(&[("mac1", json!("a")), ("mac2", json!("b"))])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("template vppip4_2vhostvr1024.exec"), "{msg}");
        assert!(msg.contains("`vif1_mac`") && msg.contains("`vif2_mac`"), "{msg}");
        assert!(!msg.contains("`mac1`"), "{msg}");
    }

    #[test]
    fn nat_is_required_not_literal() {
        let t = Templates::embedded();
        let mut v: BTreeMap<String, serde_json::Value> = [
            "queues", "ip1", "ip2", "route1", "nexthop1", "routeif1", "route2", "nexthop2", "routeif2", "arpif1",
            "arpip1", "arpmac1",
        ]
        .iter()
        .map(|k| (k.to_string(), json!(format!("<{k}>"))))
        .collect();
        let name = "vpp_2vfpt_ethip4_nat44ed_h1024_p63_s64512.exec";
        let msg = t.render(name, &v).unwrap_err().to_string();
        assert!(msg.contains("`nat`"), "{msg}");
        v.insert("nat".into(), json!("nat44 add address 1.2.3.4"));
        let out = t.render(name, &v).unwrap();
        assert!(out.contains("\nnat44 add address 1.2.3.4\n") && !out.contains('$'));
    }

    #[test]
    fn every_vpp_template_ends_with_logging_and_version() {
        let t = Templates::embedded();
        let vnfs = t.vpp_vnfs();
        assert!(vnfs.len() >= 12, "{vnfs:?}");
        for v in vnfs {
            let src = t.source(&format!("{v}.exec")).unwrap();
            assert!(src.ends_with("show logging\n\nshow version\n"), "{v}");
        }
    }

    #[test]
    fn user_dir_overrides_and_adds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vppl2xc_2vhostvr1024.exec"), "mine {{ queues }}\n").unwrap();
        std::fs::write(dir.path().join("myvnf.exec"), "new\n").unwrap();
        let t = Templates::with_dir(dir.path()).unwrap();
        assert!(t.has("myvnf.exec") && t.has("init.sh"));
        assert!(t.vpp_vnfs().contains(&"myvnf".to_string()));
        assert_eq!(t.render("vppl2xc_2vhostvr1024.exec", &vars(&[("queues", json!(2))])).unwrap(), "mine 2\n");
        let missing = t.render("nope.exec", &BTreeMap::new()).unwrap_err().to_string();
        assert!(missing.contains("not found") && missing.contains(&dir.path().display().to_string()), "{missing}");
    }

    #[test]
    fn user_dir_syntax_error_is_reported_up_front() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.exec"), "{% if %}\n").unwrap();
        let err = Templates::with_dir(dir.path()).err().expect("syntax error must fail");
        assert!(err.to_string().contains("bad.exec"), "{err}");
        assert!(Templates::with_dir(&dir.path().join("absent")).is_err());
    }

    #[test]
    fn sh_filter_quotes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("q"), "{{ p | sh }}").unwrap();
        let t = Templates::with_dir(dir.path()).unwrap();
        assert_eq!(t.render("q", &vars(&[("p", json!("/a b"))])).unwrap(), "'/a b'");
        assert_eq!(t.render("q", &vars(&[("p", json!("/ab"))])).unwrap(), "/ab");
        assert_eq!(t.render("q", &vars(&[("p", json!(7))])).unwrap(), "7");
    }
}
