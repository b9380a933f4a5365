//! Path normalization as Istio configures Envoy (`normalize_path: true`, the default
//! `pathNormalization: BASE`): the dot segments of RFC 3986 §5.2.4 are resolved before
//! routing, so `/public/../admin` is routed — and forwarded, and logged — as `/admin`.
//! Envoy's canonicalizer (Chromium's) reads `%2e` as a dot too (checked with Envoy 1.40:
//! `/a/%2e%2e/ok` reaches the upstream as `/ok`), and first decodes escaped unreserved
//! characters (`/%41%7e` is `/A~`, `b%2e%2e` is `b..`; other escapes stay as written), turns
//! `\` into `/` and escapes `"<>^`{|}` (`/a{b}` is `/a%7Bb%7D`). The query is left alone,
//! as the client wrote it; slashes are not merged (`merge_slashes` is off in BASE).
//!
//! [`lenient_target`] and [`target_uri`] carry what `http::Uri` refuses and Envoy's codec
//! takes (`"<>` and backquote in a target) from the client to the upstream.

use bytes::Bytes;
use http::Uri;

/// The path with its characters canonicalized and its dot segments resolved, or None when
/// there is nothing to change (the common case: no allocation).
pub fn normalize(path_and_query: &str) -> Option<String> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    let canonical = path
        .starts_with('/')
        .then(|| canonicalize_chars(path))
        .flatten();
    let path = canonical.as_deref().unwrap_or(path);
    if !path.starts_with('/') || !path.split('/').any(is_dot_segment) {
        return canonical.map(|mut p| {
            p.push_str(query);
            p
        });
    }
    let mut out: Vec<&str> = Vec::new();
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match dots(seg) {
            Some(1) => {
                // `/a/.` resolves to `/a/`: a trailing dot leaves an empty last segment.
                if last {
                    out.push("");
                }
            }
            Some(_) => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            None => out.push(seg),
        }
    }
    let mut normalized = String::with_capacity(path_and_query.len());
    for seg in &out {
        normalized.push('/');
        normalized.push_str(seg);
    }
    if normalized.is_empty() {
        normalized.push('/');
    }
    normalized.push_str(query);
    Some(normalized)
}

/// Bytes of a path Envoy's canonicalizer escapes (checked with Envoy 1.40; `!$&'()*+,;=:@[]`
/// and `~` stay as they are).
fn escaped_in_path(b: u8) -> bool {
    matches!(b, b'"' | b'<' | b'>' | b'^' | b'`' | b'{' | b'|' | b'}')
}

/// `path` with `%XX` escapes of unreserved characters (RFC 3986 §2.3: letters, digits,
/// `-._~`) decoded, `\` made `/` and [`escaped_in_path`] bytes escaped, as Chromium's
/// canonicalizer in Envoy does; None when there is nothing to change.
fn canonicalize_chars(path: &str) -> Option<String> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = path.as_bytes();
    let unreserved_at = |i: usize| -> Option<u8> {
        let c = hex(*bytes.get(i + 1)?)? << 4 | hex(*bytes.get(i + 2)?)?;
        (c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')).then_some(c)
    };
    let changes = |i: usize| match bytes[i] {
        b'%' => unreserved_at(i).is_some(),
        b'\\' => true,
        b => escaped_in_path(b),
    };
    let first = (0..bytes.len()).find(|&i| changes(i))?;
    let mut out = String::with_capacity(path.len() + 8);
    out.push_str(&path[..first]);
    let mut i = first;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => match unreserved_at(i) {
                Some(c) => {
                    out.push(c as char);
                    i += 3;
                }
                None => {
                    out.push('%');
                    i += 1;
                }
            },
            b'\\' => {
                out.push('/');
                i += 1;
            }
            b if escaped_in_path(b) => {
                push_escaped(&mut out, b);
                i += 1;
            }
            _ => {
                // Copied up to the next byte that may change (a whole UTF-8 sequence never
                // holds one).
                let next = (i + 1..bytes.len())
                    .find(|&j| changes(j))
                    .unwrap_or(bytes.len());
                out.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    Some(out)
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 0xf)] as char);
}

/// Bytes of a request target that `http::Uri` refuses (`<>` and backquote in the path,
/// `"<>` in the query) and Envoy 1.40's codec takes (checked with it).
fn uri_refuses(b: u8) -> bool {
    matches!(b, b'"' | b'<' | b'>' | b'`')
}

/// The query of a request target as the client sent it, when it holds bytes `http::Uri`
/// refuses (a request extension): the request's URI carries them escaped, and Envoy
/// forwards and logs the query untouched.
#[derive(Clone, Debug)]
pub struct RawQuery(pub Bytes);

