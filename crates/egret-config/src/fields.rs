//! Every VirtualService field and what Egret does with it. This list is the single source for
//! the warnings the validator gives for fields Egret accepts but does not act on, and for the
//! table in README.md (a test keeps the README's table equal to [`markdown_table`]).

/// What Egret does with a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Behaves as Istio documents it (on an egress gateway).
    Supported,
    /// Accepted with this warning, and not acted on.
    Warned(&'static str),
}

/// One row: the field path (`[]` for list items), its support, and a note for the README.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub path: &'static str,
    pub support: Support,
    pub note: &'static str,
}

const fn ok(path: &'static str, note: &'static str) -> Field {
    Field {
        path,
        support: Support::Supported,
        note,
    }
}

const fn warned(path: &'static str, message: &'static str, note: &'static str) -> Field {
    Field {
        path,
        support: Support::Warned(message),
        note,
    }
}

const IGNORED: &str = crate::validate::NOT_SUPPORTED;
const LOCAL_503: &str = "not supported yet; matching requests get a local 503 instead";

/// The VirtualService fields (`spec.` omitted), in the order of Istio's reference.
pub const VIRTUAL_SERVICE_FIELDS: &[Field] = &[
    ok("hosts", "Names and `*.suffix` wildcards; short names are qualified with the VirtualService's namespace. Several VirtualServices for one host are merged in load order with catch-all routes moved last (Istio)."),
    ok("gateways", "`ns/name`, `name` (same namespace) and `mesh` (ignored by a gateway)."),
    ok("exportTo", "`.`, `*` and namespace names."),
    ok("http[].name", "`%ROUTE_NAME%`."),
    ok("http[].match[].uri, scheme, method, authority", "`exact`, `prefix`, `regex` (RE2 syntax, whole value)."),
    ok("http[].match[].headers, withoutHeaders, queryParams", "Header names are case-insensitive."),
    ok("http[].match[].ignoreUriCase", ""),
    ok("http[].match[].port, gateways, sourceLabels, sourceNamespace", "Select the gateway and server port at load time."),
    warned("http[].match[].statPrefix", IGNORED, "Per-route statistics are not kept."),
    ok("http[].match[].name", ""),
    ok("http[].route[].destination", "`host`, `subset`, `port.number`."),
    ok("http[].route[].weight", "Must add up to 100 with several destinations."),
    ok("http[].route[].headers", "With one destination merged after the rule's `headers` (so it wins); with several applied before them (so the rule's win), as Istio configures Envoy."),
    ok("http[].redirect", "`uri`, `authority`, `port`, `derivePort`, `scheme`, `redirectCode` (301, 302, 303, 307, 308); answered locally with `location`, details `direct_response`."),
    ok("http[].directResponse.status, body.string", ""),
    warned("http[].directResponse.body.bytes", IGNORED, "The response has no body."),
    warned("http[].delegate", LOCAL_503, ""),
    ok("http[].rewrite.uri", "Replaces the matched prefix (the whole path of an exact or regex match); `x-envoy-original-path` is sent, so the access log shows the original path."),
    ok("http[].rewrite.uriRegexRewrite", "Every match in the path is replaced; `\\1` refers to a group."),
    ok("http[].rewrite.authority", "Also from a `host` header in `headers.request`; `x-envoy-original-host` is sent."),
    ok("http[].timeout", "`504 UT response_timeout`."),
    ok("http[].retries.attempts, perTryTimeout, retryOn, backoff", "No `retries`: Istio's default (2 retries on connect-failure, refused-stream, unavailable, cancelled, 503). `attempts: 0` disables. Bodies up to 1 MiB are kept for replay (also while still arriving); larger ones are not retried, and one outgrowing the buffer during a back-off is a `507` (as Envoy)."),
    ok("http[].retries.retryIgnorePreviousHosts", ""),
    warned("http[].retries.retryRemoteLocalities", IGNORED, "Endpoints have no locality at the gateway."),
    ok("http[].fault.delay.fixedDelay, percentage, percent", "`DI`; without a percentage no request is delayed (Istio)."),
    warned("http[].fault.delay.exponentialDelay", "not supported by Istio either; the delay is ignored", ""),
    ok("http[].fault.abort.httpStatus, grpcStatus, percentage", "`FI`, body `fault filter abort`, details `fault_filter_abort`; gRPC requests get a trailers-only `grpc-status`. Without a percentage nothing is aborted (Istio)."),
    warned("http[].fault.abort.http2Error", "not supported by Istio either; ignored", ""),
    ok("http[].mirror, mirrorPercentage, mirrorPercent, mirrors", "Fire-and-forget copy with the authority `host-shadow`; the request body streams to it as it arrives, whatever its size (Envoy's streaming shadows)."),
    warned("http[].corsPolicy", IGNORED, ""),
    ok("http[].headers.request, headers.response", "`set`, `add`, `remove`, applied to every response of the route, local replies included. Values are sent literally (Envoy's `%COMMAND%` substitutions are not expanded; such values warn)."),
    ok("tls[].match[].sniHosts, port, gateways, sourceLabels, sourceNamespace", "TLS passthrough by SNI."),
    warned("tls[].match[].destinationSubnets", IGNORED, ""),
    ok("tls[].route[].destination, weight", ""),
    ok("tcp[].match[].port, gateways, sourceLabels, sourceNamespace", ""),
    warned("tcp[].match[].destinationSubnets", IGNORED, ""),
    warned("tcp[].match[].sourceSubnet", IGNORED, ""),
    ok("tcp[].route[].destination, weight", ""),
];

