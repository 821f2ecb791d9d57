//! A small YAML tree that remembers where every key and value was written.
//!
//! `serde_yaml` cannot give the position of a *value* and stops at the first error, and topology
//! errors must point at `file:line:column` and all be reported at once. So the file is read
//! with yaml-rust2's event parser (which carries a mark per event) into this tree; the loader
//! then converts it to the model by hand. Duplicate keys are reported here (YAML forbids them,
//! most parsers silently keep the last one); aliases are expanded by copying the anchored node.
//! Both expansion and nesting are bounded ([`MAX_NODES`], [`MAX_DEPTH`]) so that no input can
//! exhaust memory or the stack: a file this tool reads is never trusted that far.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn from_marker(m: &Marker) -> Pos {
        // yaml-rust2 0.10: line is 1-based, col is 0-based.
        Pos { line: m.line().max(1), column: m.col() + 1 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `plain` is false for quoted and block scalars and for tagged ones: they are always strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in file order; keys are nodes too, so their positions are known.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// YAML null: an empty plain value, `~` or `null`.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }
    /// What kind of node this is, for "expected X, found Y" messages.
    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            _ if self.is_null() => "nothing",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a map",
        }
    }
}

/// A problem found while reading the YAML text itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub pos: Pos,
    /// Key path of the innermost node being read (empty at the top).
    pub path: String,
    pub message: String,
}

/// The result of [`parse`]: the tree if the text was well-formed, and every problem found.
#[derive(Debug)]
pub struct Parsed {
    pub root: Option<Node>,
    pub errors: Vec<YamlError>,
}

/// Deepest nesting of lists and maps accepted. yaml-rust2's own loader recurses once per level
/// and a 100k-deep list overflowed the stack (SIGABRT); topology files nest fewer than 10 deep.
pub const MAX_DEPTH: usize = 256;

/// Most nodes a document may hold once aliases are expanded. Aliases are expanded by copying,
/// so a "billion laughs" file of a few lines used to grow to gigabytes; a real topology has a
/// few thousand nodes at most.
pub const MAX_NODES: usize = 100_000;

/// Parse `text` (a single YAML document) into a marked tree.
pub fn parse(text: &str) -> Parsed {
    // Editors on Windows write a UTF-8 byte order mark; the scanner would make it part of the
    // first key (`\u{feff}metadata: unknown key`).
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut b = Builder::default();
    let mut parser = Parser::new_from_str(text);
    // Pull events one at a time instead of `Parser::load`, which recurses per nesting level:
    // that way the depth is checked before anything deep happens.
    loop {
        let (ev, mark) = match parser.next_token() {
            Ok(e) => e,
            Err(e) => {
                let path = b.current_path();
                let mut message = format!("YAML syntax error: {}", e.info());
                // yaml-rust2 (0.10 to 0.13) rejects the valid `[key: {a: 1}]`; say how to write it instead.
                if b.stack.iter().any(|f| matches!(f, Frame::Seq { .. })) && e.info().contains("flow mapping") {
                    message.push_str(
                        " (write `[{key: {...}}]` or a block list item `- key: {...}` instead of `[key: {...}]`)",
                    );
                }
                b.errors.push(YamlError { pos: Pos::from_marker(e.marker()), path, message });
                return Parsed { root: None, errors: b.errors };
            }
        };
        if ev == Event::StreamEnd {
            break;
        }
        if let Err(e) = b.on_event(ev, mark) {
            b.errors.push(e);
            return Parsed { root: None, errors: b.errors };
        }
    }
    Parsed { root: b.root, errors: b.errors }
}

/// Append a key or an index to a key path (`vms` + `[0]`, `vms[0]` + `smp`).
pub fn join(path: &str, key: &str) -> String {
    if key.starts_with('[') || path.is_empty() { format!("{path}{key}") } else { format!("{path}.{key}") }
}

