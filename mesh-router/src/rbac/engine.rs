//! The compiled policy: what a listener's [`Rbac`] becomes once, at load, so the data path only
//! compares bytes and runs pre-built regexes.

use http::{HeaderMap, Request};
use mesh_core::extensions::PeerIdentity;
use mesh_core::{HeaderMatcher, Permission, Principal, Rbac, RbacAction, StringMatch};

use crate::matcher::{CompileError, HeaderMatch, StrMatcher};

/// The policy label of an ALLOW-mode denial (no policy matched), as in metrics.
pub const NO_POLICY_MATCHED: &str = "no_policy_matched";

/// What the engine decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Let it through.
    Allowed,
    /// Refuse it; the policy that decided (a DENY policy that matched, or
    /// [`NO_POLICY_MATCHED`] when no ALLOW policy did).
    Denied(&'a str),
}

/// A compiled [`Rbac`], evaluated per request with Envoy's semantics: a policy matches when any
/// of its principals and any of its permissions match; ALLOW lets through what some policy
/// matches (no policies: nothing), DENY refuses what some policy matches (no policies: nothing
/// is refused). Policies are tried in name order.
#[derive(Debug, Clone)]
pub struct RbacEngine {
    action: RbacAction,
    policies: Vec<(String, CompiledPolicy)>,
}

#[derive(Debug, Clone)]
struct CompiledPolicy {
    principals: Vec<Who>,
    permissions: Vec<What>,
}

#[derive(Debug, Clone)]
enum Who {
    Any(bool),
    Authenticated(StrMatcher),
    Or(Vec<Who>),
    Not(Box<Who>),
}

#[derive(Debug, Clone)]
enum What {
    Any(bool),
    UrlPath(StrMatcher),
    Header(HeaderCond),
    Or(Vec<What>),
    And(Vec<What>),
    Not(Box<What>),
}

/// A header condition; the pseudo-headers Envoy's RBAC can name (`:method`, `:path` with its
/// query, `:authority`) are read from the request line, the rest from the header map.
#[derive(Debug, Clone)]
enum HeaderCond {
    Regular(HeaderMatch),
    Pseudo {
        which: Pseudo,
        value: StrMatcher,
        ignore_case: bool,
        invert: bool,
        missing_as_empty: bool,
    },
}

#[derive(Debug, Clone, Copy)]
enum Pseudo {
    Method,
    Path,
    Authority,
}

impl RbacEngine {
    /// Compiles `rbac`; errors name the field path (`policies[NAME].permissions[0]...`).
    pub fn compile(rbac: &Rbac) -> Result<Self, CompileError> {
        let policies = rbac
            .policies
            .iter()
            .map(|(name, p)| {
                let at = format!("policies[{name}]");
                let principals = p
                    .principals
                    .iter()
                    .enumerate()
                    .map(|(i, w)| {
                        Who::compile(w).map_err(|e| e.within(format!("{at}.principals[{i}]")))
                    })
                    .collect::<Result<_, _>>()?;
                let permissions = p
                    .permissions
                    .iter()
                    .enumerate()
                    .map(|(i, w)| {
                        What::compile(w).map_err(|e| e.within(format!("{at}.permissions[{i}]")))
                    })
                    .collect::<Result<_, _>>()?;
                Ok((
                    name.clone(),
                    CompiledPolicy {
                        principals,
                        permissions,
                    },
                ))
            })
            .collect::<Result<_, CompileError>>()?;
        Ok(Self {
            action: rbac.action,
            policies,
        })
    }

    /// Decides `req` (its identity is the [`PeerIdentity`] extension; none: unauthenticated).
    pub fn evaluate<B>(&self, req: &Request<B>) -> Verdict<'_> {
        let view = View {
            req_path: req.uri().path(),
            path_and_query: req.uri().path_and_query().map(|p| p.as_str()),
            method: req.method().as_str(),
            authority: authority(req),
            headers: req.headers(),
            peer: req.extensions().get::<PeerIdentity>().map(|p| &*p.0),
        };
        let matched = self
            .policies
            .iter()
            .find(|(_, p)| p.matches(&view))
            .map(|(name, _)| name.as_str());
        match (self.action, matched) {
            (RbacAction::Allow, Some(_)) | (RbacAction::Deny, None) => Verdict::Allowed,
            (RbacAction::Allow, None) => Verdict::Denied(NO_POLICY_MATCHED),
            (RbacAction::Deny, Some(name)) => Verdict::Denied(name),
        }
    }
}

/// The `:authority` of a request: the URI's (HTTP/2, absolute form) or the `Host` header.
fn authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// The parts of a request the engine reads, borrowed once.
struct View<'a> {
    req_path: &'a str,
    path_and_query: Option<&'a str>,
    method: &'a str,
    authority: Option<&'a str>,
    headers: &'a HeaderMap,
    peer: Option<&'a str>,
}

