//! The HTTP filters mesh-core models: `local_ratelimit` ↔ [`LocalRateLimit`] and `fault` ↔
//! [`FaultConfig`], used at listener level (HCM `http_filters`) and per route
//! (`typed_per_filter_config`).

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as cfault;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3 as lrl;
use envoy_types::pb::envoy::r#type::v3 as typ;
use mesh_core::{
    DescriptorSource, FaultAbort, FaultConfig, FaultDelay, LocalRateLimit, RateLimitMode,
    TokenBucketConfig,
};
use serde::{Deserialize, Serialize};

use super::{duration_from, duration_to, u32_from, u32_to, ConvertError};

/// What of a [`LocalRateLimit`] Envoy's `local_ratelimit` has no field for; carried in the
/// enclosing resource's `io.mesh` metadata.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct RateLimitExtras {
    #[serde(default)]
    pub mode: RateLimitMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptor: Option<DescriptorSource>,
}

impl RateLimitExtras {
    pub(crate) fn of(rl: &LocalRateLimit) -> Option<Self> {
        let x = Self {
            mode: rl.mode.clone(),
            descriptor: rl.descriptor.clone(),
        };
        (x != Self::default()).then_some(x)
    }
}

fn full() -> Option<core::RuntimeFractionalPercent> {
    Some(core::RuntimeFractionalPercent {
        default_value: Some(typ::FractionalPercent {
            numerator: 100,
            denominator: typ::fractional_percent::DenominatorType::Hundred as i32,
        }),
        runtime_key: String::new(),
    })
}

/// The `local_ratelimit` config enforcing `rl` on every request (100% enabled and enforced).
pub(crate) fn rate_limit_to(rl: Option<&LocalRateLimit>, stat_prefix: &str) -> lrl::LocalRateLimit {
    let Some(rl) = rl else {
        // A pass-through instance: routes enable it with their typed_per_filter_config.
        return lrl::LocalRateLimit {
            stat_prefix: stat_prefix.to_string(),
            ..Default::default()
        };
    };
    let b = &rl.token_bucket;
    lrl::LocalRateLimit {
        stat_prefix: stat_prefix.to_string(),
        token_bucket: Some(typ::TokenBucket {
            max_tokens: b.max_tokens,
            tokens_per_fill: u32_to(b.tokens_per_fill),
            fill_interval: Some(duration_to(b.fill_interval)),
        }),
        filter_enabled: full(),
        filter_enforced: full(),
        enable_x_ratelimit_headers: 0,
        ..Default::default()
    }
}

/// The limit a `local_ratelimit` config enforces: `None` when it has no bucket or is not fully
/// enabled and enforced (Envoy then lets every request through).
pub(crate) fn rate_limit_from(
    p: &lrl::LocalRateLimit,
    extras: Option<RateLimitExtras>,
    path: &str,
) -> Result<Option<LocalRateLimit>, ConvertError> {
    let unsupported =
        |f: &str, what: &str| Err(ConvertError::unsupported(format!("{path}.{f}"), what));
    if !p.descriptors.is_empty() || !p.rate_limits.is_empty() {
        return unsupported(
            "descriptors",
            "Envoy rate-limit descriptors (per-descriptor buckets travel in io.mesh metadata)",
        );
    }
    if p.local_rate_limit_per_downstream_connection {
        return unsupported(
            "local_rate_limit_per_downstream_connection",
            "per-connection buckets",
        );
    }
    if p.local_cluster_rate_limit.is_some() {
        return unsupported("local_cluster_rate_limit", "cluster-shared buckets");
    }
    if p.status
        .as_ref()
        .is_some_and(|s| s.code != 0 && s.code != 429)
    {
        return unsupported("status", "a status other than 429");
    }
    let Some(b) = &p.token_bucket else {
        return Ok(None);
    };
    if !(fraction_is(p.filter_enabled.as_ref(), path, "filter_enabled")?
        && fraction_is(p.filter_enforced.as_ref(), path, "filter_enforced")?)
    {
        return Ok(None);
    }
    let fill_interval = match &b.fill_interval {
        Some(d) => duration_from(d, &format!("{path}.token_bucket.fill_interval"))?,
        None => {
            return Err(ConvertError::new(
                format!("{path}.token_bucket.fill_interval"),
                "required",
            ))
        }
    };
    let extras = extras.unwrap_or_default();
    Ok(Some(LocalRateLimit {
        token_bucket: TokenBucketConfig {
            max_tokens: b.max_tokens,
            tokens_per_fill: u32_from(b.tokens_per_fill).unwrap_or(1),
            fill_interval,
        },
        mode: extras.mode,
        descriptor: extras.descriptor,
    }))
}

