//! Envoy's response flags, printed exactly as `%RESPONSE_FLAGS%` prints them.

use std::fmt;

/// A set of Envoy response flags. Bits are in Envoy's own order
/// (`ResponseFlagUtils::ALL_RESPONSE_STRINGS_FLAGS`), so printing walks the bits low to high
/// and joins with `,` — the same string Envoy writes, e.g. `UF,URX`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32);

macro_rules! flags {
    ($($name:ident = $bit:expr, $short:expr;)*) => {
        impl ResponseFlags {
            $(pub const $name: ResponseFlags = ResponseFlags(1 << $bit);)*
            const SHORT: &'static [(u32, &'static str)] = &[$((1 << $bit, $short)),*];
        }
    };
}

flags! {
    FAILED_LOCAL_HEALTH_CHECK = 0, "LH";
    NO_HEALTHY_UPSTREAM = 1, "UH";
    UPSTREAM_REQUEST_TIMEOUT = 2, "UT";
    LOCAL_RESET = 3, "LR";
    UPSTREAM_REMOTE_RESET = 4, "UR";
    UPSTREAM_CONNECTION_FAILURE = 5, "UF";
    UPSTREAM_CONNECTION_TERMINATION = 6, "UC";
    UPSTREAM_OVERFLOW = 7, "UO";
    NO_ROUTE_FOUND = 8, "NR";
    DELAY_INJECTED = 9, "DI";
    FAULT_INJECTED = 10, "FI";
    RATE_LIMITED = 11, "RL";
    UNAUTHORIZED_EXTERNAL_SERVICE = 12, "UAEX";
    RATE_LIMIT_SERVICE_ERROR = 13, "RLSE";
    DOWNSTREAM_CONNECTION_TERMINATION = 14, "DC";
    UPSTREAM_RETRY_LIMIT_EXCEEDED = 15, "URX";
    STREAM_IDLE_TIMEOUT = 16, "SI";
    INVALID_ENVOY_REQUEST_HEADERS = 17, "IH";
    DOWNSTREAM_PROTOCOL_ERROR = 18, "DPE";
    UPSTREAM_MAX_STREAM_DURATION_REACHED = 19, "UMSDR";
    RESPONSE_FROM_CACHE_FILTER = 20, "RFCF";
    NO_FILTER_CONFIG_FOUND = 21, "NFCF";
    DURATION_TIMEOUT = 22, "DT";
    UPSTREAM_PROTOCOL_ERROR = 23, "UPE";
    NO_CLUSTER_FOUND = 24, "NC";
    OVERLOAD_MANAGER = 25, "OM";
    DNS_RESOLUTION_FAILED = 26, "DF";
    DROP_OVERLOAD = 27, "DO";
    DOWNSTREAM_REMOTE_RESET = 28, "DR";
}

impl ResponseFlags {
    pub const NONE: ResponseFlags = ResponseFlags(0);

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn contains(self, other: ResponseFlags) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }
    pub fn insert(&mut self, other: ResponseFlags) {
        self.0 |= other.0;
    }
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl std::ops::BitOr for ResponseFlags {
    type Output = ResponseFlags;
    fn bitor(self, rhs: Self) -> Self {
        ResponseFlags(self.0 | rhs.0)
    }
}

impl fmt::Display for ResponseFlags {
    /// `-` when empty, as Envoy prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("-");
        }
        let mut first = true;
        for (bit, short) in Self::SHORT {
            if self.0 & bit != 0 {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(short)?;
                first = false;
            }
        }
        Ok(())
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
        let f = ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED | ResponseFlags::UPSTREAM_CONNECTION_FAILURE;
        assert_eq!(f.to_string(), "UF,URX");
        assert_eq!(ResponseFlags::NO_ROUTE_FOUND.to_string(), "NR");
        assert_eq!(
            (ResponseFlags::UPSTREAM_REQUEST_TIMEOUT | ResponseFlags::NO_HEALTHY_UPSTREAM).to_string(),
            "UH,UT"
        );
    }
}
