//! Who may see the live page. Like Frigate's split between its internal (open) and its
//! exposed (authenticated) port: camera pictures are served without a token only on a
//! loopback address. Bound elsewhere without a token, the page stays off (with one warning)
//! while `/metrics` and `/healthz` keep working for Prometheus and probes.

use std::net::SocketAddr;

/// Environment variable read for the page token when `--page-token` is not given.
pub const TOKEN_ENV: &str = "ADVGUARD_PAGE_TOKEN";

/// The page's access rule for one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageAccess {
    /// Loopback bind without a token: anyone on this machine.
    Open,
    /// Requests must carry this token (`Authorization: Bearer …` or `?token=…`).
    Token(String),
    /// Not served; the reason is the answer's body.
    Disabled(String),
}

impl PageAccess {
    /// The rule for a server bound at `bound` with an optional `token` (empty = none).
    pub fn decide(bound: SocketAddr, token: Option<&str>) -> PageAccess {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            Some(t) => PageAccess::Token(t.to_string()),
            None if bound.ip().is_loopback() => PageAccess::Open,
            None => PageAccess::Disabled(format!(
                "the live page is off: {bound} is not a loopback address and no page token is set \
                 (--page-token, {TOKEN_ENV} or [metrics] page_token)"
            )),
        }
    }

    /// Whether a request with this `Authorization` header value and query string may see it.
    pub fn allows(&self, authorization: Option<&str>, query: &str) -> bool {
        match self {
            PageAccess::Open => true,
            PageAccess::Disabled(_) => false,
            PageAccess::Token(t) => {
                let bearer = authorization
                    .and_then(|h| h.trim().strip_prefix("Bearer "))
                    .map(str::trim);
                let q = query
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| *k == "token")
                    .and_then(|(_, v)| super::urldecode(v));
                bearer.is_some_and(|b| same(b, t)) || q.is_some_and(|v| same(&v, t))
            }
        }
    }
}

/// Compares in time independent of where the strings differ (no timing oracle on the token).
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_is_open_elsewhere_needs_a_token() {
        assert_eq!(
            PageAccess::decide(addr("127.0.0.1:1"), None),
            PageAccess::Open
        );
        assert_eq!(
            PageAccess::decide(addr("[::1]:1"), Some(" ")),
            PageAccess::Open
        );
        assert!(matches!(
            PageAccess::decide(addr("0.0.0.0:1"), None),
            PageAccess::Disabled(m) if m.contains("0.0.0.0:1") && m.contains("--page-token")
        ));
        assert_eq!(
            PageAccess::decide(addr("0.0.0.0:1"), Some("s3")),
            PageAccess::Token("s3".into())
        );
    }

    #[test]
    fn a_token_is_taken_from_the_header_or_the_query_only_when_equal() {
        let a = PageAccess::Token("s3cr%t".into());
        assert!(a.allows(Some("Bearer s3cr%t"), ""));
        assert!(a.allows(None, "x=1&token=s3cr%25t"));
        assert!(!a.allows(None, ""));
        assert!(!a.allows(Some("Bearer s3cr"), "token=s3cr%25"));
        assert!(!a.allows(Some("Basic s3cr%t"), "token=s3cr%25tt"));
        assert!(!PageAccess::Disabled(String::new()).allows(Some("Bearer x"), "token=x"));
    }
}
