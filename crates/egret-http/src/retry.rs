//! Retry decisions, as Envoy's router makes them for a route's `retry_policy` (checked with
//! Envoy 1.40). Pure functions: the forwarding loop asks, these answer.

use std::time::Duration;

use egret_core::{RetryOn, RetryPolicy};

/// How an attempt failed before response headers arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made (refused, timed out, TLS failed): Envoy's
    /// `LocalConnectionFailure`/`RemoteConnectionFailure`.
    ConnectFailure,
    /// The HTTP/2 stream was refused (`REFUSED_STREAM`).
    RefusedStream,
    /// The connection or stream was reset or closed before a response.
    Reset,
    /// `perTryTimeout` expired (Envoy treats it as a local reset).
    PerTryTimeout,
}

/// Would Envoy retry after this failure? (`RetryStateImpl::wouldRetryFromReset`: a
/// connect failure is retried by `connect-failure`, and like every other reset by `5xx`,
/// `gateway-error` and `reset`; a per-try timeout only by those three.)
pub fn retry_on_failure(on: RetryOn, failure: Failure) -> bool {
    let any_reset = RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET;
    match failure {
        Failure::ConnectFailure => {
            on.intersects(any_reset | RetryOn::CONNECT_FAILURE | RetryOn::RESET_BEFORE_REQUEST)
        }
        Failure::RefusedStream => on.intersects(any_reset | RetryOn::REFUSED_STREAM),
        Failure::Reset | Failure::PerTryTimeout => on.intersects(any_reset),
    }
}

/// Would Envoy retry this response? (`wouldRetryFromHeaders`.)
pub fn retry_on_response(policy: &RetryPolicy, status: u16, headers: &http::HeaderMap) -> bool {
    let on = policy.retry_on;
    if on.contains(RetryOn::FIVE_XX) && status >= 500 {
        return true;
    }
    if on.contains(RetryOn::GATEWAY_ERROR) && (502..=504).contains(&status) {
        return true;
    }
    if on.contains(RetryOn::RETRIABLE_4XX) && status == 409 {
        return true;
    }
    if on.contains(RetryOn::RETRIABLE_STATUS_CODES)
        && policy.retriable_status_codes.contains(&status)
    {
        return true;
    }
    grpc_retriable(on, headers)
}

/// gRPC conditions look at a trailers-only response's `grpc-status`.
fn grpc_retriable(on: RetryOn, headers: &http::HeaderMap) -> bool {
    let is_grpc = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !is_grpc {
        return false;
    }
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
    else {
        return false;
    };
    let wanted = match code {
        1 => RetryOn::GRPC_CANCELLED,
        4 => RetryOn::GRPC_DEADLINE_EXCEEDED,
        8 => RetryOn::GRPC_RESOURCE_EXHAUSTED,
        13 => RetryOn::GRPC_INTERNAL,
        14 => RetryOn::GRPC_UNAVAILABLE,
        _ => return false,
    };
    on.contains(wanted)
}

/// Envoy's jittered exponential back-off before retry number `retry` (1-based): uniform in
/// `[0, base·2^(retry-1)]`, capped at 10× base. `roll` is uniform in `0..=u64::MAX`.
pub fn backoff(base: Duration, retry: u32, roll: u64) -> Duration {
    let base_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX).max(1);
    let max = base_ms
        .saturating_mul(1u64 << retry.saturating_sub(1).min(20))
        .min(base_ms.saturating_mul(10));
    Duration::from_millis(roll % (max + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: RetryOn, codes: &[u16]) -> RetryPolicy {
        RetryPolicy {
            retry_on: on,
            retriable_status_codes: codes.to_vec(),
            ..RetryPolicy::istio_default()
        }
    }

    #[test]
    fn failures_as_envoy_1_40() {
        let d = RetryOn::ISTIO_DEFAULT;
        assert!(retry_on_failure(d, Failure::ConnectFailure));
        assert!(retry_on_failure(d, Failure::RefusedStream));
        // Checked with Envoy: the default policy does not retry a reset or a per-try timeout.
        assert!(!retry_on_failure(d, Failure::Reset));
        assert!(!retry_on_failure(d, Failure::PerTryTimeout));
        // `reset` and `5xx` retry connect failures too; `retriable-4xx` does not.
        assert!(retry_on_failure(RetryOn::RESET, Failure::ConnectFailure));
        assert!(retry_on_failure(RetryOn::FIVE_XX, Failure::PerTryTimeout));
        assert!(!retry_on_failure(
            RetryOn::RETRIABLE_4XX,
            Failure::ConnectFailure
        ));
        assert!(!retry_on_failure(RetryOn::CONNECT_FAILURE, Failure::Reset));
    }

    #[test]
    fn statuses_as_envoy_1_40() {
        let h = http::HeaderMap::new();
        assert!(retry_on_response(&RetryPolicy::istio_default(), 503, &h));
        assert!(!retry_on_response(&RetryPolicy::istio_default(), 500, &h));
        assert!(retry_on_response(&policy(RetryOn::FIVE_XX, &[]), 500, &h));
        assert!(!retry_on_response(&policy(RetryOn::FIVE_XX, &[]), 409, &h));
        assert!(retry_on_response(
            &policy(RetryOn::GATEWAY_ERROR, &[]),
            502,
            &h
        ));
        assert!(!retry_on_response(
            &policy(RetryOn::GATEWAY_ERROR, &[]),
            500,
            &h
        ));
        assert!(retry_on_response(
            &policy(RetryOn::RETRIABLE_4XX, &[]),
            409,
            &h
        ));
        let codes = policy(RetryOn::RETRIABLE_STATUS_CODES, &[418]);
        assert!(retry_on_response(&codes, 418, &h));
        assert!(!retry_on_response(&codes, 503, &h));
        // The codes only count with `retriable-status-codes`.
        assert!(!retry_on_response(
            &policy(RetryOn::FIVE_XX, &[418]),
            418,
            &h
        ));
    }

    #[test]
    fn grpc_status_in_headers() {
        let mut h = http::HeaderMap::new();
        h.insert("content-type", "application/grpc".parse().unwrap());
        h.insert("grpc-status", "14".parse().unwrap());
        assert!(retry_on_response(&RetryPolicy::istio_default(), 200, &h));
        h.insert("grpc-status", "13".parse().unwrap());
        assert!(!retry_on_response(&RetryPolicy::istio_default(), 200, &h));
        h.insert("content-type", "text/plain".parse().unwrap());
        h.insert("grpc-status", "14".parse().unwrap());
        assert!(!retry_on_response(&RetryPolicy::istio_default(), 200, &h));
    }

    #[test]
    fn backoff_is_bounded() {
        let base = Duration::from_millis(25);
        for roll in [0, 7, 24, 25, 26, 1000, u64::MAX] {
            assert!(backoff(base, 1, roll) <= Duration::from_millis(25));
            assert!(backoff(base, 2, roll) <= Duration::from_millis(50));
            assert!(backoff(base, 30, roll) <= Duration::from_millis(250));
        }
        assert_eq!(backoff(base, 1, 25), Duration::from_millis(25));
    }
}
