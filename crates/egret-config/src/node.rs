//! A YAML document as a tree of nodes that remember their line, and a serde `Deserializer`
//! over that tree which knows the field path it is at.
//!
//! serde-saphyr parses the text (anchors, merge keys, multi-document streams) into [`Node`]s
//! through `Spanned`; typed Istio resources are then deserialized from the tree by
//! [`NodeDe`]. Doing it in two steps gives every error and warning a field path
//! (`spec.http[0].retries`) and a line, lets unknown fields become warnings instead of being
//! dropped, and lets later passes find the line of any field by its path.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

/// One YAML node and where it starts (1-based line and column).
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub line: u32,
    pub column: u32,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in document order.
    Map(Vec<(Node, Node)>),
}

impl Value {
    fn describe(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::UInt(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value of key `key` in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The key node of `key` in a mapping node (its line is the line of `key:`).
    pub fn key_node(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(k, _)| k),
            _ => None,
        }
    }

    /// The line of the field at `path` (`spec.http[0].route`), relative to this node: the
    /// line of the deepest part of the path that exists (so a missing field reports the line
    /// of its parent). For a mapping key the line is the key's, which is where users look.
    pub fn line_of(&self, path: &str) -> u32 {
        let mut node = self;
        let mut line = self.line;
        for seg in parse_path(path) {
            let next = match seg {
                Seg::Key(k) => match node.key_node(k) {
                    Some(key) => {
                        line = key.line;
                        node.get(k)
                    }
                    None => None,
                },
                Seg::Index(i) => match &node.value {
                    Value::Seq(items) => items.get(i).inspect(|n| line = n.line),
                    _ => None,
                },
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        line
    }

    /// The node at `path`, if every part of the path exists.
    pub fn at(&self, path: &str) -> Option<&Node> {
        let mut node = self;
        for seg in parse_path(path) {
            node = match seg {
                Seg::Key(k) => node.get(k)?,
                Seg::Index(i) => match &node.value {
                    Value::Seq(items) => items.get(i)?,
                    _ => return None,
                },
            };
        }
        Some(node)
    }
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// Splits `a.b[2].c` into segments. Keys containing `.` or `[` cannot be addressed, which is
/// fine for Istio field names (label keys never appear in paths we look up).
fn parse_path(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else { break };
            if let Ok(i) = r[..end].parse() {
                out.push(Seg::Index(i));
            }
            rest = &r[end + 1..];
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Parsing: serde-saphyr -> Node

/// The node's value as serde-saphyr hands it over; children are spanned again.
struct RawValue(Value);

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<RawValue>::deserialize(d)?;
        Ok(Node {
            line: s.referenced.line() as u32,
            column: s.referenced.column() as u32,
            value: s.value.0,
        })
    }
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor).map(RawValue)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::UInt(v),
        })
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        u64::try_from(v)
            .map(Value::UInt)
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        RawValue::deserialize(d).map(|v| v.0)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = seq.next_element::<Node>()? {
            items.push(n);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<Node>()? {
            let v = map.next_value::<Node>()?;
            entries.push((k, v));
        }
        Ok(Value::Map(entries))
    }
}

/// A YAML syntax error with the parser's line (1-based; 0 when unknown).
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub line: u32,
    pub message: String,
}

