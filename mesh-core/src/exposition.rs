//! The Prometheus exposition both admin endpoints serve, in the format the scraper asks for.
//!
//! prometheus-client writes OpenMetrics text, where a counter family `x` has the sample
//! `x_total` and the text ends with `# EOF`. Prometheus's classic text format (0.0.4), which
//! `curl`, `promtool check metrics` and older scrapers read, names the family after its samples
//! (`# TYPE x_total counter`) and knows neither `# UNIT`, `# EOF` nor the `info` type. So an
//! admin endpoint serves OpenMetrics to a client whose `Accept` asks for it (Prometheus does) and
//! the classic format, converted here, to everyone else. Hand-written because prometheus-client
//! has no classic encoder and the conversion is a few renames over the family headers.

use std::collections::HashMap;

/// OpenMetrics' content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The classic Prometheus text format's content type.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Picks the format for a request's `Accept` header: OpenMetrics when it names
/// `application/openmetrics-text`, else the classic text. Returns the content type and the body.
pub fn negotiate(accept: Option<&str>, openmetrics: &str) -> (&'static str, String) {
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (OPENMETRICS, openmetrics.to_owned())
    } else {
        (PROMETHEUS_TEXT, to_prometheus_text(openmetrics))
    }
}

/// Converts OpenMetrics text (as prometheus-client writes it) to Prometheus's classic text
/// format: counter families are named with `_total` and info families with `_info` (as their
/// samples are), `info` becomes `gauge`, `unknown` becomes `untyped`, and `# UNIT` and `# EOF`
/// go. Sample lines are kept as they are.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let types: HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let renamed = |name: &str| match types.get(name).copied() {
        Some("counter") if !name.ends_with("_total") => format!("{name}_total"),
        Some("info") if !name.ends_with("_info") => format!("{name}_info"),
        _ => name.to_owned(),
    };
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", renamed(name)));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let ty = match ty {
                "info" | "stateset" => "gauge",
                "unknown" | "gaugehistogram" => "untyped",
                other => other,
            };
            out.push_str(&format!("# TYPE {} {ty}\n", renamed(name)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OM: &str = "# HELP mesh_requests Requests.\n# TYPE mesh_requests counter\n\
mesh_requests_total{listener=\"out\"} 3\n\
# HELP mesh_build Build.\n# TYPE mesh_build info\nmesh_build_info{version=\"1\"} 1\n\
# HELP mesh_latency_seconds Latency.\n# TYPE mesh_latency_seconds histogram\n# UNIT mesh_latency_seconds seconds\n\
mesh_latency_seconds_sum 0.5\nmesh_latency_seconds_count 1\nmesh_latency_seconds_bucket{le=\"+Inf\"} 1\n\
# HELP mesh_open Open.\n# TYPE mesh_open gauge\nmesh_open 2\n# EOF\n";

    #[test]
    fn families_are_named_after_their_samples_and_openmetrics_only_lines_go() {
        let text = to_prometheus_text(OM);
        assert!(
            text.contains("# HELP mesh_requests_total Requests.\n# TYPE mesh_requests_total counter\nmesh_requests_total{listener=\"out\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP mesh_build_info Build.\n# TYPE mesh_build_info gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE mesh_latency_seconds histogram\nmesh_latency_seconds_sum 0.5\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE mesh_open gauge\nmesh_open 2\n"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }

    #[test]
    fn the_accept_header_picks_the_format() {
        let (ctype, body) = negotiate(
            Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
            OM,
        );
        assert_eq!((ctype, body.as_str()), (OPENMETRICS, OM));
        for accept in [None, Some("*/*"), Some("text/plain")] {
            let (ctype, body) = negotiate(accept, OM);
            assert_eq!(ctype, PROMETHEUS_TEXT);
            assert!(
                body.contains("# TYPE mesh_requests_total counter"),
                "{body}"
            );
        }
    }
}