/// Whether a runtime fraction is 100% (true) or 0%/unset (false); partial ones are refused.
fn fraction_is(
    f: Option<&core::RuntimeFractionalPercent>,
    path: &str,
    field: &str,
) -> Result<bool, ConvertError> {
    let pct = f
        .and_then(|f| f.default_value.as_ref())
        .map(percent_from)
        .unwrap_or(0.0);
    if pct <= 0.0 {
        Ok(false)
    } else if pct >= 100.0 {
        Ok(true)
    } else {
        Err(ConvertError::unsupported(
            format!("{path}.{field}"),
            format!("partial enablement ({pct}%)"),
        ))
    }
}

/// A fractional percent as a percentage.
pub(crate) fn percent_from(f: &typ::FractionalPercent) -> f64 {
    use typ::fractional_percent::DenominatorType as D;
    let denom = match D::try_from(f.denominator) {
        Ok(D::TenThousand) => 10_000.0,
        Ok(D::Million) => 1_000_000.0,
        _ => 100.0,
    };
    (f64::from(f.numerator) / denom * 100.0).min(100.0)
}

/// A percentage as a fractional percent per million (exact for 4 decimals).
pub(crate) fn percent_to(pct: f64) -> typ::FractionalPercent {
    // Bounded to 0..=1e6 before the cast, so it cannot truncate.
    let numerator = (pct.clamp(0.0, 100.0) * 10_000.0).round() as u32;
    typ::FractionalPercent {
        numerator,
        denominator: typ::fractional_percent::DenominatorType::Million as i32,
    }
}

/// The `fault` filter config of a [`FaultConfig`].
pub(crate) fn fault_to(f: &FaultConfig) -> fault::HttpFault {
    fault::HttpFault {
        delay: f.delay.as_ref().map(|d| cfault::FaultDelay {
            percentage: Some(percent_to(d.percentage)),
            fault_delay_secifier: Some(cfault::fault_delay::FaultDelaySecifier::FixedDelay(
                duration_to(d.fixed_delay),
            )),
        }),
        abort: f.abort.as_ref().map(|a| fault::FaultAbort {
            percentage: Some(percent_to(a.percentage)),
            error_type: Some(fault::fault_abort::ErrorType::HttpStatus(u32::from(
                a.http_status,
            ))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The [`FaultConfig`] of a `fault` filter config.
pub(crate) fn fault_from(p: &fault::HttpFault, path: &str) -> Result<FaultConfig, ConvertError> {
    let refuse = |f: &str, what: &str| Err(ConvertError::unsupported(format!("{path}.{f}"), what));
    if !p.upstream_cluster.is_empty() || !p.headers.is_empty() || !p.downstream_nodes.is_empty() {
        return refuse(
            "headers",
            "fault conditions (upstream_cluster, headers, downstream_nodes)",
        );
    }
    if p.max_active_faults.is_some() {
        return refuse("max_active_faults", "a cap on active faults");
    }
    if p.response_rate_limit.is_some() {
        return refuse("response_rate_limit", "response rate limiting");
    }
    let delay = match &p.delay {
        None => None,
        Some(d) => {
            use cfault::fault_delay::FaultDelaySecifier as S;
            let fixed = match &d.fault_delay_secifier {
                Some(S::FixedDelay(fd)) => duration_from(fd, &format!("{path}.delay.fixed_delay"))?,
                _ => return refuse("delay.header_delay", "header-controlled delays"),
            };
            Some(FaultDelay {
                fixed_delay: fixed,
                percentage: d.percentage.as_ref().map_or(100.0, percent_from),
            })
        }
    };
    let abort = match &p.abort {
        None => None,
        Some(a) => {
            use fault::fault_abort::ErrorType as E;
            let status = match &a.error_type {
                Some(E::HttpStatus(s)) => u16::try_from(*s).map_err(|_| {
                    ConvertError::new(format!("{path}.abort.http_status"), "out of range")
                })?,
                _ => return refuse("abort", "gRPC and header-controlled aborts"),
            };
            Some(FaultAbort {
                http_status: status,
                percentage: a.percentage.as_ref().map_or(100.0, percent_from),
            })
        }
    };
    Ok(FaultConfig { delay, abort })
}
