//! Pure route matching: authority → virtual host → the first route whose match applies.
//! No I/O; tested directly.

use egret_core::{HttpRouteTable, Route, RouteMatch, StringMatch, VirtualHost};

/// What the router needs to know of a request.
pub struct RequestView<'a> {
    pub authority: &'a str,
    pub method: &'a str,
    /// Path and query, as received.
    pub path: &'a str,
    pub scheme: &'a str,
    pub headers: &'a http::HeaderMap,
}

#[derive(Debug)]
pub enum RouteResult<'a> {
    /// No virtual host for the authority (Envoy: 404 `NR`, `route_not_found`).
    NoVirtualHost,
    /// A virtual host, but none of its routes matched (same answer).
    NoRoute(&'a VirtualHost),
    /// The route, and which of its matches applied (None for a route without matches).
    Matched(&'a VirtualHost, &'a Route, Option<&'a RouteMatch>),
}

pub fn find_route<'a>(table: &'a HttpRouteTable, req: &RequestView<'_>) -> RouteResult<'a> {
    let Some(vh) = table.find_virtual_host(req.authority) else {
        return RouteResult::NoVirtualHost;
    };
    for r in &vh.routes {
        if r.matches.is_empty() {
            return RouteResult::Matched(vh, r, None);
        }
        if let Some(m) = r.matches.iter().find(|m| match_applies(m, req)) {
            return RouteResult::Matched(vh, r, Some(m));
        }
    }
    RouteResult::NoRoute(vh)
}

fn match_applies(m: &RouteMatch, req: &RequestView<'_>) -> bool {
    if let Some(uri) = &m.uri {
        // Istio matches `uri` against the path without the query string.
        let path = req.path.split('?').next().unwrap_or(req.path);
        let ok = if m.ignore_uri_case {
            string_match_ci(uri, path)
        } else {
            uri.matches(path)
        };
        if !ok {
            return false;
        }
    }
    if let Some(method) = &m.method {
        if !method.matches(req.method) {
            return false;
        }
    }
    if let Some(authority) = &m.authority {
        if !authority.matches(req.authority) {
            return false;
        }
    }
    if let Some(scheme) = &m.scheme {
        if !scheme.matches(req.scheme) {
            return false;
        }
    }
    for h in &m.headers {
        let value = req.headers.get(&h.name).and_then(|v| v.to_str().ok());
        let ok = match (&h.value, value) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(sm), Some(v)) => sm.matches(v),
        };
        if ok == h.invert {
            return false;
        }
    }
    if !m.query_params.is_empty() {
        let query = req.path.split_once('?').map_or("", |(_, q)| q);
        for (name, sm) in &m.query_params {
            let found = query
                .split('&')
                .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                .find(|(k, _)| k == name);
            match found {
                Some((_, v)) if sm.matches(v) => {}
                _ => return false,
            }
        }
    }
    true
}

fn string_match_ci(m: &StringMatch, value: &str) -> bool {
    match m {
        StringMatch::Exact(e) => value.eq_ignore_ascii_case(e),
        StringMatch::Prefix(p) => {
            value.len() >= p.len() && value.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
        }
        StringMatch::Regex(r) => r.is_match(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egret_core::{HeaderMatch, HostPattern, RouteAction};

    fn route(matches: Vec<RouteMatch>, status: u16) -> Route {
        Route {
            name: None,
            matches,
            action: RouteAction::Direct { status, body: None },
            timeout: None,
            policy: Default::default(),
        }
    }

    fn table() -> HttpRouteTable {
        let vh = VirtualHost {
            name: "edition.cnn.com:80".into(),
            domains: vec![HostPattern::parse("edition.cnn.com")],
            routes: vec![
                route(
                    vec![RouteMatch {
                        uri: Some(StringMatch::Exact("/exact".into())),
                        ..Default::default()
                    }],
                    201,
                ),
                route(
                    vec![RouteMatch {
                        uri: Some(StringMatch::Prefix("/api".into())),
                        method: Some(StringMatch::Exact("POST".into())),
                        ..Default::default()
                    }],
                    202,
                ),
                route(
                    vec![RouteMatch {
                        headers: vec![HeaderMatch {
                            name: http::HeaderName::from_static("x-v"),
                            value: Some(StringMatch::Regex(
                                regex::Regex::new("^(?:v[0-9]+)$").unwrap(),
                            )),
                            invert: false,
                        }],
                        ..Default::default()
                    }],
                    203,
                ),
                route(
                    vec![RouteMatch {
                        uri: Some(StringMatch::Prefix("/only".into())),
                        ..Default::default()
                    }],
                    204,
                ),
            ],
        };
        let wild = VirtualHost {
            name: "*.example.com:80".into(),
            domains: vec![HostPattern::parse("*.example.com")],
            routes: vec![route(vec![], 205)],
        };
        HttpRouteTable::new("http.8080".into(), vec![vh, wild])
    }

    fn status(
        t: &HttpRouteTable,
        authority: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<u16> {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let req = RequestView {
            authority,
            method,
            path,
            scheme: "http",
            headers: &h,
        };
        match find_route(t, &req) {
            RouteResult::Matched(_, r, _) => match r.action {
                RouteAction::Direct { status, .. } => Some(status),
                _ => None,
            },
            _ => None,
        }
    }

    #[test]
    fn matching() {
        let t = table();
        assert_eq!(
            status(&t, "edition.cnn.com", "GET", "/exact", &[]),
            Some(201)
        );
        assert_eq!(
            status(&t, "edition.cnn.com:80", "GET", "/exact?q=1", &[]),
            Some(201)
        );
        assert_eq!(
            status(&t, "EDITION.cnn.com:8080", "GET", "/exact", &[]),
            Some(201)
        );
        assert_eq!(
            status(&t, "edition.cnn.com", "POST", "/api/x", &[]),
            Some(202)
        );
        assert_eq!(status(&t, "edition.cnn.com", "GET", "/api/x", &[]), None);
        assert_eq!(
            status(&t, "edition.cnn.com", "GET", "/x", &[("x-v", "v12")]),
            Some(203)
        );
        assert_eq!(
            status(&t, "edition.cnn.com", "GET", "/x", &[("x-v", "v12x")]),
            None
        );
        assert_eq!(
            status(&t, "edition.cnn.com", "GET", "/only/1", &[]),
            Some(204)
        );
        assert_eq!(status(&t, "a.b.example.com", "GET", "/", &[]), Some(205));
        let h = http::HeaderMap::new();
        let req = RequestView {
            authority: "other.com",
            method: "GET",
            path: "/",
            scheme: "http",
            headers: &h,
        };
        assert!(matches!(find_route(&t, &req), RouteResult::NoVirtualHost));
    }
}
