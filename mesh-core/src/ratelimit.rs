//! Local rate-limit rules: token buckets per listener, route or request descriptor.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::{non_empty, unique_names, Validate, ValidationError};
use crate::{Listener, RouteConfiguration};

/// A token bucket, in Envoy's `local_ratelimit` terms: `tokens_per_fill` tokens are added every
/// `fill_interval`, up to `max_tokens` (the burst).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Capacity: the largest burst admitted at once.
    pub max_tokens: u32,
    /// Tokens added per interval.
    #[serde(default = "one")]
    pub tokens_per_fill: u32,
    /// The refill interval.
    #[serde(with = "humantime_serde")]
    pub fill_interval: Duration,
}

impl TokenBucketConfig {
    /// The sustained rate in requests per second.
    pub fn rate_per_sec(&self) -> f64 {
        f64::from(self.tokens_per_fill) / self.fill_interval.as_secs_f64()
    }
}

/// What happens to a request over the limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitMode {
    /// Answer 429 at once with `retry-after` (the default: queueing under overload makes it worse).
    #[default]
    Reject,
    /// Hold the request until a token is free, at most `max_wait`, with at most `max_waiting`
    /// requests held; beyond either it is rejected.
    Wait {
        /// Longest a request is held.
        #[serde(with = "humantime_serde")]
        max_wait: Duration,
        /// Most requests held at once.
        max_waiting: u32,
    },
}

/// Which part of a request keys a per-descriptor bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DescriptorSource {
    /// The value of this request header (requests without it share one bucket).
    Header(String),
    /// The client's IP address.
    ClientAddress,
    /// The gRPC method (the request path of a gRPC call).
    GrpcMethod,
}

/// A limit as attached to a listener or a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRateLimit {
    /// The bucket (one per descriptor value when `descriptor` is set).
    pub token_bucket: TokenBucketConfig,
    /// Reject (default) or wait.
    #[serde(default)]
    pub mode: RateLimitMode,
    /// Give each value of this request part its own bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptor: Option<DescriptorSource>,
}

/// What a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitScope {
    /// Every request on the listener.
    Listener,
    /// Requests the router matched to this named route.
    Route(String),
}

/// One rule of a [`RateLimitConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRule {
    /// Unique name, reported in 429s and metrics.
    pub name: String,
    /// What it applies to.
    pub scope: RateLimitScope,
    /// The limit.
    #[serde(flatten)]
    pub limit: LocalRateLimit,
}

/// All rate-limit rules of one listener: what the rate-limit layer reloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// The rules; a request is checked against every rule whose scope applies.
    #[serde(default)]
    pub rules: Vec<RateLimitRule>,
    /// Bound on per-descriptor buckets kept per rule; idle ones are evicted beyond it.
    #[serde(default = "default_max_descriptors")]
    pub max_descriptors: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            max_descriptors: default_max_descriptors(),
        }
    }
}

impl RateLimitConfig {
    /// The rules a listener and its route table imply: the listener's own limit (rule
    /// `listener:<name>`) and each named route's limit (rule `route:<name>`).
    pub fn for_listener(listener: &Listener, routes: Option<&RouteConfiguration>) -> Self {
        let mut rules = Vec::new();
        if let Some(limit) = &listener.rate_limit {
            rules.push(RateLimitRule {
                name: format!("listener:{}", listener.name),
                scope: RateLimitScope::Listener,
                limit: limit.clone(),
            });
        }
        let routes = routes.or(listener.route_config.as_ref());
        for vh in routes.into_iter().flat_map(|rc| &rc.virtual_hosts) {
            for route in &vh.routes {
                if let Some(limit) = &route.action.rate_limit {
                    rules.push(RateLimitRule {
                        name: format!("route:{}", route.name),
                        scope: RateLimitScope::Route(route.name.clone()),
                        limit: limit.clone(),
                    });
                }
            }
        }
        Self {
            rules,
            ..Self::default()
        }
    }
}

fn one() -> u32 {
    1
}
fn default_max_descriptors() -> usize {
    10_000
}

impl Validate for LocalRateLimit {
    fn validate(&self) -> Result<(), ValidationError> {
        let b = &self.token_bucket;
        if b.max_tokens == 0 {
            return Err(ValidationError::new(
                "token_bucket.max_tokens",
                "must be at least 1",
            ));
        }
        if b.tokens_per_fill == 0 {
            return Err(ValidationError::new(
                "token_bucket.tokens_per_fill",
                "must be at least 1",
            ));
        }
        if b.fill_interval < Duration::from_millis(1) {
            return Err(ValidationError::new(
                "token_bucket.fill_interval",
                "must be at least 1ms",
            ));
        }
        if let RateLimitMode::Wait {
            max_wait,
            max_waiting,
        } = &self.mode
        {
            if max_wait.is_zero() || *max_waiting == 0 {
                return Err(ValidationError::new(
                    "mode.wait",
                    "max_wait and max_waiting must be greater than zero",
                ));
            }
        }
        if let Some(DescriptorSource::Header(h)) = &self.descriptor {
            http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                ValidationError::new("descriptor.header", format!("{h:?} is not a header name"))
            })?;
        }
        Ok(())
    }
}

impl Validate for RateLimitConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        unique_names("rules", self.rules.iter().map(|r| r.name.as_str()))?;
        for (i, r) in self.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            non_empty(&format!("{at}.name"), &r.name)?;
            if let RateLimitScope::Route(route) = &r.scope {
                non_empty(&format!("{at}.scope.route"), route)?;
            }
            r.limit.validate().map_err(|e| e.within(&at))?;
        }
        if self.max_descriptors == 0 {
            return Err(ValidationError::new(
                "max_descriptors",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
