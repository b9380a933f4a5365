//! Path normalization as Istio configures Envoy (`normalize_path: true`, the default
//! `pathNormalization: BASE`): the dot segments of RFC 3986 §5.2.4 are resolved before
//! routing, so `/public/../admin` is routed — and forwarded, and logged — as `/admin`.
//! Envoy's canonicalizer (Chromium's) reads `%2e` as a dot too (checked with Envoy 1.40:
//! `/a/%2e%2e/ok` reaches the upstream as `/ok`). The query is left alone; slashes are not
//! merged (`merge_slashes` is off in BASE).

/// The path with its dot segments resolved, or None when it has none (the common case: no
/// allocation).
pub fn normalize(path_and_query: &str) -> Option<String> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    if !path.starts_with('/') || !path.split('/').any(is_dot_segment) {
        return None;
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
        ];
        for (path, want) in cases {
            assert_eq!(normalize(path).as_deref(), want, "{path}");
        }
    }
}
