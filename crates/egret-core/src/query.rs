//! The query of a request target, as Envoy reads it.

/// The first value of query parameter `name` in `path_and_query` (`/x?a=1&b=2`), raw as it
/// appears (Envoy does not percent-decode it); `""` for a bare `name`. Used by the
/// `QUERY_PARAM` access-log operator and the `queryParameterName` hash policy.
pub fn query_param<'a>(path_and_query: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path_and_query.split_once('?')?;
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            None if pair == name => Some(""),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_raw_value() {
        assert_eq!(query_param("/x?a=1&b=2&a=3", "a"), Some("1"));
        assert_eq!(query_param("/x?a=%20#f", "a"), Some("%20"));
        assert_eq!(query_param("/x?flag&b=2", "flag"), Some(""));
        assert_eq!(query_param("/x?b=2", "a"), None);
        assert_eq!(query_param("/x", "a"), None);
    }
}
