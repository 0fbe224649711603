//! Routes: `RouteConfiguration` → `VirtualHost` → `Route` (match + action), as in Envoy's RDS.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::{non_empty, unique_names, Validate, ValidationError};
use crate::LocalRateLimit;

/// A named route table: what RDS delivers and a listener's router serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfiguration {
    /// The name listeners reference it by.
    pub name: String,
    /// Virtual hosts, chosen by the request's authority.
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
    /// Ignore the port of the request's authority when choosing the virtual host (Envoy's
    /// `ignore_port_in_host_matching`; the domains themselves are taken as written). By default
    /// the whole authority, port included, must match a domain.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ignore_port_in_host_matching: bool,
}

/// A set of domains and the routes that serve them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    /// Unique within the route configuration.
    pub name: String,
    /// Domains: exact (`api.example.com`, `api:8080`), suffix wildcard (`*.example.com`) or `*`.
    /// Matching ignores ASCII case and, as in Envoy, compares the whole authority, port
    /// included: `api` does not serve `api:8080` (unless the listener strips ports, see
    /// [`HttpProtocolOptions::strip_host_port`](crate::HttpProtocolOptions), or the table sets
    /// [`RouteConfiguration::ignore_port_in_host_matching`]).
    pub domains: Vec<String>,
    /// Routes in order; the first whose match holds wins.
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// One route: a match and what to do with a request that matches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Optional name (required when the route carries a rate limit, which is keyed by it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// When this route applies.
    #[serde(rename = "match", default)]
    pub matcher: RouteMatch,
    /// Where the request goes and with what policy.
    #[serde(rename = "route")]
    pub action: RouteAction,
    /// Extra layers for this route, by name from the router's registry (e.g. `fault`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterConfig>,
}

/// The conditions of a route; all must hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteMatch {
    /// The path condition.
    #[serde(flatten)]
    pub path: PathMatch,
    /// Whether path matching is case sensitive (Envoy's default: true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub case_sensitive: bool,
    /// Header conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatcher>,
    /// Query-parameter conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_parameters: Vec<QueryParamMatcher>,
}

impl Default for RouteMatch {
    fn default() -> Self {
        Self {
            path: PathMatch::Prefix("/".into()),
            case_sensitive: true,
            headers: Vec::new(),
            query_parameters: Vec::new(),
        }
    }
}

/// How a route matches the request path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    /// The path starts with this prefix.
    Prefix(String),
    /// The path (without query) equals this (Envoy's `path`).
    #[serde(rename = "path")]
    Exact(String),
    /// The whole path matches this regex (RE2-like syntax of the `regex` crate).
    Regex(String),
    /// A gRPC call to this service (`pkg.Service`), optionally only this method.
    Grpc {
        /// Fully qualified service name.
        service: String,
        /// Method name; any method when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        method: Option<String>,
    },
    /// CONNECT requests only, whatever their authority-form target (Envoy's
    /// `connect_matcher {}`). No other path condition ever matches a CONNECT request; such a
    /// route also needs a terminating CONNECT upgrade (see [`RouteUpgrade`]).
    ConnectMatcher {},
}

/// A condition on a value (a header or a query parameter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StringMatch {
    /// Equals.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Contains.
    Contains(String),
    /// The whole value matches the regex.
    Regex(String),
    /// `true`: present with any value; `false`: absent.
    Present(bool),
}

/// A condition on one request header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeaderMatcher {
    /// Header name (case-insensitive).
    pub name: String,
    /// The condition on its value.
    #[serde(flatten)]
    pub value: StringMatch,
    /// Compare ignoring ASCII case (not for regex).
    #[serde(default, skip_serializing_if = "is_false")]
    pub ignore_case: bool,
    /// Negates the condition. As in Envoy, a value condition (not `present`) on an absent
    /// header fails whether inverted or not, unless `treat_missing_header_as_empty`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub invert: bool,
    /// Match an absent header as if it were present and empty (Envoy's
    /// `treat_missing_header_as_empty`); no effect on `present` conditions.
    #[serde(default, skip_serializing_if = "is_false")]
    pub treat_missing_header_as_empty: bool,
}

