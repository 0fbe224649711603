//! The promtool check can fail: it reports an OpenMetrics counter family (named without
//! `_total`, which the classic text format reads as a family without samples and a sample
//! family without help) and passes the same metrics in the classic format.
#![allow(clippy::unwrap_used)]

#[test]
fn promtool_reports_problems_and_passes_clean_text() {
    let Some(promtool) = mesh_testkit::require_promtool() else {
        return;
    };
    let openmetrics = "# HELP jobs Jobs done.\n# TYPE jobs counter\njobs_total 3\n# EOF\n";
    let err = mesh_testkit::promtool_check_metrics(&promtool, openmetrics).unwrap_err();
    assert!(err.contains("jobs_total"), "{err}");
    let classic = "# HELP jobs_total Jobs done.\n# TYPE jobs_total counter\njobs_total 3\n";
    mesh_testkit::promtool_check_metrics(&promtool, classic).unwrap();
    // A gauge named like a counter is one of promtool's lints too.
    let gauge_total = "# HELP open_total Open now.\n# TYPE open_total gauge\nopen_total 1\n";
    let err = mesh_testkit::promtool_check_metrics(&promtool, gauge_total).unwrap_err();
    assert!(err.contains("_total"), "{err}");
}