/// Parses a (multi-document) YAML text. Documents that are empty or only comments are
/// dropped. Returns the documents in order.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    // serde-saphyr's default budget counts over the whole file: at most 1,024 documents,
    // 250,000 nodes and 1,000,000 parser events, so it refused one file of 10,000
    // ServiceEntries (issue 7). Without aliases those counts grow only with the text's length,
    // and the text is already in memory, so they are lifted. The limits that guard against a
    // short text becoming a huge tree keep their defaults: aliases (`max_aliases`,
    // `alias_limits`), nesting depth, total scalar bytes (64 MiB).
    let options = serde_saphyr::options! {
        with_snippet: false,
        budget: serde_saphyr::budget! {
            max_documents: usize::MAX,
            max_nodes: usize::MAX,
            max_events: usize::MAX,
        },
    };
    let docs: Result<Vec<Option<Node>>, _> = serde_saphyr::from_str_multiple_with_options::<
        Option<Node>,
        Vec<Option<Node>>,
    >(text, options);
    match docs {
        Ok(docs) => Ok(docs
            .into_iter()
            .flatten()
            .filter(|n| n.value != Value::Null)
            .collect()),
        Err(e) => {
            let line = e.location().map(|l| l.line() as u32).unwrap_or(0);
            let mut message = e.to_string();
            // The parser's message may end with its own position; we print ours in front.
            if let Some(i) = message.find(" at line ") {
                message.truncate(i);
            }
            Err(SyntaxError { line, message })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Typed deserialization from the tree, with paths.

/// An error found while deserializing a typed resource from a [`Node`] tree.
#[derive(Debug, Clone, PartialEq)]
pub struct DeError {
    /// Field path, e.g. `spec.ports[0].number`; empty until the error leaves the node.
    pub path: Option<String>,
    pub line: u32,
    pub message: String,
    /// For `missing field` errors: the field that is missing (appended to the path).
    missing: Option<&'static str>,
}

impl DeError {
    fn at(mut self, path: &str, line: u32) -> Self {
        if self.path.is_none() {
            let mut p = path.to_string();
            if let Some(field) = self.missing.take() {
                push_key(&mut p, field);
            }
            self.path = Some(p);
            self.line = line;
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            path: None,
            line: 0,
            message: msg.to_string(),
            missing: None,
        }
    }
    fn missing_field(field: &'static str) -> Self {
        DeError {
            path: None,
            line: 0,
            message: "required field is missing".into(),
            missing: Some(field),
        }
    }
}

/// A mapping key the target type does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    pub path: String,
    pub line: u32,
}

/// Collects what deserialization noticed but did not fail on.
#[derive(Default)]
pub struct DeContext {
    pub unknown: RefCell<Vec<UnknownField>>,
}

/// Deserializes `T` from `node`, whose field path is `path`.
pub fn from_node<'a, T: Deserialize<'a>>(
    node: &'a Node,
    path: &str,
    ctx: &DeContext,
) -> Result<T, DeError> {
    T::deserialize(NodeDe {
        node,
        path: path.to_string(),
        ctx,
    })
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

fn child_key(path: &str, key: &str) -> String {
    let mut p = path.to_string();
    push_key(&mut p, key);
    p
}

/// A serde Deserializer over one node.
pub struct NodeDe<'a, 'c> {
    node: &'a Node,
    path: String,
    ctx: &'c DeContext,
}

impl<'a, 'c> NodeDe<'a, 'c> {
    fn wrap<T>(&self, r: Result<T, DeError>) -> Result<T, DeError> {
        r.map_err(|e| e.at(&self.path, self.node.line))
    }

    fn type_error(&self, expected: &str) -> DeError {
        DeError {
            path: Some(self.path.clone()),
            line: self.node.line,
            message: format!("expected {expected}, found {}", self.node.value.describe()),
            missing: None,
        }
    }
}

macro_rules! forward_int {
    ($($method:ident => $what:expr),*) => {$(
        fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
            let r = match &self.node.value {
                Value::Int(i) => visitor.visit_i64(*i),
                Value::UInt(u) => visitor.visit_u64(*u),
                _ => return Err(self.type_error($what)),
            };
            self.wrap(r)
        }
    )*};
}

impl<'a, 'c> de::Deserializer<'a> for NodeDe<'a, 'c> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = match &self.node.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::UInt(u) => visitor.visit_u64(*u),
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Str(s) => visitor.visit_borrowed_str(s),
            Value::Seq(items) => visitor.visit_seq(SeqDe {
                items: items.iter(),
                index: 0,
                path: &self.path,
                ctx: self.ctx,
            }),
            Value::Map(entries) => {
                visitor.visit_map(MapDe::new(entries.iter().collect(), &self.path, self.ctx))
            }
        };
        self.wrap(r)
    }

    fn deserialize_bool<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Bool(b) => self.wrap(visitor.visit_bool(*b)),
            _ => Err(self.type_error("true or false")),
        }
    }

    forward_int! {
        deserialize_i8 => "an integer", deserialize_i16 => "an integer",
        deserialize_i32 => "an integer", deserialize_i64 => "an integer",
        deserialize_u8 => "an integer", deserialize_u16 => "an integer",
        deserialize_u32 => "an integer", deserialize_u64 => "an integer"
    }

    fn deserialize_f32<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = match &self.node.value {
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::UInt(u) => visitor.visit_u64(*u),
            _ => return Err(self.type_error("a number")),
        };
        self.wrap(r)
    }

    fn deserialize_char<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Str(s) => self.wrap(visitor.visit_borrowed_str(s)),
            _ => Err(self.type_error("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = match &self.node.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(NodeDe {
                node: self.node,
                path: self.path.clone(),
                ctx: self.ctx,
            }),
        };
        self.wrap(r)
    }

    fn deserialize_unit<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Null => self.wrap(visitor.visit_unit()),
            _ => Err(self.type_error("null")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let r = visitor.visit_newtype_struct(NodeDe {
            node: self.node,
            path: self.path.clone(),
            ctx: self.ctx,
        });
        self.wrap(r)
    }

    fn deserialize_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Seq(items) => {
                let r = visitor.visit_seq(SeqDe {
                    items: items.iter(),
                    index: 0,
                    path: &self.path,
                    ctx: self.ctx,
                });
                self.wrap(r)
            }
            // An empty value (`hosts:` with nothing after it) is an empty list, as Kubernetes
            // reads it.
            Value::Null => self.wrap(visitor.visit_seq(SeqDe {
                items: [].iter(),
                index: 0,
                path: &self.path,
                ctx: self.ctx,
            })),
            _ => Err(self.type_error("a list")),
        }
    }

    fn deserialize_tuple<V: Visitor<'a>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Map(entries) => {
                let r =
                    visitor.visit_map(MapDe::new(entries.iter().collect(), &self.path, self.ctx));
                self.wrap(r)
            }
            Value::Null => {
                self.wrap(visitor.visit_map(MapDe::new(Vec::new(), &self.path, self.ctx)))
            }
            _ => Err(self.type_error("a mapping")),
        }
    }

    fn deserialize_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let entries: Vec<&(Node, Node)> = match &self.node.value {
            Value::Map(entries) => entries.iter().collect(),
            Value::Null => Vec::new(),
            _ => return Err(self.type_error("a mapping")),
        };
        let mut known = Vec::with_capacity(entries.len());
        for e in entries {
            match e.0.as_str() {
                Some(k) if fields.contains(&k) => known.push(e),
                Some(k) => {
                    self.ctx.unknown.borrow_mut().push(UnknownField {
                        path: child_key(&self.path, k),
                        line: e.0.line,
                    });
                }
                None => {
                    return Err(DeError {
                        path: Some(self.path.clone()),
                        line: e.0.line,
                        message: format!(
                            "field names must be strings, found {}",
                            e.0.value.describe()
                        ),
                        missing: None,
                    })
                }
            }
        }
        let r = visitor.visit_map(MapDe::new(known, &self.path, self.ctx));
        self.wrap(r)
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Str(s) => self.wrap(visitor.visit_enum(s.as_str().into_deserializer())),
            // Protobuf enums may also be written as numbers.
            Value::Int(i) => match u32::try_from(*i) {
                Ok(i) => self.wrap(visitor.visit_enum(i.into_deserializer())),
                Err(_) => Err(self.type_error("an enum name")),
            },
            _ => Err(self.type_error("an enum name")),
        }
    }

    fn deserialize_identifier<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

