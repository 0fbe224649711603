//! Virtual-host lookup by authority: exact domain, then the longest `*suffix` wildcard, then `*`,
//! ignoring ASCII case, as Envoy does. As in Envoy, the whole authority is compared, port
//! included, unless the table ignores ports (`ignore_port_in_host_matching`).

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
    /// Drop the request authority's port before looking it up (the domains stay as written).
    ignore_port: bool,
}

impl Domains {
    /// An empty index; `ignore_port` is the table's `ignore_port_in_host_matching`.
    pub(crate) fn new(ignore_port: bool) -> Self {
        Self {
            ignore_port,
            ..Self::default()
        }
    }

    /// Adds the domains of virtual host `vh`. A domain already taken (after lowering case)
    /// keeps its first virtual host, as validation refuses exact duplicates anyway.
    pub(crate) fn add(&mut self, vh: u32, domain: &str) {
        let d = lower(domain);
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
        let authority = match mesh_core::port_start(authority) {
            Some(colon) if self.ignore_port => &authority[..colon],
            _ => authority,
        };
        let host = lower(authority);
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

/// Lowers ASCII case, borrowing when nothing changes.
fn lower(host: &str) -> Cow<'_, str> {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(ignore_port: bool) -> Domains {
        let mut d = Domains::new(ignore_port);
        d.add(0, "api.example.com");
        d.add(1, "*.example.com");
        d.add(2, "*.eu.example.com");
        d.add(3, "*");
        d.add(4, "Other.Test:8080");
        d.add(5, "[::1]");
        d.add(6, "*-bar.example.org");
        d.add(7, "api");
        d.add(8, "api:8080");
        d
    }

    #[test]
    fn exact_then_longest_wildcard_then_any() {
        let d = table(false);
        assert_eq!(d.lookup("api.example.com"), Some(0));
        assert_eq!(d.lookup("API.Example.COM"), Some(0), "case ignored");
        assert_eq!(d.lookup("www.example.com"), Some(1));
        assert_eq!(d.lookup("x.eu.example.com"), Some(2), "longest suffix wins");
        assert_eq!(d.lookup("eu.example.com"), Some(1));
        assert_eq!(
            d.lookup(".example.com"),
            Some(3),
            "a wildcard needs one char"
        );
        assert_eq!(d.lookup("other.test:8080"), Some(4));
        assert_eq!(d.lookup("[::1]"), Some(5));
        assert_eq!(d.lookup("foo-bar.example.org"), Some(6));
        assert_eq!(d.lookup("elsewhere"), Some(3));
        let mut no_default = Domains::default();
        no_default.add(0, "a");
        assert_eq!(no_default.lookup("b"), None);
    }

    #[test]
    fn the_port_is_part_of_the_authority_as_in_envoy() {
        let d = table(false);
        assert_eq!(d.lookup("api"), Some(7));
        assert_eq!(d.lookup("api:8080"), Some(8));
        assert_eq!(d.lookup("api:9999"), Some(3), "no domain names this port");
        assert_eq!(d.lookup("API.Example.COM:443"), Some(3));
        assert_eq!(d.lookup("other.test"), Some(3));
        assert_eq!(d.lookup("[::1]:9000"), Some(3));
        assert_eq!(
            d.lookup("www.example.com:443"),
            Some(3),
            "a suffix wildcard compares the whole authority"
        );
    }

    #[test]
    fn ignore_port_in_host_matching_drops_the_request_port_only() {
        let d = table(true);
        assert_eq!(d.lookup("api:9999"), Some(7));
        assert_eq!(
            d.lookup("api:8080"),
            Some(7),
            "the request's port is dropped"
        );
        assert_eq!(d.lookup("API.Example.COM:443"), Some(0));
        assert_eq!(d.lookup("[::1]:9000"), Some(5));
        assert_eq!(d.lookup("other.test:8080"), Some(3), "domains keep theirs");
    }
}
