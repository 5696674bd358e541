//! YAML text to a bounded, position-carrying node tree.
//!
//! The manifest is untrusted input (it may come from a vendor's repository or
//! from anyone able to open a pull request there), so this layer refuses the
//! classic YAML attacks before any typed parsing starts: alias expansion bombs,
//! deep nesting, huge documents, duplicate keys and custom tags. Scalars are
//! resolved with the YAML 1.2 core schema, the one Forge's own tooling uses.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::diagnostic::{Code, Diagnostic, Pos};

/// Largest manifest accepted, in bytes. Forge refuses manifests over 200 KB at
/// deploy; the bound also caps the work the YAML scanner can be made to do.
pub const MAX_MANIFEST_BYTES: usize = 200 * 1024;

/// Deepest nesting of sequences and mappings. Real manifests stay under 10;
/// the bound stops stack exhaustion in every recursive walk over the tree.
pub const MAX_DEPTH: usize = 32;

/// Most nodes in the tree after alias expansion. Stops "billion laughs"
/// documents, where a few aliases of aliases expand to billions of nodes.
pub const MAX_NODES: usize = 100_000;

/// Most scalar bytes in the tree after alias expansion. Stops a large string
/// anchored once and aliased thousands of times from exhausting memory.
pub const MAX_EXPANDED_BYTES: usize = 4 * 1024 * 1024;

/// One YAML value with the place it starts in the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key. Manifests only use scalar keys; other scalars (numbers,
/// booleans) are kept as their source text.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

impl Value {
    /// What the value is, in words a manifest author recognises.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Parse one YAML document into a node tree, or explain why not.
pub fn parse_document(source: &str) -> Result<Node, Diagnostic> {
    if source.len() > MAX_MANIFEST_BYTES {
        return Err(Diagnostic::error(
            Code::TooLarge,
            Pos::START,
            "",
            format!(
                "the manifest is {} bytes; Kiln and Forge accept at most {MAX_MANIFEST_BYTES} bytes",
                source.len()
            ),
            "move long text such as translations into separate files",
        ));
    }
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(source);
    loop {
        let (event, marker) = parser.next_token().map_err(|e| {
            let pos = pos_of(e.marker());
            Diagnostic::error(
                Code::YamlSyntax,
                pos,
                "",
                format!("YAML syntax error: {}", e.info()),
                "check indentation and quoting around this line; tabs are not allowed for indentation",
            )
        })?;
        if builder.feed(event, pos_of(&marker))? {
            break;
        }
    }
    builder.finish()
}

fn pos_of(marker: &Marker) -> Pos {
    Pos {
        line: u32::try_from(marker.line()).unwrap_or(u32::MAX),
        column: u32::try_from(marker.col()).unwrap_or(u32::MAX).saturating_add(1),
    }
}

/// A container under construction.
#[derive(Debug)]
enum Frame {
    Seq { anchor: usize, pos: Pos, items: Vec<Node> },
    Map { anchor: usize, pos: Pos, entries: Vec<(Key, Node)>, pending_key: Option<Key> },
}

#[derive(Debug, Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    documents: usize,
    nodes: usize,
    bytes: usize,
}