struct SeqDe<'a, 'p, 'c> {
    items: std::slice::Iter<'a, Node>,
    index: usize,
    path: &'p str,
    ctx: &'c DeContext,
}

impl<'a> de::SeqAccess<'a> for SeqDe<'a, '_, '_> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'a>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(node) = self.items.next() else {
            return Ok(None);
        };
        let path = format!("{}[{}]", self.path, self.index);
        self.index += 1;
        let line = node.line;
        seed.deserialize(NodeDe {
            node,
            path: path.clone(),
            ctx: self.ctx,
        })
        .map(Some)
        .map_err(|e| e.at(&path, line))
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapDe<'a, 'p, 'c> {
    entries: std::vec::IntoIter<&'a (Node, Node)>,
    value: Option<(&'a Node, String)>,
    path: &'p str,
    ctx: &'c DeContext,
}

impl<'a, 'p, 'c> MapDe<'a, 'p, 'c> {
    fn new(entries: Vec<&'a (Node, Node)>, path: &'p str, ctx: &'c DeContext) -> Self {
        MapDe {
            entries: entries.into_iter(),
            value: None,
            path,
            ctx,
        }
    }
}

impl<'a> de::MapAccess<'a> for MapDe<'a, '_, '_> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((k, v)) = self.entries.next() else {
            return Ok(None);
        };
        let key_text = match &k.value {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::UInt(u) => u.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Float(f) => f.to_string(),
            _ => String::from("?"),
        };
        let path = child_key(self.path, &key_text);
        let line = k.line;
        // Keys that are numbers or booleans in YAML are still strings to Kubernetes.
        let key = match &k.value {
            Value::Str(s) => seed.deserialize(s.as_str().into_deserializer()),
            Value::Int(_) | Value::UInt(_) | Value::Bool(_) | Value::Float(_) => {
                seed.deserialize(key_text.clone().into_deserializer())
            }
            _ => Err(de::Error::custom(format!(
                "mapping keys must be strings, found {}",
                k.value.describe()
            ))),
        }
        .map_err(|e: DeError| e.at(&path, line))?;
        self.value = Some((v, path));
        Ok(Some(key))
    }
    fn next_value_seed<T: DeserializeSeed<'a>>(&mut self, seed: T) -> Result<T::Value, DeError> {
        let Some((node, path)) = self.value.take() else {
            return Err(de::Error::custom("value without key"));
        };
        let line = node.line;
        seed.deserialize(NodeDe {
            node,
            path: path.clone(),
            ctx: self.ctx,
        })
        .map_err(|e| e.at(&path, line))
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Deserialize, Debug, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct Port {
        number: Option<u32>,
        name: String,
    }

    #[derive(Deserialize, Debug, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct Spec {
        hosts: Vec<String>,
        ports: Vec<Port>,
        labels: BTreeMap<String, String>,
    }

    #[test]
    fn nodes_have_lines_and_paths() {
        let text = "# c\n---\nspec:\n  hosts:\n    - a.com\n  ports:\n    - number: 80\n      name: http\n---\n# only a comment\n---\nx: 1\n";
        let docs = parse_documents(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].line_of("spec.ports[0].name"), 8);
        assert_eq!(docs[0].line_of("spec.ports[0].missing"), 7);
        assert_eq!(docs[1].line, 12);
        let ctx = DeContext::default();
        let spec: Spec = from_node(docs[0].get("spec").unwrap(), "spec", &ctx).unwrap();
        assert_eq!(spec.hosts, vec!["a.com"]);
        assert_eq!(spec.ports[0].number, Some(80));
    }

    #[test]
    fn type_errors_and_unknown_fields_have_paths() {
        let text = "spec:\n  hosts: [a]\n  ports:\n  - number: eighty\n";
        let docs = parse_documents(text).unwrap();
        let ctx = DeContext::default();
        let err = from_node::<Spec>(docs[0].get("spec").unwrap(), "spec", &ctx).unwrap_err();
        assert_eq!(err.path.as_deref(), Some("spec.ports[0].number"));
        assert_eq!(err.line, 4);
        assert!(
            err.message.contains("expected an integer"),
            "{}",
            err.message
        );

        let text = "spec:\n  hosts: [a]\n  bogus:\n    x: 1\n  ports:\n  - number: 70000\n";
        let docs = parse_documents(text).unwrap();
        let ctx = DeContext::default();
        let _ = from_node::<Spec>(docs[0].get("spec").unwrap(), "spec", &ctx);
        assert_eq!(
            ctx.unknown.borrow()[0],
            UnknownField {
                path: "spec.bogus".into(),
                line: 3
            }
        );
    }

    #[test]
    fn syntax_errors_have_lines() {
        let err = parse_documents("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.line >= 2, "{err:?}");
    }

    #[test]
    fn anchors_and_merge_keys() {
        let docs = parse_documents("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n").unwrap();
        assert_eq!(
            docs[0].at("other.x").map(|n| &n.value),
            Some(&Value::Int(1))
        );
    }
}
