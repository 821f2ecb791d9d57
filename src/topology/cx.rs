//! The diagnostics collector and the typed readers every part of the loader shares: [`Cx`]
//! reads a marked YAML value as a string, integer, path, choice, ... and records a
//! `file:line:col` diagnostic when it is not one; [`Fields`] checks a map's keys against the
//! known ones (with "did you mean" hints). Also the draft types that pass between the per-VM
//! conversion ([`super::vm`]) and the cross-VM checks ([`super::validate`]).

use std::path::Path;
use std::time::Duration;

use super::Diagnostic;
use super::model::{ChainDef, Vm};
use super::yaml::{Node as YNode, Pos, Value, join};

/// Collects diagnostics for one file.
pub(crate) struct Cx<'a> {
    pub file: &'a Path,
    pub diags: Vec<Diagnostic>,
}

impl Cx<'_> {
    pub fn err(&mut self, pos: Pos, key: &str, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            file: self.file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            key: if key.is_empty() { "(top)".to_string() } else { key.to_string() },
            message: message.into(),
        });
    }

    /// Any scalar, as text (`username: 123` is the string "123"), without control characters
    /// other than tabs (nor bidirectional overrides). Every string read ends up in an argv, a
    /// script, a config line or `render`'s output: a newline adds a line there, an ESC drives
    /// the terminal, an override reorders what it shows.
    pub(crate) fn string(&mut self, n: &YNode, path: &str) -> Option<String> {
        self.scalar(n, path, false)
    }

    /// [`Cx::string`] for the values that are several lines by nature (a PEM key, lines of an
    /// init script): newlines are allowed too.
    pub(crate) fn lines(&mut self, n: &YNode, path: &str) -> Option<String> {
        self.scalar(n, path, true)
    }

    fn scalar(&mut self, n: &YNode, path: &str, multiline: bool) -> Option<String> {
        match &n.value {
            Value::Scalar { text, .. } if !n.is_null() => {
                // What the terminal sanitizer would have to escape (tabs pass).
                let bad = |c: &char| crate::report::sanitize::is_dangerous(*c) && !(multiline && *c == '\n');
                match text.chars().find(bad) {
                    Some(c) => {
                        let what = if c.is_control() { "control characters" } else { "bidirectional overrides" };
                        self.err(n.pos, path, format!("must not contain {what} (found U+{:04X})", c as u32));
                        None
                    }
                    None => Some(text.clone()),
                }
            }
            _ => {
                self.err(n.pos, path, format!("expected a string, found {}", n.kind_name()));
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, n: &YNode, path: &str) -> Option<bool> {
        // YAML 1.2 core schema booleans only: `yes`/`on` are strings there, so refuse them.
        if let Value::Scalar { text, plain: true } = &n.value {
            match text.as_str() {
                "true" | "True" | "TRUE" => return Some(true),
                "false" | "False" | "FALSE" => return Some(false),
                _ => {}
            }
        }
        self.err(n.pos, path, "expected true or false");
        None
    }

    /// An unsigned integer in `min..=max`; `what` names the expectation in messages.
    pub(crate) fn int(&mut self, n: &YNode, path: &str, min: u64, max: u64, what: &str) -> Option<u64> {
        let parsed = match &n.value {
            Value::Scalar { text, plain: true } => text.parse::<u64>().ok(),
            _ => None,
        };
        match parsed {
            Some(v) if v >= min && v <= max => Some(v),
            Some(v) if v >= min => {
                self.err(n.pos, path, format!("{what}, at most {max} (found {v})"));
                None
            }
            _ => {
                self.err(n.pos, path, format!("expected {what}"));
                None
            }
        }
    }

    /// A queue count: virtio-net allows at most 256 queue pairs per NIC here.
    pub(crate) fn queues(&mut self, n: &YNode, path: &str) -> Option<u32> {
        self.int(n, path, 1, 256, "a positive integer").map(|v| v as u32)
    }

    /// One of a fixed set of words, with a "did you mean" hint.
    pub(crate) fn choice(&mut self, n: &YNode, path: &str, options: &[&'static str]) -> Option<&'static str> {
        let text = n.as_scalar().filter(|_| !n.is_null());
        if let Some(t) = text
            && let Some(o) = options.iter().find(|o| **o == t)
        {
            return Some(o);
        }
        let list = options.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ");
        let hint = text.and_then(|t| suggest(t, options)).map(|s| format!("; did you mean `{s}`?")).unwrap_or_default();
        // Echo the value: "unknown accel `kmv`" says what was read, not only what is allowed.
        let what = path.rsplit('.').next().unwrap_or(path);
        let found = text.map(|t| format!("unknown {what} `{}`; ", t.escape_debug())).unwrap_or_default();
        self.err(n.pos, path, format!("{found}expected one of {list}{hint}"));
        None
    }

    pub(crate) fn abs_path(&mut self, n: &YNode, path: &str) -> Option<String> {
        let s = self.string(n, path)?;
        // A path goes into remote scripts and their `key=value` output: a newline in
        // `qemu.bin_dir` added lines of its own to the host facts. Tabs too, here.
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            self.err(n.pos, path, format!("must not contain control characters (found U+{:04X})", c as u32));
            None
        } else if s.starts_with('/') {
            Some(s)
        } else {
            self.err(n.pos, path, format!("must be an absolute path (found `{s}`)"));
            None
        }
    }

    pub(crate) fn seq<'n>(&mut self, n: &'n YNode, path: &str) -> Option<&'n [YNode]> {
        match &n.value {
            Value::Seq(items) => Some(items),
            _ => {
                self.err(n.pos, path, format!("expected a list, found {}", n.kind_name()));
                None
            }
        }
    }

    pub(crate) fn strings(&mut self, n: &YNode, path: &str) -> Option<Vec<String>> {
        let items = self.seq(n, path)?;
        let mut out = Vec::new();
        let mut ok = true;
        for (i, it) in items.iter().enumerate() {
            match self.string(it, &join(path, &format!("[{i}]"))) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// The entries of a map whose keys are names (nodes, CSIT ports), not a fixed set.
    pub(crate) fn map<'n>(&mut self, n: &'n YNode, path: &str) -> Option<&'n [(YNode, YNode)]> {
        match &n.value {
            Value::Map(entries) => Some(entries),
            _ => {
                self.err(n.pos, path, format!("expected a map, found {}", n.kind_name()));
                None
            }
        }
    }

    /// Open a map, reporting a non-map value and every key not in `known`.
    /// `pos` is where "missing key" errors point (the key naming this map, or the list item).
    pub(crate) fn fields<'n>(
        &mut self,
        n: &'n YNode,
        path: &str,
        pos: Pos,
        known: &[&'static str],
    ) -> Option<Fields<'n>> {
        let Value::Map(entries) = &n.value else {
            self.err(n.pos, path, format!("expected a map, found {}", n.kind_name()));
            return None;
        };
        for (k, _) in entries {
            match k.as_scalar() {
                Some(name) if known.contains(&name) => {}
                Some(name) => {
                    let hint = suggest(name, known).map(|s| format!("; did you mean `{s}`?")).unwrap_or_default();
                    self.err(k.pos, &join(path, name), format!("unknown key{hint}"));
                }
                None => self.err(k.pos, path, "keys must be plain strings"),
            }
        }
        Some(Fields { path: path.to_string(), pos, entries })
    }
}