/// `start` in both variants is [`Builder::total`] when the collection began, so its expanded size
/// is known when it ends (for anchors).
enum Frame {
    Seq { pos: Pos, path: String, anchor: usize, start: usize, items: Vec<Node> },
    Map { pos: Pos, path: String, anchor: usize, start: usize, entries: Vec<(Node, Node)>, key: Option<Node> },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    /// Anchored nodes and their size in nodes (aliases inside them expanded).
    anchors: HashMap<usize, (Node, usize)>,
    /// Nodes in the tree so far, aliases expanded: bounded by [`MAX_NODES`].
    total: usize,
    /// Nodes held in `anchors` (a copy of each anchored subtree, nested anchors each holding
    /// their own): bounded by [`MAX_NODES`] too. Uncounted, 64 nested anchors around a large
    /// list took 500 MB with no alias at all.
    anchored: usize,
    root: Option<Node>,
    documents: usize,
    errors: Vec<YamlError>,
}

impl Builder {
    /// Key path of the node that the next event belongs to.
    fn current_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Seq { path, items, .. }) => join(path, &format!("[{}]", items.len())),
            Some(Frame::Map { path, key: Some(k), .. }) => join(path, k.as_scalar().unwrap_or("?")),
            Some(Frame::Map { path, .. }) => path.clone(),
        }
    }

    /// Add `n` nodes to the running total, refusing to go past [`MAX_NODES`].
    fn grow(&mut self, n: usize, pos: Pos) -> Result<(), YamlError> {
        self.total = self.total.saturating_add(n);
        if self.total > MAX_NODES {
            return Err(YamlError {
                pos,
                path: self.current_path(),
                message: format!(
                    "the document expands to more than {MAX_NODES} nodes (aliases are copied); refusing to load it"
                ),
            });
        }
        Ok(())
    }

    fn complete(&mut self, node: Node, anchor: usize, size: usize) -> Result<(), YamlError> {
        if anchor != 0 {
            self.anchored = self.anchored.saturating_add(size);
            if self.anchored > MAX_NODES {
                return Err(YamlError {
                    pos: node.pos,
                    path: self.current_path(),
                    message: format!(
                        "anchored values hold more than {MAX_NODES} nodes in all (each anchor keeps a copy); refusing to load it"
                    ),
                });
            }
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
        Ok(())
    }

    fn check_duplicates(&mut self, path: &str, entries: &[(Node, Node)]) {
        let mut seen: HashMap<&str, Pos> = HashMap::new();
        for (k, _) in entries {
            if let Some(name) = k.as_scalar() {
                if let Some(first) = seen.get(name) {
                    self.errors.push(YamlError {
                        pos: k.pos,
                        path: join(path, name),
                        message: format!("duplicate key `{name}` (first at line {})", first.line),
                    });
                } else {
                    seen.insert(name, k.pos);
                }
            }
        }
    }
}

