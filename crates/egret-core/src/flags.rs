//! Envoy's response flags, printed exactly as `%RESPONSE_FLAGS%` prints them.

use std::fmt;

/// A set of Envoy response flags, remembering the order they were set in.
///
/// Envoy (since 1.30) keeps response flags in a vector and prints them in the order they were
/// set, joined by `,`: a connect failure whose retries ran out prints `URX,UF` (checked with
/// Envoy 1.40). So we keep the membership bits plus the insertion order, in a `Copy` value
/// that needs no allocation.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags {
    bits: u32,
    order: [u8; MAX_ORDERED],
    len: u8,
}

/// More flags than this on one request never happen in practice; extra ones still count as
/// set and print after the ordered ones, in bit order.
const MAX_ORDERED: usize = 6;

macro_rules! flags {
    ($($name:ident = $bit:expr, $short:expr, $long:expr;)*) => {
        impl ResponseFlags {
            $(pub const $name: ResponseFlags = ResponseFlags::single($bit);)*
            /// (bit, `%RESPONSE_FLAGS%` name, `%RESPONSE_FLAGS_LONG%` name).
            const NAMES: &'static [(u32, &'static str, &'static str)] =
                &[$((1u32 << $bit, $short, $long)),*];
        }
    };
}

flags! {
    FAILED_LOCAL_HEALTH_CHECK = 0, "LH", "FailedLocalHealthCheck";
    NO_HEALTHY_UPSTREAM = 1, "UH", "NoHealthyUpstream";
    UPSTREAM_REQUEST_TIMEOUT = 2, "UT", "UpstreamRequestTimeout";
    LOCAL_RESET = 3, "LR", "LocalReset";
    UPSTREAM_REMOTE_RESET = 4, "UR", "UpstreamRemoteReset";
    UPSTREAM_CONNECTION_FAILURE = 5, "UF", "UpstreamConnectionFailure";
    UPSTREAM_CONNECTION_TERMINATION = 6, "UC", "UpstreamConnectionTermination";
    UPSTREAM_OVERFLOW = 7, "UO", "UpstreamOverflow";
    NO_ROUTE_FOUND = 8, "NR", "NoRouteFound";
    DELAY_INJECTED = 9, "DI", "DelayInjected";
    FAULT_INJECTED = 10, "FI", "FaultInjected";
    RATE_LIMITED = 11, "RL", "RateLimited";
    UNAUTHORIZED_EXTERNAL_SERVICE = 12, "UAEX", "UnauthorizedExternalService";
    RATE_LIMIT_SERVICE_ERROR = 13, "RLSE", "RateLimitServiceError";
    DOWNSTREAM_CONNECTION_TERMINATION = 14, "DC", "DownstreamConnectionTermination";
    UPSTREAM_RETRY_LIMIT_EXCEEDED = 15, "URX", "UpstreamRetryLimitExceeded";
    STREAM_IDLE_TIMEOUT = 16, "SI", "StreamIdleTimeout";
    INVALID_ENVOY_REQUEST_HEADERS = 17, "IH", "InvalidEnvoyRequestHeaders";
    DOWNSTREAM_PROTOCOL_ERROR = 18, "DPE", "DownstreamProtocolError";
    UPSTREAM_MAX_STREAM_DURATION_REACHED = 19, "UMSDR", "UpstreamMaxStreamDurationReached";
    RESPONSE_FROM_CACHE_FILTER = 20, "RFCF", "ResponseFromCacheFilter";
    NO_FILTER_CONFIG_FOUND = 21, "NFCF", "NoFilterConfigFound";
    DURATION_TIMEOUT = 22, "DT", "DurationTimeout";
    UPSTREAM_PROTOCOL_ERROR = 23, "UPE", "UpstreamProtocolError";
    NO_CLUSTER_FOUND = 24, "NC", "NoClusterFound";
    OVERLOAD_MANAGER = 25, "OM", "OverloadManagerTerminated";
    DNS_RESOLUTION_FAILED = 26, "DF", "DnsResolutionFailed";
    DROP_OVERLOAD = 27, "DO", "DropOverload";
    DOWNSTREAM_REMOTE_RESET = 28, "DR", "DownstreamRemoteReset";
}

