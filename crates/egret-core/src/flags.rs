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
    ($($name:ident = $bit:expr, $short:expr;)*) => {
        impl ResponseFlags {
            $(pub const $name: ResponseFlags = ResponseFlags::single($bit);)*
            const SHORT: &'static [(u32, &'static str)] = &[$((1u32 << $bit, $short)),*];
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

impl fmt::Display for ResponseFlags {
    /// `-` when empty, as Envoy prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bits == 0 {
            return f.write_str("-");
        }
        let mut printed = 0u32;
        let mut first = true;
        let ordered = self.order[..self.len as usize].iter().map(|&b| 1u32 << b);
        let rest = Self::SHORT.iter().map(|(bit, _)| *bit);
        for bit in ordered.chain(rest) {
            if self.bits & bit == 0 || printed & bit != 0 {
                continue;
            }
            printed |= bit;
            let short = Self::SHORT
                .iter()
                .find(|(b, _)| *b == bit)
                .map_or("", |(_, s)| s);
            if !first {
                f.write_str(",")?;
            }
            f.write_str(short)?;
            first = false;
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
        // Envoy 1.40 prints in the order set: retries exhausted after a connect failure.
        let f = ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED
            | ResponseFlags::UPSTREAM_CONNECTION_FAILURE;
        assert_eq!(f.to_string(), "URX,UF");
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