/// A URI for a target `http::Uri` refused, with the bytes it refuses escaped, and the raw
/// query when the query held one of them; None if escaping them does not help.
pub fn lenient_target(target: &Bytes) -> Option<(Uri, Option<RawQuery>)> {
    if !target.iter().copied().any(uri_refuses) {
        return None;
    }
    let mut escaped = String::with_capacity(target.len() + 8);
    for &b in target.iter() {
        if uri_refuses(b) {
            push_escaped(&mut escaped, b);
        } else {
            escaped.push(char::from(b));
        }
    }
    let uri: Uri = escaped.parse().ok()?;
    let raw_query = target
        .iter()
        .position(|&b| b == b'?')
        .filter(|&q| target[q..].iter().copied().any(uri_refuses))
        .map(|q| RawQuery(target.slice(q + 1..)));
    Some((uri, raw_query))
}

/// The URI for a path and query about to go upstream, and whether it had to escape bytes
/// `http::Uri` refuses (a raw query from [`RawQuery`]); then the HTTP/1.1 codec writes the
/// target as given (`egret_upstream::h1::RawTarget`). None: not a path at all.
pub fn target_uri(path_and_query: &str) -> Option<(Uri, bool)> {
    if let Ok(uri) = path_and_query.parse() {
        return Some((uri, false));
    }
    let target = Bytes::copy_from_slice(path_and_query.as_bytes());
    lenient_target(&target).map(|(uri, _)| (uri, true))
}

fn is_dot_segment(seg: &str) -> bool {
    dots(seg).is_some()
}

/// 1 for `.`, 2 for `..` (each dot possibly written `%2e` or `%2E`); None otherwise.
fn dots(seg: &str) -> Option<u8> {
    let mut rest = seg.as_bytes();
    let mut n = 0u8;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && rest[2] | 0x20 == b'e' {
            rest = &rest[3..];
        } else {
            return None;
        }
        n += 1;
        if n > 2 {
            return None;
        }
    }
    (n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn dot_segments_are_resolved_like_envoy() {
        let cases = [
            ("/a/../ok", Some("/ok")),
            ("/a/%2e%2e/ok", Some("/ok")),
            ("/a/%2E./ok?x=/../y", Some("/ok?x=/../y")),
            ("/./a/./b", Some("/a/b")),
            ("/a/b/..", Some("/a/")),
            ("/a/.", Some("/a/")),
            ("/..", Some("/")),
            ("/../../x", Some("/x")),
            ("/a//../b", Some("/a/b")),
            // Untouched: no dot segment.
            ("/index.html", None),
            ("/a/...b/..c/.d", None),
            ("/a/b?c=../d", None),
            ("/", None),
            ("*", None),
            // Escaped unreserved characters are decoded first (checked with Envoy 1.40).
            ("/%41%7e%2d%5f%20", Some("/A~-_%20")),
            ("/a/../b%2e%2e/%41", Some("/b../A")),
            ("/%61/%2E%2e/x?q=%41", Some("/x?q=%41")),
            ("/caf%C3%A9/%2f%zz%4", None),
            // `\` is a slash and `"<>^`{|}` are escaped; the query is untouched (checked
            // with Envoy 1.40).
            ("/a\\b/..\\c", Some("/a/c")),
            (
                "/a!\"$&'()*+,;=:@[]^_`{|}~<>b?q={\"a\"}|^`",
                Some("/a!%22$&'()*+,;=:@[]%5E_%60%7B%7C%7D~%3C%3Eb?q={\"a\"}|^`"),
            ),
            ("/a%7bb%7C%22%3c%5C%2F", None),
        ];
        for (path, want) in cases {
            assert_eq!(normalize(path).as_deref(), want, "{path}");
        }
    }
}

#[cfg(test)]
mod target_tests {
    use bytes::Bytes;

    use super::{lenient_target, target_uri};

    #[test]
    fn targets_the_uri_refuses_are_escaped_and_the_raw_query_kept() {
        let t = Bytes::from_static(b"/a<b>?q=\"x\"&r=`");
        let (uri, raw) = lenient_target(&t).unwrap();
        assert_eq!(
            uri.path_and_query().unwrap().as_str(),
            "/a%3Cb%3E?q=%22x%22&r=%60"
        );
        assert_eq!(&raw.unwrap().0[..], b"q=\"x\"&r=`");
        // Only the path: nothing to keep raw.
        let (uri, raw) = lenient_target(&Bytes::from_static(b"/a`b?q=1")).unwrap();
        assert_eq!(uri.path_and_query().unwrap().as_str(), "/a%60b?q=1");
        assert!(raw.is_none());
        // Nothing the URI refuses, or still not a target: no help here.
        assert!(lenient_target(&Bytes::from_static(b"/a b")).is_none());
    }

    #[test]
    fn upstream_targets_say_when_they_were_escaped() {
        let (uri, escaped) = target_uri("/p?q=1").unwrap();
        assert_eq!((uri.to_string().as_str(), escaped), ("/p?q=1", false));
        let (uri, escaped) = target_uri("/p?q=\"1\"").unwrap();
        assert_eq!((uri.to_string().as_str(), escaped), ("/p?q=%221%22", true));
    }
}