impl Builder {
    /// Consume one event; returns true at the end of the stream.
    fn feed(&mut self, event: Event, pos: Pos) -> Result<bool, Diagnostic> {
        match event {
            Event::StreamStart | Event::Nothing | Event::DocumentEnd => {}
            Event::StreamEnd => return Ok(true),
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(Diagnostic::error(
                        Code::YamlSyntax,
                        pos,
                        "",
                        "the manifest holds more than one YAML document",
                        "remove the second '---' and everything after it, or merge the documents",
                    ));
                }
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().ok_or_else(|| {
                    Diagnostic::error(
                        Code::YamlSyntax,
                        pos,
                        "",
                        "alias refers to an anchor that is not defined before it",
                        "define the '&anchor' before using '*anchor'",
                    )
                })?;
                self.count_expansion(&node, pos)?;
                self.push_value(node, pos)?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.count(text.len(), pos)?;
                let value = resolve_scalar(text, style, tag.as_ref(), pos)?;
                let node = Node { value, pos };
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push_value(node, pos)?;
            }
            Event::SequenceStart(anchor, tag) => {
                reject_tag(tag.as_ref(), pos, "seq")?;
                self.open(Frame::Seq { anchor, pos, items: Vec::new() }, pos)?;
            }
            Event::MappingStart(anchor, tag) => {
                reject_tag(tag.as_ref(), pos, "map")?;
                self.open(Frame::Map { anchor, pos, entries: Vec::new(), pending_key: None }, pos)?;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (anchor, node) = match self.stack.pop() {
                    Some(Frame::Seq { anchor, pos, items }) => {
                        (anchor, Node { value: Value::Seq(items), pos })
                    }
                    Some(Frame::Map { anchor, pos, entries, .. }) => {
                        (anchor, Node { value: Value::Map(entries), pos })
                    }
                    None => {
                        return Err(Diagnostic::error(
                            Code::YamlSyntax,
                            pos,
                            "",
                            "unbalanced YAML structure",
                            "check the brackets and indentation",
                        ));
                    }
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push_value(node, pos)?;
            }
        }
        Ok(false)
    }

    fn open(&mut self, frame: Frame, pos: Pos) -> Result<(), Diagnostic> {
        self.count(0, pos)?;
        if self.stack.len() >= MAX_DEPTH {
            return Err(Diagnostic::error(
                Code::TooDeep,
                pos,
                "",
                format!("the manifest nests deeper than {MAX_DEPTH} levels"),
                "flatten this structure; no Forge manifest key needs this much nesting",
            ));
        }
        self.stack.push(frame);
        Ok(())
    }

    fn count(&mut self, bytes: usize, pos: Pos) -> Result<(), Diagnostic> {
        self.nodes += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        if self.nodes > MAX_NODES || self.bytes > MAX_EXPANDED_BYTES {
            return Err(Diagnostic::error(
                Code::TooLarge,
                pos,
                "",
                format!(
                    "the manifest expands to more than {MAX_NODES} values or {MAX_EXPANDED_BYTES} bytes (aliases count every time they are used)"
                ),
                "remove repeated aliases ('*name') or split the data out of the manifest",
            ));
        }
        Ok(())
    }

    /// Charge an alias for every node and byte it repeats, so that expansion
    /// bombs hit the limits as they grow rather than after.
    fn count_expansion(&mut self, node: &Node, pos: Pos) -> Result<(), Diagnostic> {
        let mut todo = vec![node];
        while let Some(n) = todo.pop() {
            match &n.value {
                Value::Str(s) => self.count(s.len(), pos)?,
                Value::Seq(items) => {
                    self.count(0, pos)?;
                    todo.extend(items.iter());
                }
                Value::Map(entries) => {
                    self.count(0, pos)?;
                    for (k, v) in entries {
                        self.count(k.name.len(), pos)?;
                        todo.push(v);
                    }
                }
                _ => self.count(0, pos)?,
            }
        }
        // Depth of the expanded copy, counted from where it is inserted.
        if self.stack.len() + depth_of(node) > MAX_DEPTH + 1 {
            return Err(Diagnostic::error(
                Code::TooDeep,
                pos,
                "",
                format!("the manifest nests deeper than {MAX_DEPTH} levels once aliases are expanded"),
                "flatten this structure or stop nesting aliases",
            ));
        }
        Ok(())
    }

    fn push_value(&mut self, node: Node, pos: Pos) -> Result<(), Diagnostic> {
        match self.stack.last_mut() {
            None => {
                self.root = Some(node);
                Ok(())
            }
            Some(Frame::Seq { items, .. }) => {
                items.push(node);
                Ok(())
            }
            Some(Frame::Map { entries, pending_key, .. }) => match pending_key.take() {
                None => {
                    let name = match node.value {
                        Value::Str(s) => s,
                        Value::Int(i) => i.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Float(f) => f.to_string(),
                        Value::Null => String::new(),
                        Value::Seq(_) | Value::Map(_) => {
                            return Err(Diagnostic::error(
                                Code::YamlSyntax,
                                pos,
                                "",
                                "a list or mapping is used as a mapping key",
                                "mapping keys in a manifest are plain names such as 'key' or 'function'",
                            ));
                        }
                    };
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == name) {
                        return Err(Diagnostic::error(
                            Code::DuplicateKey,
                            node.pos,
                            name.as_str(),
                            format!(
                                "key {name:?} appears twice in the same mapping (first at line {})",
                                first.pos.line
                            ),
                            "remove one of the two entries; YAML does not allow repeated keys",
                        ));
                    }
                    *pending_key = Some(Key { name, pos: node.pos });
                    Ok(())
                }
                Some(key) => {
                    entries.push((key, node));
                    Ok(())
                }
            },
        }
    }

    fn finish(self) -> Result<Node, Diagnostic> {
        match self.root {
            Some(root) if root.value != Value::Null => Ok(root),
            _ => Err(Diagnostic::error(
                Code::Empty,
                Pos::START,
                "",
                "the manifest is empty",
                "start from 'app:', 'modules:' and 'permissions:' (see examples/issue-triage/manifest.yml)",
            )),
        }
    }
}

