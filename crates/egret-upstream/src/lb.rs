//! Consistent hashing for `consistentHash` clusters: the request's hash key, a ring (Istio's
//! default algorithm, Envoy's RING_HASH) and a Maglev table (`consistentHash.maglev`).
//!
//! Both are pure functions of the endpoint list, built once per endpoint set. The hash is
//! FNV-1a with a 64-bit finalizer: stable across builds and processes (std's hasher is not
//! promised to be), so two gateway replicas send the same key to the same endpoint. Endpoint
//! placement differs from Envoy's (which uses xxHash over its own host naming); what is
//! preserved is the contract: the same key goes to the same endpoint while the set is stable,
//! and a change of the set moves only a share of the keys.

use std::net::{IpAddr, SocketAddr};

use egret_core::HashPolicy;
use http::HeaderMap;

/// FNV-1a over `bytes`, then a 64-bit avalanche so short, similar inputs spread evenly.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// The 64-bit finalizer of splitmix64.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The request's hash for `policy`, or None when the request lacks the key (Envoy then
/// balances it like RANDOM).
pub fn request_hash(
    policy: &HashPolicy,
    headers: &HeaderMap,
    path_and_query: &str,
    source: IpAddr,
) -> Option<u64> {
    match policy {
        HashPolicy::Header(name) => {
            // Envoy hashes every value of a repeated header, in order.
            let mut values = headers.get_all(name).iter().peekable();
            values.peek()?;
            let mut buf = Vec::new();
            for v in values {
                buf.extend_from_slice(v.as_bytes());
            }
            Some(hash64(&buf))
        }
        HashPolicy::Cookie { name } => cookie_value(headers, name).map(|v| hash64(v.as_bytes())),
        HashPolicy::SourceIp => Some(hash64(source.to_string().as_bytes())),
        HashPolicy::QueryParameter(name) => {
            egret_core::query::query_param(path_and_query, name).map(|v| hash64(v.as_bytes()))
        }
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Upper bound on ring entries, as Envoy's default `maximum_ring_size` (8M).
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

/// A hash ring: each endpoint placed at `ceil(min_size / n)` points; a key belongs to the
/// first point clockwise from its hash.
#[derive(Debug)]
pub struct Ring {
    /// (point, endpoint index), sorted by point.
    points: Vec<(u64, u32)>,
}

impl Ring {
    pub fn new(endpoints: &[SocketAddr], minimum_ring_size: u64) -> Ring {
        let n = endpoints.len() as u64;
        if n == 0 {
            return Ring { points: Vec::new() };
        }
        let min = minimum_ring_size.clamp(n, MAX_RING_SIZE);
        let per_endpoint = min.div_ceil(n);
        let mut points = Vec::with_capacity((per_endpoint * n) as usize);
        for (i, addr) in endpoints.iter().enumerate() {
            let name = addr.to_string();
            for k in 0..per_endpoint {
                let key = format!("{name}_{k}");
                points.push((hash64(key.as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// Endpoint indexes in ring order starting at the owner of `hash` (the owner first, then
    /// the next distinct endpoints clockwise, for when the owner is ejected or was tried).
    pub fn walk(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|(p, _)| *p < hash);
        let len = self.points.len();
        (0..len).map(move |i| self.points[(start + i) % len].1 as usize)
    }
}

/// A Maglev lookup table (Eisenbud et al., NSDI 2016): each endpoint fills the slots of its
/// own permutation in turn, so every endpoint owns about `size / n` slots and a change of
/// the set moves few of them.
#[derive(Debug)]
pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    pub fn new(endpoints: &[SocketAddr], table_size: u64) -> Maglev {
        let n = endpoints.len();
        let m = table_size.max(1) as usize;
        if n == 0 {
            return Maglev { table: Vec::new() };
        }
        let perms: Vec<(usize, usize)> = endpoints
            .iter()
            .map(|a| {
                let name = a.to_string();
                let offset = (hash64(name.as_bytes()) % m as u64) as usize;
                let skip = if m > 1 {
                    (mix(hash64(name.as_bytes()) ^ 0x9e37_79b9_7f4a_7c15) % (m as u64 - 1)) as usize
                        + 1
                } else {
                    1
                };
                (offset, skip)
            })
            .collect();
        let mut next = vec![0usize; n];
        let mut table = vec![u32::MAX; m];
        let mut filled = 0;
        'fill: loop {
            for (i, (offset, skip)) in perms.iter().enumerate() {
                // Each endpoint claims its next free preferred slot. With a prime size every
                // permutation visits every slot, so this ends; the bound guards a non-prime.
                let mut tries = 0;
                loop {
                    let slot = (offset + next[i] * skip) % m;
                    next[i] += 1;
                    tries += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                    if tries > m {
                        break;
                    }
                }
                if filled == m {
                    break 'fill;
                }
            }
            if next.iter().all(|k| *k > 2 * m) {
                break;
            }
        }
        // A non-prime size may leave holes: give them to endpoints in turn.
        for (k, slot) in table.iter_mut().enumerate() {
            if *slot == u32::MAX {
                *slot = (k % n) as u32;
            }
        }
        Maglev { table }
    }

    /// The owner of `hash`, then fallbacks: the owners of re-mixed hashes (a Maglev table has
    /// no neighbourhood to walk).
    pub fn walk(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let m = self.table.len() as u64;
        let mut h = hash;
        (0..self.table.len().min(64)).map(move |i| {
            if i > 0 {
                h = mix(h ^ i as u64);
            }
            self.table[(h % m.max(1)) as usize] as usize
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080)))
            .collect()
    }

    #[test]
    fn hash_is_stable() {
        // Fixed values: a change would silently reshuffle every deployed gateway's keys.
        assert_eq!(hash64(b""), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(hash64(b"alice"), hash64(b"alice"));
        assert_ne!(hash64(b"alice"), hash64(b"alicf"));
    }

    #[test]
    fn request_keys() {
        let mut h = HeaderMap::new();
        h.insert("x-user", "alice".parse().unwrap());
        h.insert(
            http::header::COOKIE,
            "a=1; session=\"abc\"; b=2".parse().unwrap(),
        );
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let header = HashPolicy::Header(http::HeaderName::from_static("x-user"));
        assert_eq!(request_hash(&header, &h, "/", ip), Some(hash64(b"alice")));
        let missing = HashPolicy::Header(http::HeaderName::from_static("x-other"));
        assert_eq!(request_hash(&missing, &h, "/", ip), None);
        let cookie = HashPolicy::Cookie {
            name: "session".into(),
        };
        assert_eq!(request_hash(&cookie, &h, "/", ip), Some(hash64(b"abc")));
        let q = HashPolicy::QueryParameter("u".into());
        assert_eq!(
            request_hash(&q, &h, "/p?x=1&u=bob&u=eve", ip),
            Some(hash64(b"bob"))
        );
        assert_eq!(request_hash(&q, &h, "/p?x=1", ip), None);
        assert_eq!(
            request_hash(&HashPolicy::SourceIp, &h, "/", ip),
            Some(hash64(b"10.1.2.3"))
        );
    }

    #[test]
    fn ring_is_consistent_and_spread() {
        let eps = addrs(4);
        let ring = Ring::new(&eps, 1024);
        let mut counts = [0usize; 4];
        for k in 0..4000u32 {
            let h = hash64(&k.to_le_bytes());
            let owner = ring.walk(h).next().unwrap();
            assert_eq!(ring.walk(h).next(), Some(owner));
            counts[owner] += 1;
        }
        for c in counts {
            assert!(c > 600, "{counts:?}");
        }
        // Removing one endpoint: its keys move; of the others' keys only those landing on
        // the points the remaining endpoints gain (the ring keeps its minimum size) move.
        let ring3 = Ring::new(&eps[..3], 1024);
        let (mut kept, mut moved) = (0, 0);
        for k in 0..3000u32 {
            let h = hash64(&k.to_le_bytes());
            let before = ring.walk(h).next().unwrap();
            if before < 3 {
                if ring3.walk(h).next() == Some(before) {
                    kept += 1;
                } else {
                    moved += 1;
                }
            }
        }
        assert!(moved * 4 < kept, "kept {kept}, moved {moved}");
        // The walk visits other endpoints after the owner.
        let h = hash64(b"k");
        let mut seen: Vec<usize> = ring.walk(h).collect();
        seen.dedup();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, vec![0, 1, 2, 3]);
    }

    #[test]
    fn maglev_fills_evenly_and_moves_little() {
        let eps = addrs(3);
        let m = Maglev::new(&eps, 65537);
        let mut counts = [0usize; 3];
        for s in &m.table {
            counts[*s as usize] += 1;
        }
        for c in counts {
            assert!((21000..=22700).contains(&c), "{counts:?}");
        }
        let m2 = Maglev::new(&eps[..2], 65537);
        let moved = m
            .table
            .iter()
            .zip(&m2.table)
            .filter(|(a, b)| **a < 2 && a != b)
            .count();
        assert!(moved < 65537 / 10, "{moved}");
        let h = hash64(b"key");
        assert_eq!(m.walk(h).next(), m.walk(h).next());
        // Tiny and non-prime sizes still give a full table.
        assert!(Maglev::new(&eps, 4).table.iter().all(|s| *s < 3));
    }
}