/// A map being read: lookups by key, with key paths for messages.
pub(crate) struct Fields<'n> {
    pub path: String,
    pub pos: Pos,
    entries: &'n [(YNode, YNode)],
}

impl<'n> Fields<'n> {
    /// The value of `key`, or `None` when absent or null.
    pub fn get(&self, key: &str) -> Option<&'n YNode> {
        self.raw(key).filter(|v| !v.is_null())
    }
    /// The value of `key` even when null (for keys where null means something).
    pub fn raw(&self, key: &str) -> Option<&'n YNode> {
        self.entries.iter().find(|(k, _)| k.as_scalar() == Some(key)).map(|(_, v)| v)
    }
    pub fn key_pos(&self, key: &str) -> Pos {
        self.entries.iter().find(|(k, _)| k.as_scalar() == Some(key)).map(|(k, _)| k.pos).unwrap_or(self.pos)
    }
    pub fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }
    pub(crate) fn required(&self, cx: &mut Cx, key: &str) -> Option<&'n YNode> {
        let v = self.get(key);
        if v.is_none() {
            if self.raw(key).is_some() {
                cx.err(self.key_pos(key), &self.path(key), "needs a value");
            } else {
                cx.err(self.pos, &self.path, format!("missing required key `{key}`"));
            }
        }
        v
    }
}

/// Levenshtein distance, for "did you mean" hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest known word within edit distance 2.
/// Short words need proportionally closer matches (`4K` is not a typo of `2M`).
pub(crate) fn suggest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (distance(word, k), *k))
        .filter(|(d, k)| *d <= 2 && d * 2 <= word.chars().count().max(k.chars().count()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// `120s`, `2m`, `500ms`, `1.5s`, `1h` or a bare number of seconds: the crate's one syntax.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    crate::duration::parse(s).ok()
}

/// A VM as read from the file, before ids and names are assigned across VMs.
pub(crate) struct VmDraft {
    pub vm: Vm,
    /// Explicit `qemu_id` (0 in `vm.qemu_id` until assigned).
    pub explicit_id: Option<u32>,
    pub explicit_name: bool,
    pub spans: VmSpans,
}

/// Where a VM's cross-checked values were written, for messages.
#[derive(Debug, Clone, Default)]
pub(crate) struct VmSpans {
    /// `vms[i]`.
    pub path: String,
    /// The list item.
    pub pos: Pos,
    pub node: Pos,
    pub qemu_id: Option<Pos>,
    pub name: Option<Pos>,
    pub cpus_key: Pos,
    /// One per entry of `cpus`, same order.
    pub cpus: Vec<Pos>,
    /// (address lower-cased, position, key path)
    pub vfio: Vec<(String, Pos, String)>,
    pub sockets: Vec<(String, Pos, String)>,
    pub host_ports: Vec<(u16, Pos, String)>,
}

/// A chain as loaded, with what its VMs claim on the node (for the cross-checks with `vms:`).
pub(crate) struct LoadedChain {
    pub def: ChainDef,
    /// Every VM's two socket paths.
    pub sockets: Vec<String>,
}

impl LoadedChain {
    /// How messages name the chain: `chains[0] (line 40)`.
    pub fn owner(&self) -> String {
        format!("{} (line {})", self.def.path, self.def.line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("120s"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    #[test]
    fn suggestions_within_two_edits() {
        assert_eq!(suggest("smpp", super::super::vm::VM_KEYS), Some("smp"));
        assert_eq!(suggest("qemu_di", super::super::vm::VM_KEYS), Some("qemu_id"));
        assert_eq!(suggest("frobnicate", super::super::vm::VM_KEYS), None);
        assert_eq!(suggest("4K", &["2M", "1G"]), None);
        assert_eq!(suggest("2m", &["2M", "1G"]), Some("2M"));
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