impl ResponseFlags {
    pub const NONE: ResponseFlags = ResponseFlags {
        bits: 0,
        order: [0; MAX_ORDERED],
        len: 0,
    };

    const fn single(bit: u8) -> ResponseFlags {
        let mut order = [0; MAX_ORDERED];
        order[0] = bit;
        ResponseFlags {
            bits: 1 << bit,
            order,
            len: 1,
        }
    }

    pub fn is_empty(self) -> bool {
        self.bits == 0
    }
    /// True when every flag of `other` is set (and `other` is not empty).
    pub fn contains(self, other: ResponseFlags) -> bool {
        self.bits & other.bits == other.bits && other.bits != 0
    }
    /// Adds the flags of `other` (in its order) after those already set.
    pub fn insert(&mut self, other: ResponseFlags) {
        for &bit in &other.order[..other.len as usize] {
            if self.bits & (1 << bit) == 0 && (self.len as usize) < MAX_ORDERED {
                self.order[self.len as usize] = bit;
                self.len += 1;
            }
        }
        self.bits |= other.bits;
    }
    /// Membership bits (bit i = flag i in Envoy's enum order).
    pub fn bits(self) -> u32 {
        self.bits
    }
}

impl std::ops::BitOr for ResponseFlags {
    type Output = ResponseFlags;
    fn bitor(mut self, rhs: Self) -> Self {
        self.insert(rhs);
        self
    }
}

impl PartialEq<u32> for ResponseFlags {
    fn eq(&self, other: &u32) -> bool {
        self.bits == *other
    }
}

impl ResponseFlags {
    /// The flags' names in the order they were set, joined by `,` (`-` when empty), as
    /// Envoy prints `%RESPONSE_FLAGS%` (short names) and `%RESPONSE_FLAGS_LONG%`.
    fn write_names(&self, f: &mut dyn fmt::Write, long: bool) -> fmt::Result {
        if self.bits == 0 {
            return f.write_str("-");
        }
        let mut printed = 0u32;
        let mut first = true;
        let ordered = self.order[..self.len as usize].iter().map(|&b| 1u32 << b);
        let rest = Self::NAMES.iter().map(|(bit, ..)| *bit);
        for bit in ordered.chain(rest) {
            if self.bits & bit == 0 || printed & bit != 0 {
                continue;
            }
            printed |= bit;
            let name = Self::NAMES.iter().find(|(b, ..)| *b == bit).map_or(
                "",
                |&(_, short, long_name)| if long { long_name } else { short },
            );
            if !first {
                f.write_str(",")?;
            }
            f.write_str(name)?;
            first = false;
        }
        Ok(())
    }

    /// Displays as `%RESPONSE_FLAGS_LONG%` prints (`NoRouteFound`, `-` when empty).
    pub fn long_names(self) -> impl fmt::Display {
        struct Long(ResponseFlags);
        impl fmt::Display for Long {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.write_names(f, true)
            }
        }
        Long(self)
    }
}

impl fmt::Display for ResponseFlags {
    /// `-` when empty, as Envoy prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_names(f, false)
    }
}

impl fmt::Debug for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResponseFlags({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_like_envoy() {
        assert_eq!(ResponseFlags::NONE.to_string(), "-");
        // Envoy 1.40 prints in the order set: retries exhausted after a connect failure.
        let f = ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED
            | ResponseFlags::UPSTREAM_CONNECTION_FAILURE;
        assert_eq!(f.to_string(), "URX,UF");
        assert_eq!(
            f.long_names().to_string(),
            "UpstreamRetryLimitExceeded,UpstreamConnectionFailure"
        );
        assert_eq!(ResponseFlags::NONE.long_names().to_string(), "-");
        assert_eq!(
            ResponseFlags::OVERLOAD_MANAGER.long_names().to_string(),
            "OverloadManagerTerminated"
        );
        let mut g = ResponseFlags::UPSTREAM_CONNECTION_FAILURE;
        g.insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        g.insert(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
        assert_eq!(g.to_string(), "UF,URX");
        assert_eq!(ResponseFlags::NO_ROUTE_FOUND.to_string(), "NR");
        assert_eq!(
            (ResponseFlags::UPSTREAM_REQUEST_TIMEOUT | ResponseFlags::NO_HEALTHY_UPSTREAM)
                .to_string(),
            "UT,UH"
        );
    }
}
