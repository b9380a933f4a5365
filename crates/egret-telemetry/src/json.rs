//! Envoy's JSON access-log format (`json_format`, Istio's `accessLogEncoding: JSON`).
//!
//! What Envoy 1.40 does, and so this module: one object per line; keys sorted bytewise at
//! every level; a value that is exactly one operator keeps its type (numbers for
//! RESPONSE_CODE, BYTES_*, DURATION; `null` when missing); a value with literal text or several
//! operators is a string, missing operators printing `-`; strings escaped like JSON requires
//! (`"` `\` and control characters; `/` and non-ASCII UTF-8 kept as is), bytes that are not
//! UTF-8 written as `\u00XX`.

use egret_core::{LogHeaders, LogRecord};

use crate::format::{parse_segments, segment_headers, Segment, Value};
use crate::FormatError;

/// Istio's default JSON keys and operators (`EnvoyJSONLogFormatIstio`).
pub const ISTIO_DEFAULT_JSON: &[(&str, &str)] = &[
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
];

/// A compiled JSON access-log format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonFormat {
    root: Object,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Object {
    /// Sorted by key; each key stored already escaped and quoted, with its `:`.
    fields: Box<[(Box<[u8]>, Node)]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Format(Box<[Segment]>),
    Object(Object),
    List(Box<[Node]>),
}

