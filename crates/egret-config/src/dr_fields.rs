//! Every DestinationRule `trafficPolicy` field and what Egret does with it: the table in
//! README.md's "DestinationRule fields" section (a test keeps the README equal to
//! [`dr_markdown_table`]). Warnings themselves come from `validate.rs`; the same message text
//! is quoted here.

/// One row: field paths under `trafficPolicy` (also valid in `subsets[].trafficPolicy` and
/// `portLevelSettings[]`), what Egret does, and a note.
#[derive(Clone, Copy, Debug)]
pub struct DrField {
    pub path: &'static str,
    /// `None` = supported; `Some(message)` = accepted with this warning.
    pub warning: Option<&'static str>,
    pub note: &'static str,
}

const fn ok(path: &'static str, note: &'static str) -> DrField {
    DrField {
        path,
        warning: None,
        note,
    }
}

const fn warned(path: &'static str, warning: &'static str, note: &'static str) -> DrField {
    DrField {
        path,
        warning: Some(warning),
        note,
    }
}

const IGNORED: &str = crate::validate::NOT_SUPPORTED;

/// The fields, in the order of Istio's reference.
pub const DESTINATION_RULE_FIELDS: &[DrField] = &[
    ok("loadBalancer.simple", "`ROUND_ROBIN`, `RANDOM`, `LEAST_REQUEST` (`LEAST_CONN`). Unset or `UNSPECIFIED`: Istio's default `LEAST_REQUEST` — the fewer in-flight requests of two distinct endpoints drawn at random."),
    warned("loadBalancer.simple: PASSTHROUGH", "PASSTHROUGH sends each connection to its original destination, which at a gateway is the gateway itself; the default LEAST_REQUEST is used", ""),
    ok("loadBalancer.consistentHash.httpHeaderName, useSourceIp, httpQueryParameterName", "Same key, same endpoint while the endpoint set is stable. `useSourceIp` also applies to TCP routes. A request without the key is balanced at random (Envoy)."),
    ok("loadBalancer.consistentHash.httpCookie.name, path", "The cookie the client sends is the key."),
    warned("loadBalancer.consistentHash.httpCookie.ttl", "Envoy would set the cookie on responses when the request lacks it; Egret does not generate cookies: requests without it are balanced at random", ""),
    ok("loadBalancer.consistentHash.ringHash.minimumRingSize, minimumRingSize", "Ring hash (Istio's default algorithm, 1024 points). Placement uses FNV-1a + a 64-bit mix, stable across builds and replicas; it differs from Envoy's, the consistency contract is the same."),
    ok("loadBalancer.consistentHash.maglev.tableSize", "Maglev table (default 65537; must be prime)."),
    warned("loadBalancer.localityLbSetting, warmupDurationSecs, warmup", IGNORED, "Endpoints have no locality at the gateway."),
    ok("connectionPool.tcp.maxConnections", "Open connections to the cluster. At the limit a request waits as pending."),
    ok("connectionPool.tcp.connectTimeout", "`UF` with reason `connection timeout`."),
    ok("connectionPool.tcp.tcpKeepalive", "SO_KEEPALIVE with `time`, `interval`, `probes` (unset: kernel defaults), HTTP and TCP upstreams."),
    ok("connectionPool.tcp.maxConnectionDuration", "An HTTP connection older than this is not reused."),
    ok("connectionPool.tcp.idleTimeout", "Idle timeout of HTTP connections when `http.idleTimeout` is unset (TCP sessions: `--tcp-idle-timeout`)."),
    ok("connectionPool.http.http1MaxPendingRequests", "Requests waiting for a connection (HTTP/1.1, or HTTP/2 while connecting). Past it: `503 UO`."),
    ok("connectionPool.http.http2MaxRequests", "Requests in flight to the cluster, any protocol. Past it: `503 UO`."),
    ok("connectionPool.http.maxRequestsPerConnection", "The connection closes after this many requests."),
    ok("connectionPool.http.maxRetries", "Retries in flight to the cluster. Past it a retriable failure is not retried and is flagged `UO`, as in Envoy."),
    ok("connectionPool.http.idleTimeout", "Idle HTTP/1.1 upstream connections are dropped after it (default 60 s)."),
    ok("connectionPool.http.h2UpgradePolicy", "`UPGRADE`: HTTP/2 (h2c prior knowledge, or ALPN h2 over TLS) to the endpoints of an HTTP port."),
    warned("connectionPool.http.useClientProtocol, maxConcurrentStreams", IGNORED, ""),
    ok("outlierDetection.consecutive5xxErrors, consecutiveGatewayErrors", "Unset `consecutive5xxErrors`: Envoy's 5; `0` turns a detection off. Connect failures and resets count as 503, timeouts as 504."),
    ok("outlierDetection.interval, baseEjectionTime, maxEjectionPercent", "Ejected for base × ejections (max 300 s), back at the next interval; at most `maxEjectionPercent` (default 10%: with two endpoints, none) ejected."),
    ok("outlierDetection.minHealthPercent", "Panic threshold: below it ejections are ignored. Default 0: with every endpoint ejected, `503 UH`."),
    ok("outlierDetection.splitExternalLocalOriginErrors, consecutiveLocalOriginFailures", "Connect failures and timeouts counted apart from 5xx."),
    warned("outlierDetection.consecutiveErrors", "deprecated and no longer applied by Istio; use consecutive5xxErrors or consecutiveGatewayErrors; ignored", ""),
    ok("tls", "TLS origination, see *TLS*."),
    ok("portLevelSettings[]", "For the destination port: replaces the top-level parts wholesale (Istio)."),
    warned("tunnel, proxyProtocol, retryBudget", IGNORED, ""),
];

/// The README table.
pub fn dr_markdown_table() -> String {
    crate::fields::render_field_table(
        DESTINATION_RULE_FIELDS
            .iter()
            .map(|f| (f.path, f.warning, f.note)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README.md's table between the `dr-fields` markers is exactly [`dr_markdown_table`].
    #[test]
    fn readme_table_matches_the_code() {
        let want = dr_markdown_table();
        assert!(
            crate::fields::readme_section("dr-fields") == want,
            "README.md's DestinationRule table is out of date; replace it with:\n{want}"
        );
    }
}