/// The warning for a field the validator reports as not acted on. `path` must be a
/// [`Support::Warned`] row of [`VIRTUAL_SERVICE_FIELDS`] (a test checks every call).
pub(crate) fn vs_warning(path: &str) -> &'static str {
    VIRTUAL_SERVICE_FIELDS
        .iter()
        .find(|f| f.path == path)
        .and_then(|f| match f.support {
            Support::Warned(m) => Some(m),
            Support::Supported => None,
        })
        .unwrap_or(IGNORED)
}

/// The README's table: `| Field | Egret | Notes |`.
pub fn markdown_table() -> String {
    render_field_table(VIRTUAL_SERVICE_FIELDS.iter().map(|f| {
        let warning = match f.support {
            Support::Supported => None,
            Support::Warned(m) => Some(m),
        };
        (f.path, warning, f.note)
    }))
}

/// A README field table from `(paths, warning, note)` rows; shared by the VirtualService and
/// DestinationRule tables. `paths` may list several fields separated by `, `.
pub(crate) fn render_field_table<'a>(
    rows: impl IntoIterator<Item = (&'a str, Option<&'a str>, &'a str)>,
) -> String {
    let mut out = String::from("| Field | Egret | Notes |\n|---|---|---|\n");
    for (paths, warning, note) in rows {
        let support = match warning {
            None => "supported".to_string(),
            Some(m) => format!("warning: \"{m}\""),
        };
        let paths = paths
            .split(", ")
            .map(|p| format!("`{p}`"))
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!("| {paths} | {support} | {note} |\n"));
    }
    out
}

/// The text of README.md between `<!-- {marker}:start -->` and `<!-- {marker}:end -->`.
#[cfg(test)]
pub(crate) fn readme_section(marker: &str) -> String {
    let readme_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(readme_path).expect("README.md");
    let start = format!("<!-- {marker}:start -->\n");
    let end = format!("<!-- {marker}:end -->");
    let from = readme.find(&start).expect("start marker in README.md") + start.len();
    let to = readme[from..].find(&end).expect("end marker in README.md") + from;
    readme[from..to].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README.md's table between the `vs-fields` markers is exactly [`markdown_table`]: edit
    /// the list above, then paste the output of this test's failure message.
    #[test]
    fn readme_table_matches_the_code() {
        let expected = markdown_table();
        assert!(
            readme_section("vs-fields") == expected,
            "README.md's VirtualService table is out of date; replace it with:\n{expected}"
        );
    }

    #[test]
    fn paths_are_unique() {
        for (i, f) in VIRTUAL_SERVICE_FIELDS.iter().enumerate() {
            assert!(
                VIRTUAL_SERVICE_FIELDS[i + 1..]
                    .iter()
                    .all(|g| g.path != f.path),
                "{} twice",
                f.path
            );
        }
    }
}
