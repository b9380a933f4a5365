//! Pure URL arithmetic for a matched route, as Envoy does it (checked with Envoy 1.40): the
//! upstream path after `rewrite`, the `location` of a `redirect`, and a mirror's authority.

use egret_core::host::split_authority;
use egret_core::{PathRewrite, Redirect, StringMatch};

/// Splits `/a/b?q=1` into (`/a/b`, `?q=1`).
fn split_query(path_and_query: &str) -> (&str, &str) {
    match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    }
}

/// The upstream path and query after `rewrite`. `matched_uri` is the `uri` condition of the
/// match that selected the route (None when it had none: Istio then matches prefix `/`).
///
/// Envoy's `prefix_rewrite` replaces what the route matched: the prefix of a prefix match
/// (its length, also when matched ignoring case), the whole path of an exact or regex match.
/// `regex_rewrite` replaces every match in the path. The query is kept either way.
pub fn rewrite_path(
    rewrite: &PathRewrite,
    matched_uri: Option<&StringMatch>,
    path_and_query: &str,
) -> String {
    let (path, query) = split_query(path_and_query);
    let new_path = match rewrite {
        PathRewrite::Prefix(replacement) => {
            let matched_len = match matched_uri {
                Some(StringMatch::Prefix(p)) => p.len(),
                Some(StringMatch::Exact(_) | StringMatch::Regex(_)) => path.len(),
                None => usize::from(path.starts_with('/')),
            };
            match path.get(matched_len..) {
                Some(rest) => format!("{replacement}{rest}"),
                None => replacement.clone(),
            }
        }
        PathRewrite::Regex {
            pattern,
            substitution,
        } => pattern
            .replace_all(path, substitution.as_str())
            .into_owned(),
    };
    format!("{new_path}{query}")
}

/// The `location` of a redirect, from the request's scheme, authority and path.
///
/// Envoy: `authority` replaces host and port; `port` replaces the port; changing only the
/// scheme drops a port that was the old scheme's default; `uri` replaces the path and keeps
/// the request's query unless it has one of its own.
pub fn redirect_location(
    r: &Redirect,
    request_scheme: &str,
    authority: &str,
    path_and_query: &str,
) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(request_scheme);
    let host = r.host.as_deref().unwrap_or(authority);
    let host = match r.port {
        Some(port) => format!("{}:{port}", split_authority(host).0),
        None if r.host.is_none() && !scheme.eq_ignore_ascii_case(request_scheme) => {
            let (bare, port) = split_authority(host);
            if port.is_some() && port == default_port(request_scheme) {
                bare.to_string()
            } else {
                host.to_string()
            }
        }
        None => host.to_string(),
    };
    let path = match &r.path {
        Some(p) if p.contains('?') => p.clone(),
        Some(p) => format!("{p}{}", split_query(path_and_query).1),
        None => path_and_query.to_string(),
    };
    format!("{scheme}://{host}{path}")
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// A mirrored request's authority: Envoy appends `-shadow` to the host (`a.com:80` →
/// `a.com-shadow:80`).
pub fn shadow_authority(authority: &str) -> String {
    match split_authority(authority) {
        (host, Some(port)) => format!("{host}-shadow:{port}"),
        (host, None) => format!("{host}-shadow"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> PathRewrite {
        PathRewrite::Prefix(p.into())
    }

    #[test]
    fn prefix_rewrites_as_envoy_1_40() {
        let pre = StringMatch::Prefix("/old".into());
        assert_eq!(
            rewrite_path(&prefix("/new"), Some(&pre), "/old/x?q=1"),
            "/new/x?q=1"
        );
        let exact = StringMatch::Exact("/exact".into());
        assert_eq!(
            rewrite_path(&prefix("/e2"), Some(&exact), "/exact?a=b"),
            "/e2?a=b"
        );
        let re = StringMatch::Regex(regex::Regex::new("^(?:/re/[0-9]+)$").unwrap());
        assert_eq!(
            rewrite_path(&prefix("/r2"), Some(&re), "/re/123?z"),
            "/r2?z"
        );
        // Case-insensitive prefix: the matched length is replaced.
        let ci = StringMatch::Prefix("/ci".into());
        assert_eq!(
            rewrite_path(&prefix("/lower"), Some(&ci), "/CI/Foo"),
            "/lower/Foo"
        );
        // No uri condition: Istio's prefix `/`.
        assert_eq!(rewrite_path(&prefix("/v2/"), None, "/a"), "/v2/a");
    }

    #[test]
    fn regex_rewrites_as_envoy_1_40() {
        let rw = PathRewrite::Regex {
            pattern: regex::Regex::new("^/rx/([^/]+)/(.*)$").unwrap(),
            substitution: "/${2}/${1}".into(),
        };
        assert_eq!(
            rewrite_path(&rw, None, "/rx/one/two/three?k=v"),
            "/two/three/one?k=v"
        );
        let all = PathRewrite::Regex {
            pattern: regex::Regex::new("a").unwrap(),
            substitution: "b".into(),
        };
        assert_eq!(rewrite_path(&all, None, "/ry/banana?a=a"), "/ry/bbnbnb?a=a");
    }

    fn redirect(
        scheme: Option<&str>,
        host: Option<&str>,
        port: Option<u16>,
        path: Option<&str>,
    ) -> Redirect {
        Redirect {
            status: 301,
            scheme: scheme.map(Into::into),
            host: host.map(Into::into),
            port,
            path: path.map(Into::into),
        }
    }

    #[test]
    fn redirect_locations_as_envoy_1_40() {
        let loc = |r: &Redirect, auth: &str, p: &str| redirect_location(r, "http", auth, p);
        let uri = redirect(None, None, None, Some("/new"));
        assert_eq!(
            loc(&uri, "example.com", "/redir1/x?q=1"),
            "http://example.com/new?q=1"
        );
        assert_eq!(
            loc(&uri, "example.com:80", "/redir1"),
            "http://example.com:80/new"
        );
        let all = redirect(Some("https"), Some("other.com"), Some(8443), None);
        assert_eq!(
            loc(&all, "example.com", "/redir2/a?b"),
            "https://other.com:8443/redir2/a?b"
        );
        let host = redirect(None, Some("other.com"), None, None);
        assert_eq!(loc(&host, "example.com:8080", "/a"), "http://other.com/a");
        let host_port = redirect(None, Some("other.com:7000"), None, None);
        assert_eq!(
            loc(&host_port, "example.com:8080", "/a"),
            "http://other.com:7000/a"
        );
        let scheme = redirect(Some("https"), None, None, None);
        assert_eq!(
            loc(&scheme, "example.com:80", "/a"),
            "https://example.com/a"
        );
        assert_eq!(
            loc(&scheme, "example.com:8080", "/a"),
            "https://example.com:8080/a"
        );
        assert_eq!(
            loc(&scheme, "example.com:443", "/a"),
            "https://example.com:443/a"
        );
        let port = redirect(None, None, Some(9000), None);
        assert_eq!(
            loc(&port, "example.com:8080", "/a"),
            "http://example.com:9000/a"
        );
        let with_query = redirect(None, None, None, Some("/p?x=1"));
        assert_eq!(
            loc(&with_query, "example.com", "/a?q=2"),
            "http://example.com/p?x=1"
        );
    }

    #[test]
    fn shadow_hosts() {
        assert_eq!(shadow_authority("example.com"), "example.com-shadow");
        assert_eq!(
            shadow_authority("example.com:8080"),
            "example.com-shadow:8080"
        );
        assert_eq!(shadow_authority("[::1]:80"), "[::1]-shadow:80");
    }
}
