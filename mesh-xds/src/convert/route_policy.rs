//! Per-route policies: retries, hash policies and header mutations.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3 as rpb;
use mesh_core::{
    ConnectConfig, HashPolicy, HeaderValueOption, RetryBackoff, RetryBudget, RetryPolicy,
    RouteUpgrade,
};

use super::{duration_from, duration_to, opt_duration, u32_from, u32_to, ConvertError};

pub(crate) fn retry_from(
    p: &rpb::RetryPolicy,
    budget: Option<RetryBudget>,
) -> Result<RetryPolicy, ConvertError> {
    if p.retry_priority.is_some()
        || !p.retry_host_predicate.is_empty()
        || p.rate_limited_retry_back_off.is_some()
        || !p.retriable_headers.is_empty()
        || !p.retriable_request_headers.is_empty()
    {
        return Err(ConvertError::unsupported(
            "retry_host_predicate",
            "retry priorities, host predicates, rate-limited backoff and header conditions",
        ));
    }
    let retry_on = p
        .retry_on
        .parse()
        .map_err(|e: String| ConvertError::unsupported("retry_on", e))?;
    let backoff = match &p.retry_back_off {
        None => RetryBackoff::default(),
        Some(b) => {
            let base = match &b.base_interval {
                Some(d) => duration_from(d, "retry_back_off.base_interval")?,
                None => {
                    return Err(ConvertError::new(
                        "retry_back_off.base_interval",
                        "required",
                    ))
                }
            };
            let max = opt_duration(b.max_interval.as_ref(), "retry_back_off.max_interval")?;
            RetryBackoff {
                base_interval: base,
                max_interval: max.unwrap_or(base * 10),
            }
        }
    };
    Ok(RetryPolicy {
        retry_on,
        num_retries: u32_from(p.num_retries).unwrap_or(1),
        per_try_timeout: opt_duration(p.per_try_timeout.as_ref(), "per_try_timeout")?
            .filter(|d| *d != Duration::ZERO),
        retriable_status_codes: p
            .retriable_status_codes
            .iter()
            .map(|c| {
                u16::try_from(*c)
                    .map_err(|_| ConvertError::new("retriable_status_codes", format!("{c}")))
            })
            .collect::<Result<_, _>>()?,
        backoff,
        budget,
    })
}

pub(crate) fn retry_to(p: &RetryPolicy) -> rpb::RetryPolicy {
    rpb::RetryPolicy {
        retry_on: String::from(p.retry_on),
        num_retries: u32_to(p.num_retries),
        per_try_timeout: p.per_try_timeout.map(duration_to),
        retriable_status_codes: p
            .retriable_status_codes
            .iter()
            .map(|c| u32::from(*c))
            .collect(),
        retry_back_off: Some(rpb::retry_policy::RetryBackOff {
            base_interval: Some(duration_to(p.backoff.base_interval)),
            max_interval: Some(duration_to(p.backoff.max_interval)),
        }),
        ..Default::default()
    }
}

pub(crate) fn hash_from(h: &rpb::route_action::HashPolicy) -> Result<HashPolicy, ConvertError> {
    use rpb::route_action::hash_policy::PolicySpecifier as P;
    Ok(match &h.policy_specifier {
        Some(P::Header(hd)) if hd.regex_rewrite.is_none() => {
            HashPolicy::Header(hd.header_name.clone())
        }
        Some(P::Cookie(c)) if c.ttl.is_none() && c.attributes.is_empty() => {
            HashPolicy::Cookie(c.name.clone())
        }
        Some(P::QueryParameter(q)) => HashPolicy::QueryParameter(q.name.clone()),
        Some(P::ConnectionProperties(c)) if c.source_ip => HashPolicy::SourceIp,
        _ => {
            return Err(ConvertError::unsupported(
                "policy_specifier",
                "hash policies other than header, cookie (no ttl), query parameter and source ip",
            ))
        }
    })
}