fn depth_of(node: &Node) -> usize {
    let mut max = 0;
    let mut todo = vec![(node, 1usize)];
    while let Some((n, d)) = todo.pop() {
        max = max.max(d);
        match &n.value {
            Value::Seq(items) => todo.extend(items.iter().map(|i| (i, d + 1))),
            Value::Map(entries) => todo.extend(entries.iter().map(|(_, v)| (v, d + 1))),
            _ => {}
        }
    }
    max
}

const CORE_TAG_PREFIX: &str = "tag:yaml.org,2002:";

fn reject_tag(tag: Option<&Tag>, pos: Pos, allowed_core: &str) -> Result<(), Diagnostic> {
    match tag {
        None => Ok(()),
        Some(t) if t.handle == CORE_TAG_PREFIX && t.suffix == allowed_core => Ok(()),
        Some(t) => Err(unsupported_tag(t, pos)),
    }
}

fn unsupported_tag(tag: &Tag, pos: Pos) -> Diagnostic {
    Diagnostic::error(
        Code::YamlSyntax,
        pos,
        "",
        format!("YAML tag '{}{}' is not supported in a manifest", tag.handle, tag.suffix),
        "remove the tag; write the value as plain YAML (quote it to force a string)",
    )
}

/// Resolve a scalar with the YAML 1.2 core schema: only plain (unquoted)
/// scalars become null, booleans or numbers.
fn resolve_scalar(
    text: String,
    style: TScalarStyle,
    tag: Option<&Tag>,
    pos: Pos,
) -> Result<Value, Diagnostic> {
    if let Some(tag) = tag {
        if tag.handle == CORE_TAG_PREFIX && tag.suffix == "str" {
            return Ok(Value::Str(text));
        }
        return Err(unsupported_tag(tag, pos));
    }
    if style != TScalarStyle::Plain {
        return Ok(Value::Str(text));
    }
    Ok(match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => Value::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => Value::Float(f64::NAN),
        _ => resolve_number(&text).unwrap_or(Value::Str(text)),
    })
}