impl CompiledPolicy {
    fn matches(&self, v: &View<'_>) -> bool {
        self.principals.iter().any(|w| w.matches(v))
            && self.permissions.iter().any(|w| w.matches(v))
    }
}

impl Who {
    fn compile(p: &Principal) -> Result<Self, CompileError> {
        Ok(match p {
            Principal::Any(b) => Self::Any(*b),
            Principal::Authenticated(m) => Self::Authenticated(
                StrMatcher::compile(m, false)
                    .map_err(|e| e.within("authenticated"))?
                    .0,
            ),
            Principal::OrIds(ids) => Self::Or(
                ids.iter()
                    .enumerate()
                    .map(|(i, p)| Self::compile(p).map_err(|e| e.within(format!("or_ids[{i}]"))))
                    .collect::<Result<_, _>>()?,
            ),
            Principal::NotId(p) => {
                Self::Not(Box::new(Self::compile(p).map_err(|e| e.within("not_id"))?))
            }
        })
    }

    fn matches(&self, v: &View<'_>) -> bool {
        match self {
            Self::Any(b) => *b,
            // No verified identity never matches `authenticated`, whatever its pattern.
            Self::Authenticated(m) => v.peer.is_some_and(|id| m.matches_value(id, false)),
            Self::Or(ids) => ids.iter().any(|w| w.matches(v)),
            Self::Not(w) => !w.matches(v),
        }
    }
}

impl What {
    fn compile(p: &Permission) -> Result<Self, CompileError> {
        let each = |rules: &[Permission], field: &str| {
            rules
                .iter()
                .enumerate()
                .map(|(i, p)| Self::compile(p).map_err(|e| e.within(format!("{field}[{i}]"))))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(match p {
            Permission::Any(b) => Self::Any(*b),
            Permission::UrlPath(m) => Self::UrlPath(url_path(m)?),
            Permission::Header(h) => {
                Self::Header(HeaderCond::compile(h).map_err(|e| e.within("header"))?)
            }
            Permission::OrRules(rules) => Self::Or(each(rules, "or_rules")?),
            Permission::AndRules(rules) => Self::And(each(rules, "and_rules")?),
            Permission::NotRule(p) => Self::Not(Box::new(
                Self::compile(p).map_err(|e| e.within("not_rule"))?,
            )),
        })
    }

    fn matches(&self, v: &View<'_>) -> bool {
        match self {
            Self::Any(b) => *b,
            Self::UrlPath(m) => m.matches_value(v.req_path, false),
            Self::Header(h) => h.matches(v),
            Self::Or(rules) => rules.iter().any(|w| w.matches(v)),
            Self::And(rules) => rules.iter().all(|w| w.matches(v)),
            Self::Not(w) => !w.matches(v),
        }
    }
}

/// A `url_path` condition; `present` means nothing for a path (it always exists) and is refused.
fn url_path(m: &StringMatch) -> Result<StrMatcher, CompileError> {
    if let StringMatch::Present(_) = m {
        return Err(CompileError::new(
            "url_path",
            "a path is always present; use a value condition",
        ));
    }
    Ok(StrMatcher::compile(m, false)
        .map_err(|e| e.within("url_path"))?
        .0)
}

impl HeaderCond {
    fn compile(h: &HeaderMatcher) -> Result<Self, CompileError> {
        let which = match h.name.to_ascii_lowercase().as_str() {
            ":method" => Pseudo::Method,
            ":path" => Pseudo::Path,
            ":authority" | "host" => Pseudo::Authority,
            n if n.starts_with(':') => {
                return Err(CompileError::new(
                    "name",
                    format!("pseudo-header {n:?} (supported: :method, :path, :authority)"),
                ))
            }
            _ => return HeaderMatch::compile(h).map(Self::Regular),
        };
        let (value, ignore_case) = StrMatcher::compile(&h.value, h.ignore_case)?;
        Ok(Self::Pseudo {
            which,
            value,
            ignore_case,
            invert: h.invert,
            missing_as_empty: h.treat_missing_header_as_empty,
        })
    }

    /// The same rules as [`HeaderMatch::matches`] on a single value.
    fn matches(&self, v: &View<'_>) -> bool {
        match self {
            Self::Regular(h) => h.matches(v.headers),
            Self::Pseudo {
                which,
                value,
                ignore_case,
                invert,
                missing_as_empty,
            } => {
                let found = match which {
                    Pseudo::Method => Some(v.method),
                    Pseudo::Path => v.path_and_query.or(Some(v.req_path)),
                    Pseudo::Authority => v.authority,
                };
                let held = match found {
                    None if matches!(value, StrMatcher::Present(_)) => value.matches(None, false),
                    None if *missing_as_empty => value.matches_value("", *ignore_case),
                    None => return false,
                    Some(s) => value.matches(Some(s), *ignore_case),
                };
                held != *invert
            }
        }
    }
}

#[cfg(test)]
mod tests;