/// A condition on one query parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryParamMatcher {
    /// Parameter name (case-sensitive).
    pub name: String,
    /// The condition on its value as sent (not percent-decoded, as in Envoy).
    #[serde(flatten)]
    pub value: StringMatch,
    /// Compare ignoring ASCII case (not for regex).
    #[serde(default, skip_serializing_if = "is_false")]
    pub ignore_case: bool,
}

/// Where a matched request goes and the per-route policy around it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAction {
    /// The target cluster(s).
    #[serde(flatten)]
    pub destination: ClusterSpecifier,
    /// Whole-request timeout; Envoy's default 15 s, zero disables.
    #[serde(default = "default_route_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    /// A local rate limit for this route (requires the route to be named).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<LocalRateLimit>,
    /// Replaces the matched prefix (prefix and gRPC matches) or the whole path (others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Replaces the authority sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<String>,
    /// Headers added to the request before it goes upstream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    /// Headers removed from the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<String>,
    /// Headers added to the response.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    /// Headers removed from the response.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_remove: Vec<String>,
    /// How consistent-hash load balancers key this route's requests (first that yields wins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash_policy: Vec<HashPolicy>,
    /// Per-route upgrade settings (Envoy's `RouteAction.upgrade_configs`); only CONNECT with a
    /// `connect_config` (terminate it here) is supported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upgrade_configs: Vec<RouteUpgrade>,
}

impl RouteAction {
    /// An action sending everything to `cluster` with the defaults.
    pub fn to_cluster(cluster: impl Into<String>) -> Self {
        Self {
            destination: ClusterSpecifier::Cluster(cluster.into()),
            timeout: default_route_timeout(),
            retry_policy: None,
            rate_limit: None,
            prefix_rewrite: None,
            host_rewrite: None,
            request_headers_to_add: Vec::new(),
            request_headers_to_remove: Vec::new(),
            response_headers_to_add: Vec::new(),
            response_headers_to_remove: Vec::new(),
            hash_policy: Vec::new(),
            upgrade_configs: Vec::new(),
        }
    }

    /// Whether this route terminates CONNECT: answers 200 itself and relays the tunnel's bytes
    /// over a raw TCP connection to an endpoint of its cluster.
    pub fn terminates_connect(&self) -> bool {
        self.upgrade_configs
            .iter()
            .any(|u| u.enabled && u.connect_config.is_some() && u.is_connect())
    }
}

impl Default for RouteAction {
    fn default() -> Self {
        Self::to_cluster("")
    }
}

/// Which cluster(s) a route targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterSpecifier {
    /// One cluster.
    Cluster(String),
    /// A split by weight (canary).
    WeightedClusters(Vec<WeightedCluster>),
    /// The cluster named by this request header (blue/green by header).
    ClusterHeader(String),
}

impl ClusterSpecifier {
    /// The cluster names this specifier can statically resolve to.
    pub fn cluster_names(&self) -> Vec<&str> {
        match self {
            Self::Cluster(c) => vec![c.as_str()],
            Self::WeightedClusters(w) => w.iter().map(|w| w.name.as_str()).collect(),
            Self::ClusterHeader(_) => Vec::new(),
        }
    }
}

/// One cluster of a weighted split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    /// The cluster.
    pub name: String,
    /// Its share, relative to the sum of all weights.
    pub weight: u32,
}

/// One per-route upgrade setting (Envoy's `RouteAction.UpgradeConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteUpgrade {
    /// The upgrade it is about; only `CONNECT` is supported.
    pub upgrade_type: String,
    /// Whether the upgrade is allowed on this route (Envoy's default: true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub enabled: bool,
    /// Terminate CONNECT here: answer 200 and relay the tunnel over a raw TCP connection to an
    /// endpoint of the route's cluster (Envoy's `connect_config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_config: Option<ConnectConfig>,
}

impl RouteUpgrade {
    /// A terminating CONNECT upgrade (`connect_config {}`).
    pub fn terminate_connect() -> Self {
        Self {
            upgrade_type: "CONNECT".into(),
            enabled: true,
            connect_config: Some(ConnectConfig {}),
        }
    }

    /// Whether it is about CONNECT (a method, compared as Envoy does, ignoring case).
    pub fn is_connect(&self) -> bool {
        self.upgrade_type.eq_ignore_ascii_case("CONNECT")
    }
}