fn resolve_number(text: &str) -> Option<Value> {
    if let Some(hex) = text.strip_prefix("0x") {
        return i64::from_str_radix(hex, 16).ok().map(Value::Int);
    }
    if let Some(oct) = text.strip_prefix("0o") {
        return i64::from_str_radix(oct, 8).ok().map(Value::Int);
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        // Integers too large for i64 stay numbers, as in JavaScript.
        return Some(
            text.parse::<i64>()
                .map(Value::Int)
                .unwrap_or_else(|_| Value::Float(text.parse().unwrap_or(f64::INFINITY))),
        );
    }
    let looks_float = digits.bytes().next().is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.bytes().any(|b| b.is_ascii_digit());
    if looks_float {
        return text.parse::<f64>().ok().map(Value::Float);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Node, Diagnostic> {
        parse_document(src)
    }

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        let node = parse("app:\n  id: x\n").unwrap();
        let Value::Map(entries) = node.value else { panic!("map") };
        let (key, value) = &entries[0];
        assert_eq!(key.pos, Pos { line: 1, column: 1 });
        let Value::Map(inner) = &value.value else { panic!("map") };
        assert_eq!(inner[0].0.pos, Pos { line: 2, column: 3 });
        assert_eq!(inner[0].1.pos, Pos { line: 2, column: 7 });
    }

    #[test]
    fn core_schema_scalars() {
        let node = parse("a: 1\nb: '1'\nc: true\nd: ~\ne: 1.5\nf: 0x10\ng: hello\nh: 1e3\n").unwrap();
        let Value::Map(e) = node.value else { panic!() };
        let values: Vec<_> = e.into_iter().map(|(_, v)| v.value).collect();
        assert_eq!(
            values,
            vec![
                Value::Int(1),
                Value::Str("1".into()),
                Value::Bool(true),
                Value::Null,
                Value::Float(1.5),
                Value::Int(16),
                Value::Str("hello".into()),
                Value::Float(1000.0),
            ]
        );
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut doc = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = 'a';
        for name in ['b', 'c', 'd', 'e', 'f', 'g', 'h', 'i'] {
            doc.push_str(&format!(
                "{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
            prev = name;
        }
        let err = parse(&doc).unwrap_err();
        assert_eq!(err.code, Code::TooLarge);
    }

    #[test]
    fn string_alias_amplification_is_refused() {
        let big = "x".repeat(150 * 1024);
        let mut doc = format!("a: &a \"{big}\"\nb: [");
        for _ in 0..40 {
            doc.push_str("*a, ");
        }
        doc.push_str("*a]\n");
        let err = parse(&doc).unwrap_err();
        assert_eq!(err.code, Code::TooLarge);
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let doc = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let err = parse(&doc).unwrap_err();
        assert!(matches!(err.code, Code::TooDeep | Code::YamlSyntax), "{err:?}");
        let doc =
            "a:\n".to_owned() + &(1..60).map(|i| format!("{}k{i}:\n", "  ".repeat(i))).collect::<String>();
        assert_eq!(parse(&doc).unwrap_err().code, Code::TooDeep);
    }

    #[test]
    fn duplicate_keys_are_refused_with_both_lines() {
        let err = parse("app:\n  id: a\n  id: b\n").unwrap_err();
        assert_eq!(err.code, Code::DuplicateKey);
        assert_eq!(err.pos, Pos { line: 3, column: 3 });
        assert!(err.message.contains("first at line 2"), "{}", err.message);
    }

    #[test]
    fn custom_tags_and_multiple_documents_are_refused() {
        assert_eq!(parse("a: !!python/object x\n").unwrap_err().code, Code::YamlSyntax);
        assert_eq!(parse("a: 1\n---\nb: 2\n").unwrap_err().code, Code::YamlSyntax);
        assert_eq!(
            parse("a: !!str 12\n").unwrap().value,
            Value::Map(vec![(
                Key { name: "a".into(), pos: Pos { line: 1, column: 1 } },
                Node { value: Value::Str("12".into()), pos: Pos { line: 1, column: 10 } }
            )])
        );
    }

    #[test]
    fn empty_and_oversized_documents_are_refused() {
        assert_eq!(parse("").unwrap_err().code, Code::Empty);
        assert_eq!(parse("# only a comment\n").unwrap_err().code, Code::Empty);
        let big = format!("a: \"{}\"\n", "x".repeat(MAX_MANIFEST_BYTES));
        assert_eq!(parse(&big).unwrap_err().code, Code::TooLarge);
    }
}
