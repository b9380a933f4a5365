//! Host patterns as Istio writes them (`example.com`, `*.example.com`, `*`) and the lookup
//! index route tables use: exact names by hash, wildcards by walking the name's label
//! suffixes, so a lookup costs the same with ten hosts or ten thousand.

// foldhash, not SipHash: looked up for every request. Only the configuration inserts keys,
// so a client cannot make the buckets collide.
use foldhash::{HashMap, HashMapExt};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `example.com` (stored lower-case)
    Exact(String),
    /// `*.example.com`: stored as `.example.com`; matches any name ending so, with at least
    /// one character before the dot.
    Suffix(String),
    /// `*`
    Any,
}

impl HostPattern {
    pub fn parse(s: &str) -> HostPattern {
        let s = s.trim().to_ascii_lowercase();
        if s == "*" {
            HostPattern::Any
        } else if let Some(rest) = s.strip_prefix('*') {
            HostPattern::Suffix(rest.to_string())
        } else {
            HostPattern::Exact(s)
        }
    }

    /// Does `host` (already lower-case, no port) match this pattern?
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(e) => e == host,
            HostPattern::Suffix(sfx) => host.len() > sfx.len() && host.ends_with(sfx.as_str()),
            HostPattern::Any => true,
        }
    }

    /// Is every host matched by `self` also matched by `other`? Used to intersect a Gateway
    /// server's hosts with a VirtualService's hosts, as Istio does.
    pub fn within(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (_, HostPattern::Any) => true,
            (HostPattern::Any, _) => false,
            (HostPattern::Exact(a), p) => p.matches(a),
            (HostPattern::Suffix(a), HostPattern::Suffix(b)) => a.ends_with(b.as_str()),
            (HostPattern::Suffix(_), HostPattern::Exact(_)) => false,
        }
    }

    /// The narrower of two overlapping patterns, or None when they don't overlap.
    pub fn intersect(&self, other: &HostPattern) -> Option<HostPattern> {
        if self.within(other) {
            Some(self.clone())
        } else if other.within(self) {
            Some(other.clone())
        } else {
            None
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(e) => f.write_str(e),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

/// Maps host names to values with Envoy's virtual-host precedence: exact match first, then
/// the longest wildcard suffix, then `*`.
#[derive(Clone, Debug)]
pub struct HostIndex<T> {
    exact: HashMap<String, T>,
    suffix: HashMap<String, T>,
    any: Option<T>,
}

impl<T> Default for HostIndex<T> {
    fn default() -> Self {
        HostIndex {
            exact: HashMap::new(),
            suffix: HashMap::new(),
            any: None,
        }
    }
}

impl<T> HostIndex<T> {
    /// Inserts unless the pattern is already present (first one wins, like Istio's ordering).
    pub fn insert(&mut self, pattern: &HostPattern, value: T) -> bool {
        match pattern {
            HostPattern::Exact(e) => insert_new(&mut self.exact, e, value),
            HostPattern::Suffix(s) => insert_new(&mut self.suffix, s, value),
            HostPattern::Any => {
                if self.any.is_some() {
                    return false;
                }
                self.any = Some(value);
                true
            }
        }
    }

    /// `host` must be lower-case and without a port.
    pub fn find(&self, host: &str) -> Option<&T> {
        if let Some(v) = self.exact.get(host) {
            return Some(v);
        }
        if !self.suffix.is_empty() {
            // Longest suffix first: ".b.example.com" before ".example.com" before ".com".
            let mut rest = host;
            while let Some(dot) = rest[1.min(rest.len())..].find('.') {
                let sfx = &rest[dot + 1..];
                if let Some(v) = self.suffix.get(sfx) {
                    return Some(v);
                }
                rest = sfx;
            }
        }
        self.any.as_ref()
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.suffix.len() + usize::from(self.any.is_some())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn insert_new<T>(map: &mut HashMap<String, T>, key: &str, value: T) -> bool {
    if map.contains_key(key) {
        return false;
    }
    map.insert(key.to_string(), value);
    true
}

/// Splits `host[:port]` (or `[v6]:port`) and lower-cases the host only when needed.
pub fn split_authority(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            let port = rest[end + 1..]
                .strip_prefix(':')
                .and_then(|p| p.parse().ok());
            return (&authority[..end + 2], port);
        }
        return (authority, None);
    }
    match authority.rfind(':') {
        Some(i)
            if authority[i + 1..].bytes().all(|b| b.is_ascii_digit())
                && i + 1 < authority.len() =>
        {
            (&authority[..i], authority[i + 1..].parse().ok())
        }
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_exact_then_longest_suffix_then_any() {
        let mut idx = HostIndex::default();
        idx.insert(&HostPattern::parse("*"), "any");
        idx.insert(&HostPattern::parse("*.com"), "com");
        idx.insert(&HostPattern::parse("*.cnn.com"), "cnn");
        idx.insert(&HostPattern::parse("edition.cnn.com"), "exact");
        assert_eq!(idx.find("edition.cnn.com"), Some(&"exact"));
        assert_eq!(idx.find("a.b.cnn.com"), Some(&"cnn"));
        assert_eq!(idx.find("cnn.com"), Some(&"com"));
        assert_eq!(idx.find("example.org"), Some(&"any"));
        let mut idx2: HostIndex<u8> = HostIndex::default();
        idx2.insert(&HostPattern::parse("*.cnn.com"), 1);
        assert_eq!(idx2.find("cnn.com"), None);
        assert_eq!(idx2.find(".cnn.com"), None);
    }

    #[test]
    fn intersect_and_within() {
        let a = HostPattern::parse("*.cnn.com");
        let b = HostPattern::parse("edition.cnn.com");
        assert_eq!(a.intersect(&b), Some(b.clone()));
        assert_eq!(HostPattern::Any.intersect(&a), Some(a.clone()));
        assert_eq!(b.intersect(&HostPattern::parse("x.org")), None);
    }

    #[test]
    fn authority_split() {
        assert_eq!(split_authority("a.com:80"), ("a.com", Some(80)));
        assert_eq!(split_authority("a.com"), ("a.com", None));
        assert_eq!(split_authority("[::1]:8080"), ("[::1]", Some(8080)));
        assert_eq!(split_authority("a.com:"), ("a.com:", None));
    }
}