/// Envoy's `ConnectConfig`: its presence terminates CONNECT. Its options (PROXY protocol,
/// `allow_post`) are not supported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectConfig {}

/// A header to add, and whether to append to or overwrite an existing value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueOption {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
    /// Append beside an existing value (Envoy's default) instead of overwriting it.
    #[serde(default = "yes")]
    pub append: bool,
}

/// When and how a route retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Conditions, Envoy's syntax: `5xx,gateway-error,connect-failure,retriable-status-codes`.
    pub retry_on: RetryOn,
    /// Maximum retries (Envoy's default 1).
    #[serde(default = "one")]
    pub num_retries: u32,
    /// Timeout of each attempt; none means only the route timeout applies.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    /// Status codes retried when `retry_on` has `retriable-status-codes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
    /// Backoff between attempts.
    #[serde(default)]
    pub backoff: RetryBackoff,
    /// Caps retries to a fraction of requests so retries cannot amplify an overload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,
}

/// The conditions under which a request is retried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RetryOn {
    /// `5xx`: any 5xx response, or a connect failure or reset.
    pub server_error: bool,
    /// `gateway-error`: 502, 503, 504.
    pub gateway_error: bool,
    /// `connect-failure`: the upstream could not be reached.
    pub connect_failure: bool,
    /// `reset`: the upstream reset or closed the connection.
    pub reset: bool,
    /// `retriable-status-codes`: the policy's listed status codes.
    pub retriable_status_codes: bool,
    /// `cancelled`, gRPC status 1.
    pub grpc_cancelled: bool,
    /// `deadline-exceeded`, gRPC status 4.
    pub grpc_deadline_exceeded: bool,
    /// `resource-exhausted`, gRPC status 8.
    pub grpc_resource_exhausted: bool,
    /// `unavailable`, gRPC status 14.
    pub grpc_unavailable: bool,
}

const RETRY_ON_NAMES: [&str; 9] = [
    "5xx",
    "gateway-error",
    "connect-failure",
    "reset",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "resource-exhausted",
    "unavailable",
];

impl RetryOn {
    fn flags(&self) -> [bool; 9] {
        [
            self.server_error,
            self.gateway_error,
            self.connect_failure,
            self.reset,
            self.retriable_status_codes,
            self.grpc_cancelled,
            self.grpc_deadline_exceeded,
            self.grpc_resource_exhausted,
            self.grpc_unavailable,
        ]
    }

    fn flag_mut(&mut self, i: usize) -> &mut bool {
        match i {
            0 => &mut self.server_error,
            1 => &mut self.gateway_error,
            2 => &mut self.connect_failure,
            3 => &mut self.reset,
            4 => &mut self.retriable_status_codes,
            5 => &mut self.grpc_cancelled,
            6 => &mut self.grpc_deadline_exceeded,
            7 => &mut self.grpc_resource_exhausted,
            _ => &mut self.grpc_unavailable,
        }
    }
}

impl FromStr for RetryOn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut on = RetryOn::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let i = RETRY_ON_NAMES
                .iter()
                .position(|n| *n == part)
                .ok_or_else(|| {
                    format!(
                        "unknown retry_on condition {part:?} (known: {})",
                        RETRY_ON_NAMES.join(", ")
                    )
                })?;
            *on.flag_mut(i) = true;
        }
        Ok(on)
    }
}

impl TryFrom<String> for RetryOn {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<RetryOn> for String {
    fn from(on: RetryOn) -> String {
        let flags = on.flags();
        RETRY_ON_NAMES
            .iter()
            .zip(flags)
            .filter(|(_, set)| *set)
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Exponential backoff with full jitter between retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBackoff {
    /// First interval (Envoy's default 25 ms).
    #[serde(with = "humantime_serde")]
    pub base_interval: Duration,
    /// Cap (Envoy's default: 10 × base).
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        Self {
            base_interval: Duration::from_millis(25),
            max_interval: Duration::from_millis(250),
        }
    }
}

/// A retry budget: retries in flight may be at most `budget_percent` of requests in flight,
/// but at least `min_retry_concurrency`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Percent of active requests that may be retries (Envoy's default 20).
    #[serde(default = "twenty")]
    pub budget_percent: f64,
    /// Retries always allowed regardless of the percentage (Envoy's default 3).
    #[serde(default = "three")]
    pub min_retry_concurrency: u32,
}

/// How consistent-hash load balancing keys a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashPolicy {
    /// The value of this header.
    Header(String),
    /// The value of this cookie.
    Cookie(String),
    /// The value of this query parameter.
    QueryParameter(String),
    /// The client's IP address.
    SourceIp,
}

