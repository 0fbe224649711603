//! A cluster's policies: circuit breakers, active health checking and outlier detection.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::google::protobuf as pbw;
use mesh_core::{CircuitBreakers, HealthCheck, OutlierDetection};

use super::{duration_from, duration_to, opt_duration, u32_from, u32_to, ConvertError};

pub(crate) fn circuit_breakers_from(
    cb: &cpb::CircuitBreakers,
) -> Result<CircuitBreakers, ConvertError> {
    if !cb.per_host_thresholds.is_empty() {
        return Err(ConvertError::unsupported(
            "circuit_breakers.per_host_thresholds",
            "per-host limits",
        ));
    }
    let mut out = CircuitBreakers::default();
    // Only the DEFAULT priority applies: the mesh routes nothing at HIGH priority.
    for (i, t) in cb.thresholds.iter().enumerate() {
        if t.priority != core::RoutingPriority::Default as i32 {
            continue;
        }
        if t.retry_budget.is_some() {
            return Err(ConvertError::unsupported(
                format!("circuit_breakers.thresholds[{i}].retry_budget"),
                "cluster retry budgets (set the budget on the route's retry policy)",
            ));
        }
        out.max_connections = u32_from(t.max_connections).unwrap_or(out.max_connections);
        out.max_pending_requests =
            u32_from(t.max_pending_requests).unwrap_or(out.max_pending_requests);
        out.max_requests = u32_from(t.max_requests).unwrap_or(out.max_requests);
        out.max_retries = u32_from(t.max_retries).unwrap_or(out.max_retries);
    }
    Ok(out)
}

pub(crate) fn circuit_breakers_to(cb: &CircuitBreakers) -> cpb::CircuitBreakers {
    cpb::CircuitBreakers {
        thresholds: vec![cpb::circuit_breakers::Thresholds {
            priority: core::RoutingPriority::Default as i32,
            max_connections: u32_to(cb.max_connections),
            max_pending_requests: u32_to(cb.max_pending_requests),
            max_requests: u32_to(cb.max_requests),
            max_retries: u32_to(cb.max_retries),
            ..Default::default()
        }],
        per_host_thresholds: Vec::new(),
    }
}

pub(crate) fn health_check_from(
    hcs: &[core::HealthCheck],
) -> Result<Option<HealthCheck>, ConvertError> {
    use core::health_check::HealthChecker;
    let hc = match hcs {
        [] => return Ok(None),
        [hc] => hc,
        _ => {
            return Err(ConvertError::unsupported(
                "health_checks",
                "more than one health check",
            ))
        }
    };
    let at = "health_checks[0]";
    let Some(HealthChecker::HttpHealthCheck(http)) = &hc.health_checker else {
        return Err(ConvertError::unsupported(
            format!("{at}.health_checker"),
            "health checks other than HTTP",
        ));
    };
    let need = |d: Option<&pbw::Duration>, f: &str| -> Result<Duration, ConvertError> {
        let path = format!("{at}.{f}");
        match d {
            Some(d) => duration_from(d, &path),
            None => Err(ConvertError::new(path, "required")),
        }
    };
    Ok(Some(HealthCheck {
        path: http.path.clone(),
        interval: need(hc.interval.as_ref(), "interval")?,
        timeout: need(hc.timeout.as_ref(), "timeout")?,
        healthy_threshold: u32_from(hc.healthy_threshold).unwrap_or(1),
        unhealthy_threshold: u32_from(hc.unhealthy_threshold).unwrap_or(1),
        host: (!http.host.is_empty()).then(|| http.host.clone()),
    }))
}

pub(crate) fn health_check_to(hc: &HealthCheck) -> core::HealthCheck {
    core::HealthCheck {
        timeout: Some(duration_to(hc.timeout)),
        interval: Some(duration_to(hc.interval)),
        healthy_threshold: u32_to(hc.healthy_threshold),
        unhealthy_threshold: u32_to(hc.unhealthy_threshold),
        health_checker: Some(core::health_check::HealthChecker::HttpHealthCheck(
            core::health_check::HttpHealthCheck {
                path: hc.path.clone(),
                host: hc.host.clone().unwrap_or_default(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// Envoy's `enforcing_*` percentages: the mesh either enforces a detector fully or not at all.
fn enforced(v: Option<pbw::UInt32Value>, default: u32, path: &str) -> Result<bool, ConvertError> {
    match u32_from(v).unwrap_or(default) {
        0 => Ok(false),
        100 => Ok(true),
        n => Err(ConvertError::unsupported(
            path,
            format!("partial enforcement ({n}%; 0 or 100 only)"),
        )),
    }
}

pub(crate) fn outlier_from(od: &cpb::OutlierDetection) -> Result<OutlierDetection, ConvertError> {
    if u32_from(od.enforcing_success_rate).is_some_and(|v| v > 0)
        || u32_from(od.enforcing_failure_percentage).is_some_and(|v| v > 0)
        || od.split_external_local_origin_errors
    {
        return Err(ConvertError::unsupported(
            "enforcing_success_rate",
            "success-rate, failure-percentage and local-origin ejection",
        ));
    }
    let d = OutlierDetection::default();
    // A detector that is not enforced never ejects: the mesh models that as an unreachable count.
    let count = |v: Option<pbw::UInt32Value>, default: u32, on: bool| {
        if on {
            u32_from(v).unwrap_or(default)
        } else {
            u32::MAX
        }
    };
    let on_5xx = enforced(
        od.enforcing_consecutive_5xx,
        100,
        "enforcing_consecutive_5xx",
    )?;
    let on_gw = enforced(
        od.enforcing_consecutive_gateway_failure,
        0,
        "enforcing_consecutive_gateway_failure",
    )?;
    Ok(OutlierDetection {
        consecutive_5xx: count(od.consecutive_5xx, d.consecutive_5xx, on_5xx),
        consecutive_gateway_failure: count(
            od.consecutive_gateway_failure,
            d.consecutive_gateway_failure,
            on_gw,
        ),
        interval: opt_duration(od.interval.as_ref(), "interval")?.unwrap_or(d.interval),
        base_ejection_time: opt_duration(od.base_ejection_time.as_ref(), "base_ejection_time")?
            .unwrap_or(d.base_ejection_time),
        max_ejection_time: opt_duration(od.max_ejection_time.as_ref(), "max_ejection_time")?
            .unwrap_or(d.max_ejection_time),
        max_ejection_percent: u32_from(od.max_ejection_percent).unwrap_or(d.max_ejection_percent),
    })
}

pub(crate) fn outlier_to(od: &OutlierDetection) -> cpb::OutlierDetection {
    let (c5, e5) = match od.consecutive_5xx {
        u32::MAX => (None, 0),
        n => (u32_to(n), 100),
    };
    let (cg, eg) = match od.consecutive_gateway_failure {
        u32::MAX => (None, 0),
        n => (u32_to(n), 100),
    };
    cpb::OutlierDetection {
        consecutive_5xx: c5,
        enforcing_consecutive_5xx: u32_to(e5),
        consecutive_gateway_failure: cg,
        enforcing_consecutive_gateway_failure: u32_to(eg),
        // Envoy enforces success-rate ejection by default; the mesh has no such detector.
        enforcing_success_rate: u32_to(0),
        interval: Some(duration_to(od.interval)),
        base_ejection_time: Some(duration_to(od.base_ejection_time)),
        max_ejection_time: Some(duration_to(od.max_ejection_time)),
        max_ejection_percent: u32_to(od.max_ejection_percent),
        ..Default::default()
    }
}
