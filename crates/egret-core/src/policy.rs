//! What a VirtualService `http` rule asks of each request besides "send it there": retries,
//! rewrites, header changes, fault injection and mirroring. Compiled once by `egret-config`
//! into a [`RoutePolicy`]; applied by `egret-http`. Names follow Envoy's route API, which is
//! what Istio translates these fields into.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

/// Everything besides the destination that a route applies. `Default` is a route with none
/// of it (and *no* retries: compiled routes get Istio's default policy explicitly).
#[derive(Debug, Clone, Default)]
pub struct RoutePolicy {
    /// `retries`; None = no retries (`attempts: 0`).
    pub retry: Option<RetryPolicy>,
    /// `headers` (route level, plus the destination's when the rule has one destination, as
    /// Istio merges them).
    pub headers: HeaderOps,
    /// `rewrite`.
    pub rewrite: Option<Rewrite>,
    /// `fault`.
    pub fault: Option<Fault>,
    /// `mirror` / `mirrors`.
    pub mirrors: Vec<MirrorPolicy>,
}

/// Envoy `retry_policy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (`attempts`).
    pub num_retries: u32,
    /// `perTryTimeout`: how long each attempt may wait for response headers.
    pub per_try_timeout: Option<Duration>,
    pub retry_on: RetryOn,
    /// Statuses retried with `retriable-status-codes` (the numbers in `retryOn`).
    pub retriable_status_codes: Vec<u16>,
    /// Base of the jittered exponential back-off (`backoff`; Envoy's default 25 ms).
    pub backoff_base: Duration,
    /// Retries prefer endpoints not tried yet (Envoy's `previous_hosts` predicate, which
    /// Istio adds unless `retryIgnorePreviousHosts: false`).
    pub ignore_previous_hosts: bool,
}

/// Envoy's default retry back-off base interval.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(25);

impl RetryPolicy {
    /// Istio's policy for routes without `retries`: 2 retries on connect-failure,
    /// refused-stream, unavailable, cancelled and retriable status 503.
    pub fn istio_default() -> RetryPolicy {
        RetryPolicy {
            num_retries: 2,
            per_try_timeout: None,
            retry_on: RetryOn::ISTIO_DEFAULT,
            retriable_status_codes: vec![503],
            backoff_base: DEFAULT_RETRY_BACKOFF,
            ignore_previous_hosts: true,
        }
    }
}

/// A set of Envoy `retry_on` conditions.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn(u32);

macro_rules! retry_on {
    ($($name:ident = $bit:expr, $text:expr;)*) => {
        impl RetryOn {
            $(pub const $name: RetryOn = RetryOn(1 << $bit);)*
            /// Every condition with its `retryOn` spelling.
            pub const ALL: &'static [(RetryOn, &'static str)] = &[$((RetryOn::$name, $text)),*];
        }
    };
}

retry_on! {
    FIVE_XX = 0, "5xx";
    GATEWAY_ERROR = 1, "gateway-error";
    RESET = 2, "reset";
    CONNECT_FAILURE = 3, "connect-failure";
    REFUSED_STREAM = 4, "refused-stream";
    RETRIABLE_4XX = 5, "retriable-4xx";
    RETRIABLE_STATUS_CODES = 6, "retriable-status-codes";
    RESET_BEFORE_REQUEST = 7, "reset-before-request";
    GRPC_CANCELLED = 8, "cancelled";
    GRPC_DEADLINE_EXCEEDED = 9, "deadline-exceeded";
    GRPC_INTERNAL = 10, "internal";
    GRPC_RESOURCE_EXHAUSTED = 11, "resource-exhausted";
    GRPC_UNAVAILABLE = 12, "unavailable";
}

impl RetryOn {
    pub const NONE: RetryOn = RetryOn(0);
    /// Istio's default `retry_on`.
    pub const ISTIO_DEFAULT: RetryOn = RetryOn(
        RetryOn::CONNECT_FAILURE.0
            | RetryOn::REFUSED_STREAM.0
            | RetryOn::GRPC_UNAVAILABLE.0
            | RetryOn::GRPC_CANCELLED.0
            | RetryOn::RETRIABLE_STATUS_CODES.0,
    );

    /// One condition by its Envoy name (`5xx`, `connect-failure`, ...).
    pub fn parse(name: &str) -> Option<RetryOn> {
        RetryOn::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(r, _)| *r)
    }
    pub fn contains(self, other: RetryOn) -> bool {
        other.0 != 0 && self.0 & other.0 == other.0
    }
    /// True when any condition of `other` is set.
    pub fn intersects(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for RetryOn {
    type Output = RetryOn;
    fn bitor(self, rhs: RetryOn) -> RetryOn {
        RetryOn(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for RetryOn {
    fn bitor_assign(&mut self, rhs: RetryOn) {
        self.0 |= rhs.0;
    }
}

impl std::fmt::Debug for RetryOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = RetryOn::ALL
            .iter()
            .filter(|(r, _)| self.contains(*r))
            .map(|(_, n)| *n)
            .collect();
        write!(f, "RetryOn({})", names.join(","))
    }
}

/// Request and response header changes of one level (route, or one weighted destination).
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub request: HeaderMutations,
    pub response: HeaderMutations,
    /// `host` / `:authority` in `request.set` or `request.add`: Istio turns it into an
    /// authority rewrite (`host_rewrite_literal`) instead of a header operation.
    pub authority: Option<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty() && self.authority.is_none()
    }
}