impl Builder {
    /// Take one parser event. An error ends the parse (the tree would be unbounded otherwise).
    fn on_event(&mut self, ev: Event, mark: Marker) -> Result<(), YamlError> {
        let pos = Pos::from_marker(&mark);
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents == 2 {
                    self.errors.push(YamlError {
                        pos,
                        path: String::new(),
                        message: "a topology file holds one YAML document; found a second".into(),
                    });
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.grow(1, pos)?;
                let plain = style == TScalarStyle::Plain && tag.is_none();
                self.complete(Node { pos, value: Value::Scalar { text, plain } }, anchor, 1)?;
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(YamlError {
                        pos,
                        path: self.current_path(),
                        message: format!("lists and maps nest deeper than {MAX_DEPTH} levels; refusing to load it"),
                    });
                }
                self.grow(1, pos)?;
                let path = self.current_path();
                let start = self.total;
                self.stack.push(if matches!(ev, Event::SequenceStart(..)) {
                    Frame::Seq { pos, path, anchor, start, items: Vec::new() }
                } else {
                    Frame::Map { pos, path, anchor, start, entries: Vec::new(), key: None }
                });
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { pos, anchor, start, items, .. }) = self.stack.pop() {
                    let size = self.total - start + 1;
                    self.complete(Node { pos, value: Value::Seq(items) }, anchor, size)?;
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map { mut pos, path, anchor, start, entries, .. }) = self.stack.pop() {
                    // A block mapping's start mark comes after its first key: use the key's position.
                    if let Some((k, _)) = entries.first()
                        && (k.pos.line, k.pos.column) < (pos.line, pos.column)
                    {
                        pos = k.pos;
                    }
                    self.check_duplicates(&path, &entries);
                    let size = self.total - start + 1;
                    self.complete(Node { pos, value: Value::Map(entries) }, anchor, size)?;
                }
            }
            Event::Alias(id) => {
                // The parser already rejects unknown anchors; keep the alias' own position.
                // Count the copy before making it, so a billion laughs never gets allocated.
                let size = self.anchors.get(&id).map_or(1, |(_, size)| *size);
                self.grow(size, pos)?;
                let node = match self.anchors.get(&id) {
                    Some((n, _)) => Node { pos, value: n.value.clone() },
                    None => Node { pos, value: Value::Scalar { text: String::new(), plain: true } },
                };
                self.complete(node, 0, size)?;
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(n: &Node) -> &[(Node, Node)] {
        match &n.value {
            Value::Map(e) => e,
            v => panic!("not a map: {v:?}"),
        }
    }

    #[test]
    fn keys_and_values_carry_positions() {
        let p = parse("a: 1\nb:\n  c: 'x'\n  d: [1, 2]\n");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let root = p.root.unwrap();
        let e = map(&root);
        assert_eq!(e[0].0.pos, Pos { line: 1, column: 1 });
        assert_eq!(e[0].1.pos, Pos { line: 1, column: 4 });
        let b = map(&e[1].1);
        assert_eq!(b[0].0.pos, Pos { line: 3, column: 3 });
        assert_eq!(b[0].1.pos, Pos { line: 3, column: 6 });
        assert_eq!(b[0].1.value, Value::Scalar { text: "x".into(), plain: false });
        match &b[1].1.value {
            Value::Seq(items) => assert_eq!(items[1].pos, Pos { line: 4, column: 10 }),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn duplicate_keys_are_reported_with_both_lines() {
        let p = parse("nodes:\n  DUT1: {}\n  DUT1: {}\n");
        assert_eq!(p.errors.len(), 1);
        let e = &p.errors[0];
        assert_eq!(e.pos, Pos { line: 3, column: 3 });
        assert_eq!(e.path, "nodes.DUT1");
        assert!(e.message.contains("first at line 2"), "{}", e.message);
    }

    #[test]
    fn syntax_errors_carry_position_and_path() {
        let p = parse("nodes:\n  DUT1:\n    host: [1, 2\n");
        assert!(p.root.is_none());
        assert_eq!(p.errors.len(), 1);
        assert!(p.errors[0].message.starts_with("YAML syntax error"), "{:?}", p.errors);
        assert_eq!(p.errors[0].path, "nodes.DUT1.host[2]");
        assert_eq!(p.errors[0].pos.line, 4);
    }

    #[test]
    fn aliases_copy_the_anchored_node() {
        let p = parse("a: &x {k: v}\nb: *x\n");
        let root = p.root.unwrap();
        let e = map(&root);
        assert_eq!(e[1].1.value, e[0].1.value);
        assert_eq!(e[1].1.pos.line, 2);
    }

    #[test]
    fn block_maps_start_at_their_first_key() {
        let root = parse(
            "top:
  - a: 1
    b: 2
",
        )
        .root
        .unwrap();
        match &map(&root)[0].1.value {
            Value::Seq(items) => assert_eq!(items[0].pos, Pos { line: 2, column: 5 }),
            v => panic!("{v:?}"),
        }
        assert_eq!(root.pos, Pos { line: 1, column: 1 });
    }

    #[test]
    fn implicit_pair_with_flow_map_in_flow_list_gets_a_hint() {
        let p = parse("a: [k: {x: 1}]\n");
        assert!(p.errors[0].message.contains("instead of `[key: {...}]`"), "{:?}", p.errors);
    }

    #[test]
    fn nulls_and_quoting() {
        let p = parse("a:\nb: ~\nc: 'null'\nd: !!str 12\n");
        let root = p.root.unwrap();
        let e = map(&root);
        assert!(e[0].1.is_null() && e[1].1.is_null());
        assert!(!e[2].1.is_null());
        assert_eq!(e[3].1.value, Value::Scalar { text: "12".into(), plain: false });
    }

    #[test]
    fn second_document_is_an_error() {
        let p = parse("a: 1\n---\nb: 2\n");
        assert_eq!(p.errors.len(), 1);
        assert_eq!(p.errors[0].pos.line, 2);
    }

    #[test]
    fn regression_yaml_billion_laughs() {
        // Nine levels of ten aliases each: 10^9 nodes when copied, once 6 GB of memory.
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let start = std::time::Instant::now();
        let p = parse(&text);
        assert!(p.root.is_none());
        let e = p.errors.last().unwrap();
        assert!(e.message.contains("more than 100000 nodes"), "{e:?}");
        assert!(e.pos.line > 1 && e.pos.line <= 10, "{e:?}");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    /// Each anchor kept a copy of its subtree outside the node count: 64 anchors nested around
    /// one 99000-item list (a 300 KB file, no alias at all) took 500 MB. The copies count now.
    #[test]
    fn regression_nested_anchors_do_not_multiply_memory() {
        let mut text = String::from("x:\n");
        for i in 0..64 {
            text.push_str(&format!("{}- &a{i}\n", "  ".repeat(i + 1)));
        }
        text.push_str(&format!("{}- [{}]\n", "  ".repeat(65), vec!["x"; 99_000].join(", ")));
        let p = parse(&text);
        assert!(p.root.is_none(), "loaded");
        assert!(p.errors.iter().any(|e| e.message.contains("anchored values hold more than")), "{:?}", p.errors);
        // A topology's usual anchors are fine.
        let ok = parse("d: &d {mem: 2048, smp: 2}\nvms:\n  - {<<: *d, node: DUT1}\n  - *d\n");
        assert!(ok.errors.is_empty(), "{:?}", ok.errors);
    }

    #[test]
    fn regression_yaml_deep_nesting_overflows_the_stack() {
        // A 100k-deep block list made yaml-rust2's recursive loader abort the process.
        let mut text = String::new();
        for i in 0..100_000 {
            text.push_str(&" ".repeat(i.min(300)));
            text.push_str("-\n");
        }
        let deep_flow = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let p = parse(&text);
        assert!(p.root.is_none());
        let e = p.errors.last().unwrap();
        assert!(e.message.contains("deeper than 256"), "{e:?}");
        assert_eq!(e.pos.line, MAX_DEPTH + 1);
        // yaml-rust2's scanner bounds flow nesting itself; either way it is an error, not a crash.
        let p = parse(&deep_flow);
        assert!(p.root.is_none() && !p.errors.is_empty());
        // 256 levels are still fine.
        let ok: String = (0..MAX_DEPTH).map(|i| format!("{}-\n", " ".repeat(i))).collect();
        let p = parse(&ok);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
    }

    #[test]
    fn anchors_within_the_bound_still_expand() {
        let p = parse("a: &a [1, 2, 3]\nb: [*a, *a, *a]\n");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        match &map(&p.root.unwrap())[1].1.value {
            Value::Seq(items) => assert_eq!(
                items[2].value,
                Value::Seq(vec![
                    Node { pos: Pos { line: 1, column: 8 }, value: Value::Scalar { text: "1".into(), plain: true } },
                    Node { pos: Pos { line: 1, column: 11 }, value: Value::Scalar { text: "2".into(), plain: true } },
                    Node { pos: Pos { line: 1, column: 14 }, value: Value::Scalar { text: "3".into(), plain: true } },
                ])
            ),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn regression_utf8_bom_is_part_of_the_first_key() {
        let p = parse("\u{feff}metadata: {}\n");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(map(&p.root.unwrap())[0].0.as_scalar(), Some("metadata"));
    }
}