/// An extra per-route layer, looked up by name in the router's layer registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterConfig {
    /// Fault injection (ships with the router).
    Fault(FaultConfig),
    /// A user-registered layer with free-form settings.
    Custom {
        /// Registry name.
        name: String,
        /// Its settings.
        #[serde(default)]
        config: BTreeMap<String, String>,
        /// Skipped, instead of refusing the config, by a proxy that has no factory registered
        /// under `name` (xDS `is_optional`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        optional: bool,
    },
}

impl FilterConfig {
    /// The registry name of this filter.
    pub fn name(&self) -> &str {
        match self {
            Self::Fault(_) => "fault",
            Self::Custom { name, .. } => name,
        }
    }

    /// Whether a proxy without a factory for this filter may skip it (only custom filters can
    /// be optional: every proxy has `fault`).
    pub fn is_optional(&self) -> bool {
        matches!(self, Self::Custom { optional: true, .. })
    }
}

/// Fault injection: delay and/or abort a percentage of requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// A fixed delay for a percentage of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// An abort with a status for a percentage of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// The delay half of a fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// How long to hold the request.
    #[serde(with = "humantime_serde")]
    pub fixed_delay: Duration,
    /// Percent of requests delayed, 0–100.
    pub percentage: f64,
}

/// The abort half of a fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// The HTTP status answered, 200–599.
    pub http_status: u16,
    /// Percent of requests aborted, 0–100.
    pub percentage: f64,
}

fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}
fn twenty() -> f64 {
    20.0
}
fn default_route_timeout() -> Duration {
    Duration::from_secs(15)
}