/// Envoy's `*_headers_to_add` / `*_headers_to_remove`: removals first, then additions in
/// order (so a later `set` of the same name wins).
#[derive(Debug, Clone, Default)]
pub struct HeaderMutations {
    pub add: Vec<HeaderAdd>,
    pub remove: Vec<HeaderName>,
}

impl HeaderMutations {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the removals, then the additions, Envoy's order. A `set` replaces every
    /// value and, as in Envoy 1.40, moves the header to the end.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for a in &self.add {
            if !a.append {
                headers.remove(&a.name);
            }
            headers.append(a.name.clone(), a.value.clone());
        }
    }
}

#[derive(Debug, Clone)]
pub struct HeaderAdd {
    pub name: HeaderName,
    pub value: HeaderValue,
    /// `add` (APPEND_IF_EXISTS_OR_ADD); false = `set` (OVERWRITE_IF_EXISTS_OR_ADD).
    pub append: bool,
}

/// `rewrite`: what the upstream request's path and authority become.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    pub path: Option<PathRewrite>,
    /// `rewrite.authority` (or a `host` header operation).
    pub authority: Option<String>,
}

#[derive(Debug, Clone)]
pub enum PathRewrite {
    /// `rewrite.uri` → Envoy `prefix_rewrite`: the part of the path the route matched (the
    /// prefix of a prefix match, the whole path of an exact or regex match) is replaced.
    Prefix(String),
    /// `rewrite.uriRegexRewrite` → Envoy `regex_rewrite`: every match in the path (without
    /// the query) is replaced; `substitution` uses the `regex` crate's `${1}` syntax.
    Regex {
        pattern: regex::Regex,
        substitution: String,
    },
}

/// `redirect`, answered locally with `location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
    /// `scheme`; None = the request's.
    pub scheme: Option<String>,
    /// `authority` (Envoy `host_redirect`: replaces host and port).
    pub host: Option<String>,
    /// `port` / `derivePort` (Istio drops 80 for http and 443 for https).
    pub port: Option<u16>,
    /// `uri` (Envoy `path_redirect`); None = keep the path. Without `?` the request's query
    /// is kept.
    pub path: Option<String>,
}

/// `fault`: injected before the request is routed upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultDelay {
    pub delay: Duration,
    pub fraction: Fraction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultAbort {
    pub code: AbortCode,
    pub fraction: Fraction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortCode {
    /// `httpStatus`.
    Http(u16),
    /// `grpcStatus`, as its number.
    Grpc(u32),
}

/// A share of requests, in millionths (Istio sends percentages to Envoy as
/// `FractionalPercent` over a million).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    pub per_million: u32,
}

impl Fraction {
    pub const ALL: Fraction = Fraction {
        per_million: 1_000_000,
    };
    pub const NONE: Fraction = Fraction { per_million: 0 };

    /// From a percentage (`value: 12.5`), as Istio converts it (truncating).
    pub fn from_percent(p: f64) -> Fraction {
        let v = (p * 10_000.0).clamp(0.0, 1_000_000.0);
        Fraction {
            per_million: v as u32,
        }
    }

    /// Does a uniformly random `roll` in `0..1_000_000` fall inside?
    pub fn hit(self, roll: u32) -> bool {
        roll < self.per_million
    }
}

/// One `mirror` / `mirrors[]` entry: a copy of the request to another cluster.
#[derive(Debug, Clone)]
pub struct MirrorPolicy {
    pub cluster: Arc<str>,
    pub fraction: Fraction,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_on_names_and_sets() {
        assert_eq!(RetryOn::parse("5xx"), Some(RetryOn::FIVE_XX));
        assert_eq!(RetryOn::parse("bogus"), None);
        let d = RetryOn::ISTIO_DEFAULT;
        assert!(
            d.contains(RetryOn::CONNECT_FAILURE) && d.contains(RetryOn::RETRIABLE_STATUS_CODES)
        );
        assert!(!d.intersects(RetryOn::FIVE_XX | RetryOn::RESET));
        assert_eq!(
            format!("{d:?}"),
            "RetryOn(connect-failure,refused-stream,retriable-status-codes,cancelled,unavailable)"
        );
    }

    #[test]
    fn fractions_follow_istio() {
        assert_eq!(Fraction::from_percent(100.0), Fraction::ALL);
        assert_eq!(Fraction::from_percent(0.1).per_million, 1000);
        assert!(Fraction::ALL.hit(999_999));
        assert!(!Fraction::NONE.hit(0));
    }

    #[test]
    fn header_mutations_remove_then_add() {
        let mut h = http::HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("old"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        let m = HeaderMutations {
            add: vec![
                HeaderAdd {
                    name: HeaderName::from_static("x-a"),
                    value: HeaderValue::from_static("new"),
                    append: false,
                },
                HeaderAdd {
                    name: HeaderName::from_static("x-a"),
                    value: HeaderValue::from_static("more"),
                    append: true,
                },
                HeaderAdd {
                    name: HeaderName::from_static("x-gone"),
                    value: HeaderValue::from_static("back"),
                    append: true,
                },
            ],
            remove: vec![HeaderName::from_static("x-gone")],
        };
        m.apply(&mut h);
        let a: Vec<&str> = h
            .get_all("x-a")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(a, ["new", "more"]);
        assert_eq!(h["x-gone"], "back");
    }
}