pub(crate) fn hash_to(h: &HashPolicy) -> rpb::route_action::HashPolicy {
    use rpb::route_action::hash_policy::{self as hp, PolicySpecifier as P};
    let spec = match h {
        HashPolicy::Header(name) => P::Header(hp::Header {
            header_name: name.clone(),
            regex_rewrite: None,
        }),
        HashPolicy::Cookie(name) => P::Cookie(hp::Cookie {
            name: name.clone(),
            ..Default::default()
        }),
        HashPolicy::QueryParameter(name) => {
            P::QueryParameter(hp::QueryParameter { name: name.clone() })
        }
        HashPolicy::SourceIp => {
            P::ConnectionProperties(hp::ConnectionProperties { source_ip: true })
        }
    };
    // The mesh uses the first policy that yields a value, which is Envoy's `terminal`.
    rpb::route_action::HashPolicy {
        terminal: true,
        policy_specifier: Some(spec),
    }
}

#[allow(deprecated)] // `append` is deprecated but still honoured when a control plane sets it
pub(crate) fn header_adds_from(
    adds: &[core::HeaderValueOption],
    field: &str,
) -> Result<Vec<HeaderValueOption>, ConvertError> {
    use core::header_value_option::HeaderAppendAction as A;
    adds.iter()
        .enumerate()
        .map(|(i, h)| {
            let at = format!("{field}[{i}]");
            let hv = h.header.as_ref().ok_or_else(|| ConvertError::new(&at, "missing header"))?;
            let append = match (h.append, A::try_from(h.append_action)) {
                (Some(b), _) => b.value,
                (None, Ok(A::AppendIfExistsOrAdd)) => true,
                (None, Ok(A::OverwriteIfExistsOrAdd)) => false,
                _ => {
                    return Err(ConvertError::unsupported(
                        format!("{at}.append_action"),
                        "append actions other than APPEND_IF_EXISTS_OR_ADD and OVERWRITE_IF_EXISTS_OR_ADD",
                    ))
                }
            };
            let value = if hv.raw_value.is_empty() {
                hv.value.clone()
            } else {
                String::from_utf8(hv.raw_value.clone())
                    .map_err(|_| ConvertError::new(format!("{at}.header.raw_value"), "not UTF-8"))?
            };
            Ok(HeaderValueOption {
                name: hv.key.clone(),
                value,
                append,
            })
        })
        .collect()
}

pub(crate) fn header_add_to(h: &HeaderValueOption) -> core::HeaderValueOption {
    use core::header_value_option::HeaderAppendAction as A;
    core::HeaderValueOption {
        header: Some(core::HeaderValue {
            key: h.name.clone(),
            value: h.value.clone(),
            raw_value: Vec::new(),
        }),
        append_action: if h.append {
            A::AppendIfExistsOrAdd
        } else {
            A::OverwriteIfExistsOrAdd
        } as i32,
        ..Default::default()
    }
}

/// A route's `upgrade_configs`: only CONNECT, terminated (`connect_config` without PROXY
/// protocol or `allow_post`); mesh-core's validation refuses the rest with its field path.
pub(crate) fn upgrade_from(
    u: &rpb::route_action::UpgradeConfig,
) -> Result<RouteUpgrade, ConvertError> {
    let connect_config = match &u.connect_config {
        None => None,
        Some(c) if c.proxy_protocol_config.is_some() => {
            return Err(ConvertError::unsupported(
                "connect_config.proxy_protocol_config",
                "PROXY protocol on terminated CONNECT",
            ))
        }
        Some(c) if c.allow_post => {
            return Err(ConvertError::unsupported(
                "connect_config.allow_post",
                "POST-based CONNECT",
            ))
        }
        Some(_) => Some(ConnectConfig {}),
    };
    Ok(RouteUpgrade {
        upgrade_type: u.upgrade_type.clone(),
        enabled: u.enabled.is_none_or(|b| b.value),
        connect_config,
    })
}

pub(crate) fn upgrade_to(u: &RouteUpgrade) -> rpb::route_action::UpgradeConfig {
    rpb::route_action::UpgradeConfig {
        upgrade_type: u.upgrade_type.clone(),
        enabled: (!u.enabled)
            .then_some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        connect_config: u
            .connect_config
            .as_ref()
            .map(|_| rpb::route_action::upgrade_config::ConnectConfig::default()),
    }
}