impl Validate for RouteConfiguration {
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("name", &self.name)?;
        unique_names(
            "virtual_hosts",
            self.virtual_hosts.iter().map(|v| v.name.as_str()),
        )?;
        let mut domains = HashSet::new();
        let mut route_names = HashSet::new();
        for (i, vh) in self.virtual_hosts.iter().enumerate() {
            let at = format!("virtual_hosts[{i}]");
            vh.validate().map_err(|e| e.within(&at))?;
            for (j, d) in vh.domains.iter().enumerate() {
                if !domains.insert(d.to_ascii_lowercase()) {
                    return Err(ValidationError::new(
                        format!("{at}.domains[{j}]"),
                        format!("domain {d:?} is served by two virtual hosts"),
                    ));
                }
            }
            for (j, r) in vh.routes.iter().enumerate() {
                if !r.name.is_empty() && !route_names.insert(r.name.as_str()) {
                    return Err(ValidationError::new(
                        format!("{at}.routes[{j}].name"),
                        format!("duplicate route name {:?}", r.name),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Validate for VirtualHost {
    fn validate(&self) -> Result<(), ValidationError> {
        non_empty("name", &self.name)?;
        if self.domains.is_empty() {
            return Err(ValidationError::new(
                "domains",
                "at least one domain is required",
            ));
        }
        for (i, d) in self.domains.iter().enumerate() {
            validate_domain(d).map_err(|e| e.within(format!("domains[{i}]")))?;
        }
        for (i, r) in self.routes.iter().enumerate() {
            r.validate().map_err(|e| e.within(format!("routes[{i}]")))?;
        }
        Ok(())
    }
}

fn validate_domain(d: &str) -> Result<(), ValidationError> {
    let bad = |why: &str| Err(ValidationError::new("", format!("{d:?}: {why}")));
    if d == "*" {
        return Ok(());
    }
    let host = d.strip_prefix('*').unwrap_or(d);
    if host.is_empty() || host.contains('*') {
        return bad("only exact domains, `*.suffix` and `*` are supported");
    }
    if host.chars().any(|c| c.is_whitespace() || c == '/') {
        return bad("not a host name");
    }
    Ok(())
}

impl Validate for Route {
    fn validate(&self) -> Result<(), ValidationError> {
        self.matcher.validate().map_err(|e| e.within("match"))?;
        self.action.validate().map_err(|e| e.within("route"))?;
        if matches!(self.matcher.path, PathMatch::ConnectMatcher {})
            && !self.action.terminates_connect()
        {
            return Err(ValidationError::new(
                "route.upgrade_configs",
                "a connect_matcher route needs an enabled CONNECT upgrade with a connect_config \
                 (proxying CONNECT upstream as a CONNECT is not supported)",
            ));
        }
        if self.action.rate_limit.is_some() && self.name.is_empty() {
            return Err(ValidationError::new(
                "name",
                "a route with a rate_limit needs a name (its bucket is keyed by it)",
            ));
        }
        for (i, f) in self.filters.iter().enumerate() {
            f.validate()
                .map_err(|e| e.within(format!("filters[{i}]")))?;
        }
        Ok(())
    }
}

impl Validate for RouteUpgrade {
    fn validate(&self) -> Result<(), ValidationError> {
        if !self.is_connect() {
            return Err(ValidationError::new(
                "upgrade_type",
                format!(
                    "{:?}: per-route upgrade settings are supported for CONNECT only (allow other \
                     upgrades on the listener)",
                    self.upgrade_type
                ),
            ));
        }
        if self.enabled && self.connect_config.is_none() {
            return Err(ValidationError::new(
                "connect_config",
                "required: CONNECT is terminated here (proxying it upstream as a CONNECT is not \
                 supported)",
            ));
        }
        Ok(())
    }
}

impl Validate for RouteMatch {
    fn validate(&self) -> Result<(), ValidationError> {
        match &self.path {
            PathMatch::Prefix(p) if !p.is_empty() && !p.starts_with('/') => Err(
                ValidationError::new("prefix", format!("{p:?} must start with '/'")),
            ),
            PathMatch::Exact(p) if !p.starts_with('/') => Err(ValidationError::new(
                "path",
                format!("{p:?} must start with '/'"),
            )),
            PathMatch::Regex(r) => check_regex(r).map_err(|e| e.within("regex")),
            PathMatch::Grpc { service, method } => {
                if service.is_empty() || service.contains('/') {
                    return Err(ValidationError::new(
                        "grpc.service",
                        format!("{service:?} is not a service name like pkg.Service"),
                    ));
                }
                match method {
                    Some(m) if m.is_empty() || m.contains('/') => Err(ValidationError::new(
                        "grpc.method",
                        format!("{m:?} is not a method name"),
                    )),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }?;
        for (i, h) in self.headers.iter().enumerate() {
            let at = format!("headers[{i}]");
            http::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                ValidationError::new(format!("{at}.name"), "not a valid header name")
            })?;
            h.value.validate().map_err(|e| e.within(&at))?;
        }
        for (i, q) in self.query_parameters.iter().enumerate() {
            let at = format!("query_parameters[{i}]");
            non_empty(&format!("{at}.name"), &q.name)?;
            q.value.validate().map_err(|e| e.within(&at))?;
        }
        Ok(())
    }
}

impl Validate for StringMatch {
    fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Self::Regex(r) => check_regex(r).map_err(|e| e.within("regex")),
            _ => Ok(()),
        }
    }
}

fn check_regex(r: &str) -> Result<(), ValidationError> {
    regex::Regex::new(r).map(|_| ()).map_err(|e| {
        // The regex crate's message spans several lines; keep the last, which says why.
        let why = e.to_string();
        let why = why.lines().last().unwrap_or("invalid").trim().to_string();
        ValidationError::new("", format!("invalid regex {r:?}: {why}"))
    })
}

fn check_header_name(field: &str, name: &str) -> Result<(), ValidationError> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map(|_| ())
        .map_err(|_| ValidationError::new(field, format!("{name:?} is not a valid header name")))
}

fn check_header_adds(field: &str, adds: &[HeaderValueOption]) -> Result<(), ValidationError> {
    for (i, h) in adds.iter().enumerate() {
        check_header_name(&format!("{field}[{i}].name"), &h.name)?;
        http::HeaderValue::from_str(&h.value).map_err(|_| {
            ValidationError::new(format!("{field}[{i}].value"), "not a valid header value")
        })?;
    }
    Ok(())
}

impl Validate for RouteAction {
    fn validate(&self) -> Result<(), ValidationError> {
        match &self.destination {
            ClusterSpecifier::Cluster(c) => non_empty("cluster", c)?,
            ClusterSpecifier::ClusterHeader(h) => check_header_name("cluster_header", h)?,
            ClusterSpecifier::WeightedClusters(w) => {
                if w.is_empty() {
                    return Err(ValidationError::new(
                        "weighted_clusters",
                        "must not be empty",
                    ));
                }
                for (i, c) in w.iter().enumerate() {
                    non_empty(&format!("weighted_clusters[{i}].name"), &c.name)?;
                }
                if w.iter().map(|c| u64::from(c.weight)).sum::<u64>() == 0 {
                    return Err(ValidationError::new(
                        "weighted_clusters",
                        "weights sum to zero",
                    ));
                }
            }
        }
        if let Some(r) = &self.retry_policy {
            r.validate().map_err(|e| e.within("retry_policy"))?;
        }
        for (i, u) in self.upgrade_configs.iter().enumerate() {
            u.validate()
                .map_err(|e| e.within(format!("upgrade_configs[{i}]")))?;
        }
        if let Some(rl) = &self.rate_limit {
            rl.validate().map_err(|e| e.within("rate_limit"))?;
        }
        if let Some(p) = &self.prefix_rewrite {
            if !p.is_empty() && !p.starts_with('/') {
                return Err(ValidationError::new(
                    "prefix_rewrite",
                    format!("{p:?} must start with '/'"),
                ));
            }
        }
        if let Some(h) = &self.host_rewrite {
            http::uri::Authority::from_str(h).map_err(|_| {
                ValidationError::new("host_rewrite", format!("{h:?} is not a host"))
            })?;
        }
        check_header_adds("request_headers_to_add", &self.request_headers_to_add)?;
        check_header_adds("response_headers_to_add", &self.response_headers_to_add)?;
        for (i, h) in self.request_headers_to_remove.iter().enumerate() {
            check_header_name(&format!("request_headers_to_remove[{i}]"), h)?;
        }
        for (i, h) in self.response_headers_to_remove.iter().enumerate() {
            check_header_name(&format!("response_headers_to_remove[{i}]"), h)?;
        }
        Ok(())
    }
}

impl Validate for RetryPolicy {
    fn validate(&self) -> Result<(), ValidationError> {
        for (i, c) in self.retriable_status_codes.iter().enumerate() {
            if !(100..=599).contains(c) {
                return Err(ValidationError::new(
                    format!("retriable_status_codes[{i}]"),
                    format!("{c} is not an HTTP status"),
                ));
            }
        }
        if self.backoff.base_interval.is_zero() {
            return Err(ValidationError::new(
                "backoff.base_interval",
                "must be greater than zero",
            ));
        }
        if self.backoff.max_interval < self.backoff.base_interval {
            return Err(ValidationError::new(
                "backoff.max_interval",
                "must not be below base_interval",
            ));
        }
        if let Some(b) = &self.budget {
            if !(0.0..=100.0).contains(&b.budget_percent) {
                return Err(ValidationError::new(
                    "budget.budget_percent",
                    "must be within 0–100",
                ));
            }
        }
        Ok(())
    }
}

impl Validate for FilterConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Self::Fault(f) => f.validate().map_err(|e| e.within("fault")),
            Self::Custom { name, .. } => non_empty("custom.name", name),
        }
    }
}

impl Validate for FaultConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        let pct = |field: &str, p: f64| {
            if (0.0..=100.0).contains(&p) {
                Ok(())
            } else {
                Err(ValidationError::new(
                    field,
                    format!("{p} is not within 0–100"),
                ))
            }
        };
        if let Some(d) = &self.delay {
            pct("delay.percentage", d.percentage)?;
        }
        if let Some(a) = &self.abort {
            pct("abort.percentage", a.percentage)?;
            if !(200..=599).contains(&a.http_status) {
                return Err(ValidationError::new(
                    "abort.http_status",
                    format!("{} is not within 200–599", a.http_status),
                ));
            }
        }
        if self.delay.is_none() && self.abort.is_none() {
            return Err(ValidationError::new(
                "",
                "a fault needs a delay or an abort",
            ));
        }
        Ok(())
    }
}
