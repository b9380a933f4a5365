//! Path normalization as Istio configures Envoy (`normalize_path: true`, the default
//! `pathNormalization: BASE`): the dot segments of RFC 3986 §5.2.4 are resolved before
//! routing, so `/public/../admin` is routed — and forwarded, and logged — as `/admin`.
//! Envoy's canonicalizer (Chromium's) reads `%2e` as a dot too (checked with Envoy 1.40:
//! `/a/%2e%2e/ok` reaches the upstream as `/ok`), and decodes escaped unreserved characters
//! first (`/%41%7e` is `/A~`, `b%2e%2e` is `b..`; other escapes stay as written). The query
//! is left alone; slashes are not merged (`merge_slashes` is off in BASE).

/// The path with escaped unreserved characters decoded and its dot segments resolved, or
/// None when there is nothing to change (the common case: no allocation).
pub fn normalize(path_and_query: &str) -> Option<String> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    let decoded = path
        .starts_with('/')
        .then(|| decode_unreserved(path))
        .flatten();
    let path = decoded.as_deref().unwrap_or(path);
    if !path.starts_with('/') || !path.split('/').any(is_dot_segment) {
        return decoded.map(|mut p| {
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

/// `path` with `%XX` escapes of unreserved characters (RFC 3986 §2.3: letters, digits,
/// `-._~`) decoded, as Chromium's canonicalizer in Envoy does; None when it has none.
fn decode_unreserved(path: &str) -> Option<String> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = path.as_bytes();
    let unreserved_at = |i: usize| -> Option<u8> {
        let c = hex(*bytes.get(i + 1)?)? << 4 | hex(*bytes.get(i + 2)?)?;
        (c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')).then_some(c)
    };
    let first = (0..bytes.len()).find(|&i| bytes[i] == b'%' && unreserved_at(i).is_some())?;
    let mut out = String::with_capacity(path.len());
    out.push_str(&path[..first]);
    let mut i = first;
    while i < bytes.len() {
        match (bytes[i] == b'%').then(|| unreserved_at(i)).flatten() {
            Some(c) => {
                out.push(c as char);
                i += 3;
            }
            None => {
                // Copied up to the next `%` (a whole UTF-8 sequence never holds one).
                let next = path[i + 1..].find('%').map_or(bytes.len(), |j| i + 1 + j);
                out.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    Some(out)
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
        ];
        for (path, want) in cases {
            assert_eq!(normalize(path).as_deref(), want, "{path}");
        }
    }
}