impl JsonFormat {
    /// Istio's default JSON format ([`ISTIO_DEFAULT_JSON`]).
    pub fn istio_default() -> JsonFormat {
        let map = ISTIO_DEFAULT_JSON
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String((*v).to_owned())))
            .collect::<serde_json::Map<_, _>>();
        // Constant operators known to parse (tested); the fallback keeps this panic-free.
        JsonFormat::from_map(&map).unwrap_or(JsonFormat {
            root: Object {
                fields: Box::new([]),
            },
        })
    }

    /// A user format: a JSON object whose values are format strings, nested objects or lists.
    pub fn parse(json: &str) -> Result<JsonFormat, FormatError> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| FormatError::Json(e.to_string()))?;
        match v {
            serde_json::Value::Object(map) => JsonFormat::from_map(&map),
            _ => Err(FormatError::Json(
                "the format must be a JSON object".to_owned(),
            )),
        }
    }

    /// Same as [`JsonFormat::parse`], from an already parsed object (e.g. a YAML mapping).
    pub fn from_map(
        map: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<JsonFormat, FormatError> {
        Ok(JsonFormat {
            root: compile_object(map, "")?,
        })
    }

    /// The headers this format prints.
    pub fn headers(&self) -> LogHeaders {
        let mut segments = Vec::new();
        collect_segments(&self.root, &mut segments);
        segment_headers(segments)
    }

    /// Appends one JSON object and `\n` to `out`.
    pub fn write(&self, rec: &LogRecord, out: &mut Vec<u8>) {
        write_object(&self.root, rec, out);
        out.push(b'\n');
    }

    /// Convenience for tests and diagnostics (allocates).
    pub fn format_to_string(&self, rec: &LogRecord) -> String {
        let mut out = Vec::with_capacity(512);
        self.write(rec, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

fn compile_object(
    map: &serde_json::Map<String, serde_json::Value>,
    path: &str,
) -> Result<Object, FormatError> {
    let mut fields = Vec::with_capacity(map.len());
    for (k, v) in map {
        let key_path = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        let mut key = Vec::with_capacity(k.len() + 3);
        write_json_str(&mut key, k.as_bytes());
        key.push(b':');
        fields.push((
            k.as_bytes(),
            key.into_boxed_slice(),
            compile_node(v, &key_path)?,
        ));
    }
    // Envoy's output is sorted by key (protobuf Struct order), whatever the input order.
    fields.sort_by(|a, b| a.0.cmp(b.0));
    Ok(Object {
        fields: fields.into_iter().map(|(_, k, n)| (k, n)).collect(),
    })
}

fn compile_node(v: &serde_json::Value, path: &str) -> Result<Node, FormatError> {
    match v {
        serde_json::Value::String(s) => parse_segments(s)
            .map(|segs| Node::Format(segs.into_boxed_slice()))
            .map_err(|e| FormatError::JsonValue {
                key: path.to_owned(),
                source: Box::new(e),
            }),
        serde_json::Value::Object(m) => Ok(Node::Object(compile_object(m, path)?)),
        serde_json::Value::Array(items) => {
            let nodes = items
                .iter()
                .enumerate()
                .map(|(i, item)| compile_node(item, &format!("{path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Node::List(nodes.into_boxed_slice()))
        }
        // Envoy: "Only string values, nested structs and list values are supported".
        _ => Err(FormatError::Json(format!(
            "`{path}`: only strings, nested objects and lists are supported as values"
        ))),
    }
}

fn collect_segments<'a>(obj: &'a Object, out: &mut Vec<&'a Segment>) {
    fn node<'a>(n: &'a Node, out: &mut Vec<&'a Segment>) {
        match n {
            Node::Format(segs) => out.extend(segs.iter()),
            Node::Object(o) => collect_segments(o, out),
            Node::List(items) => items.iter().for_each(|i| node(i, out)),
        }
    }
    obj.fields.iter().for_each(|(_, n)| node(n, out));
}

fn write_object(obj: &Object, rec: &LogRecord, out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (key, node)) in obj.fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(key);
        write_node(node, rec, out);
    }
    out.push(b'}');
}

fn write_node(node: &Node, rec: &LogRecord, out: &mut Vec<u8>) {
    match node {
        Node::Object(o) => write_object(o, rec, out),
        Node::List(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_node(item, rec, out);
            }
            out.push(b']');
        }
        Node::Format(segs) => write_format_value(segs, rec, out),
    }
}

fn write_format_value(segs: &[Segment], rec: &LogRecord, out: &mut Vec<u8>) {
    if let [Segment::Op(op)] = segs {
        // One operator alone keeps its type.
        match op.value(rec) {
            Value::Missing => out.extend_from_slice(b"null"),
            Value::Number(n) => crate::num::write_u64(out, n),
            Value::Bytes(b) => write_json_str(out, b),
            v => {
                out.push(b'"');
                let start = out.len();
                v.write_text(out);
                escape_tail(out, start);
                out.push(b'"');
            }
        }
        return;
    }
    // Literal text and/or several operators: one string, missing parts printed `-`.
    out.push(b'"');
    let start = out.len();
    for seg in segs {
        match seg {
            Segment::Literal(b) => out.extend_from_slice(b),
            Segment::Op(op) => op.value(rec).write_text(out),
        }
    }
    escape_tail(out, start);
    out.push(b'"');
}

fn needs_escape(b: &[u8]) -> bool {
    let mut ascii = true;
    for &c in b {
        if c < 0x20 || c == b'"' || c == b'\\' {
            return true;
        }
        ascii &= c < 0x80;
    }
    !ascii && std::str::from_utf8(b).is_err()
}

/// Escapes, in place, the raw text written since `start`. The common case (nothing to escape)
/// costs one scan and no allocation.
fn escape_tail(out: &mut Vec<u8>, start: usize) {
    if needs_escape(&out[start..]) {
        let raw = out.split_off(start);
        write_json_str_body(out, &raw);
    }
}

/// `"..."` with JSON escaping.
pub(crate) fn write_json_str(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'"');
    if needs_escape(b) {
        write_json_str_body(out, b);
    } else {
        out.extend_from_slice(b);
    }
    out.push(b'"');
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_json_str_body(out: &mut Vec<u8>, b: &[u8]) {
    for chunk in b.utf8_chunks() {
        for &c in chunk.valid().as_bytes() {
            match c {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                c if c < 0x20 => push_u00(out, c),
                c => out.push(c),
            }
        }
        // Envoy writes each byte that is not UTF-8 as the code point of the same value.
        for &c in chunk.invalid() {
            push_u00(out, c);
        }
    }
}

fn push_u00(out: &mut Vec<u8>, c: u8) {
    out.extend_from_slice(b"\\u00");
    out.push(HEX[usize::from(c >> 4)]);
    out.push(HEX[usize::from(c & 0xf)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(b: &[u8]) -> String {
        let mut out = Vec::new();
        write_json_str(&mut out, b);
        String::from_utf8(out).unwrap()
    }

    /// Expectations from Envoy 1.40's output for the same bytes.
    #[test]
    fn escaping_matches_envoy() {
        assert_eq!(esc(b"plain"), "\"plain\"");
        assert_eq!(
            esc("q\"b\\\\s</ tab\té".as_bytes()),
            r#""q\"b\\\\s</ tab\té""#
        );
        assert_eq!(esc(b"a\xffb\xc3"), r#""a\u00ffb\u00c3""#);
        assert_eq!(
            esc("\x01\x08\x0c\x1f\x7f\u{2028}\"\\/".as_bytes()),
            "\"\\u0001\\b\\f\\u001f\x7f\u{2028}\\\"\\\\/\""
        );
        assert_eq!(esc(b"\r\n"), r#""\r\n""#);
    }

    #[test]
    fn escaped_output_is_valid_json() {
        let nasty: Vec<u8> = (0u8..=255).collect();
        let s = esc(&nasty);
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back.chars().count(), 256);
        assert!(back.starts_with('\u{0}'));
        assert!(back.ends_with('\u{ff}'));
    }
}
