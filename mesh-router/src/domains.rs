//! Virtual-host lookup by authority: exact domain, then the longest `*suffix` wildcard, then `*`,
//! ignoring the port and ASCII case, as Envoy does.

use std::borrow::Cow;
use std::collections::HashMap;

// foldhash rather than SipHash: the keys come from config, not from clients, so a request
// cannot degrade lookups, and hashing the host is a good part of the cost of a lookup.
type Map = HashMap<Box<str>, u32, foldhash::fast::FixedState>;

/// The compiled domain index of a route table.
#[derive(Debug, Clone, Default)]
pub(crate) struct Domains {
    exact: Map,
    /// Wildcards by their suffix (`*.example.com` → `.example.com`).
    suffixes: Map,
    /// The distinct suffix lengths, longest first, so the longest wildcard is tried first.
    suffix_lens: Vec<usize>,
    any: Option<u32>,
}

impl Domains {
    /// Adds the domains of virtual host `vh`. A domain already taken (after dropping ports and
    /// case) keeps its first virtual host, as validation refuses exact duplicates anyway.
    pub(crate) fn add(&mut self, vh: u32, domain: &str) {
        let d = normalize(domain);
        if d == "*" {
            self.any.get_or_insert(vh);
        } else if let Some(suffix) = d.strip_prefix('*') {
            self.suffixes.entry(suffix.into()).or_insert(vh);
            if !self.suffix_lens.contains(&suffix.len()) {
                self.suffix_lens.push(suffix.len());
                self.suffix_lens.sort_unstable_by(|a, b| b.cmp(a));
            }
        } else {
            self.exact.entry(d.as_ref().into()).or_insert(vh);
        }
    }

    /// The virtual host serving `authority`, if any.
    pub(crate) fn lookup(&self, authority: &str) -> Option<u32> {
        let host = normalize(authority);
        if let Some(vh) = self.exact.get(host.as_ref()) {
            return Some(*vh);
        }
        for &n in &self.suffix_lens {
            // The wildcard must stand for at least one character, as in Envoy.
            if host.len() > n {
                if let Some(vh) = host
                    .get(host.len() - n..)
                    .and_then(|s| self.suffixes.get(s))
                {
                    return Some(*vh);
                }
            }
        }
        self.any
    }
}

/// Drops a port (`host:80`, `[::1]:80`) and lowers ASCII case, borrowing when nothing changes.
fn normalize(authority: &str) -> Cow<'_, str> {
    let bytes = authority.as_bytes();
    let host = if bytes.first() == Some(&b'[') {
        authority
            .find(']')
            .map_or(authority, |end| &authority[..=end])
    } else {
        // A port is the digits after the last `:` (possibly none): walk back over the trailing
        // digits and look for the colon, rather than searching the whole host for it.
        let digits = bytes
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_digit())
            .count();
        match (bytes.len() - digits).checked_sub(1) {
            Some(colon) if bytes[colon] == b':' => &authority[..colon],
            _ => authority,
        }
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: the port is what follows the last `:` when it is all digits.
    fn normalize_reference(authority: &str) -> String {
        let host = if authority.starts_with('[') {
            authority
                .find(']')
                .map_or(authority, |end| &authority[..=end])
        } else {
            match authority.rsplit_once(':') {
                Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => authority,
            }
        };
        host.to_ascii_lowercase()
    }

    #[test]
    fn normalize_drops_ports_like_the_reference() {
        for a in [
            "", ":", "::", "::1", "a:1:2", "a:b:3", "Host", "host:", "host:80", "host:8a", "8080",
            ":80", "[::1]", "[::1]:80", "[::1", "A.B:1x:2", "x:ä", "ä:1",
        ] {
            assert_eq!(normalize(a), normalize_reference(a), "{a:?}");
        }
    }

    fn table() -> Domains {
        let mut d = Domains::default();
        d.add(0, "api.example.com");
        d.add(1, "*.example.com");
        d.add(2, "*.eu.example.com");
        d.add(3, "*");
        d.add(4, "Other.Test:8080");
        d.add(5, "[::1]");
        d.add(6, "*-bar.example.org");
        d
    }

    #[test]
    fn exact_then_longest_wildcard_then_any() {
        let d = table();
        assert_eq!(d.lookup("api.example.com"), Some(0));
        assert_eq!(
            d.lookup("API.Example.COM:443"),
            Some(0),
            "port and case ignored"
        );
        assert_eq!(d.lookup("www.example.com"), Some(1));
        assert_eq!(d.lookup("x.eu.example.com"), Some(2), "longest suffix wins");
        assert_eq!(d.lookup("eu.example.com"), Some(1));
        assert_eq!(
            d.lookup(".example.com"),
            Some(3),
            "a wildcard needs one char"
        );
        assert_eq!(d.lookup("other.test"), Some(4));
        assert_eq!(d.lookup("[::1]:9000"), Some(5));
        assert_eq!(d.lookup("foo-bar.example.org"), Some(6));
        assert_eq!(d.lookup("elsewhere"), Some(3));
        assert_eq!(d.lookup("other.test:"), Some(4), "an empty port is a port");
        assert_eq!(
            d.lookup("Other.Test:80x"),
            Some(3),
            "not a port: kept, so no match"
        );
        let mut no_default = Domains::default();
        no_default.add(0, "a");
        assert_eq!(no_default.lookup("b"), None);
    }
}
