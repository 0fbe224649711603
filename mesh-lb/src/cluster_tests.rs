use std::time::Duration;

use mesh_core::OutlierDetection;

use super::*;

/// The whole ejection cycle on tokio's paused clock: thresholds, growth of the ejection
/// time, the sweep, the rebuild and the max-ejection cap.
#[tokio::test(start_paused = true)]
async fn ejections_grow_and_sweeps_return_endpoints_on_time() {
    let addrs: Vec<std::net::SocketAddr> = (1..=3).map(|p| ([127, 0, 0, 1], p).into()).collect();
    let mut c = Cluster::new("c");
    c.outlier_detection = Some(OutlierDetection {
        consecutive_5xx: 2,
        interval: Duration::from_secs(1),
        base_ejection_time: Duration::from_secs(10),
        max_ejection_time: Duration::from_secs(300),
        max_ejection_percent: 40,
        ..OutlierDetection::default()
    });
    let cla = Arc::new(ClusterLoadAssignment::from_addrs("c", addrs.clone()));
    let cluster = ClusterState::new(c, None, None, cla, None);
    let eps = cluster.endpoints();
    let (a, b) = (eps[&addrs[0]].clone(), eps[&addrs[1]].clone());
    let fail = Outcome::Failure { gateway: false };
    let settle = || tokio::time::sleep(Duration::from_millis(1));

    cluster.record(&a, fail);
    cluster.record(&a, Outcome::Success);
    cluster.record(&a, fail);
    assert!(!a.is_ejected(), "a success resets the streak");
    cluster.record(&a, fail);
    assert!(a.is_ejected());
    settle().await;
    assert_eq!(cluster.endpoint_set().healthy(), 2, "rebuilt without it");
    // As Envoy, the share is checked before ejecting: 1 of 3 (33 %) is under 40 %, so a
    // second endpoint may go; with 2 of 3 (66 %) out, a third may not.
    cluster.record(&b, fail);
    cluster.record(&b, fail);
    assert!(b.is_ejected());
    let c3 = eps[&addrs[2]].clone();
    cluster.record(&c3, fail);
    cluster.record(&c3, fail);
    assert!(!c3.is_ejected(), "66 % ejected is past the 40 % maximum");

    tokio::time::sleep(Duration::from_millis(9_500)).await;
    assert!(a.is_ejected(), "first ejection lasts the base time");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!a.is_ejected(), "returned by the sweep at 10 s");
    assert!(
        b.is_ejected(),
        "ejected 1 ms later: waits for the next sweep"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!b.is_ejected());
    settle().await;
    assert_eq!(cluster.endpoint_set().healthy(), 3);

    cluster.record(&a, fail);
    cluster.record(&a, fail);
    assert_eq!(a.ejections(), 2);
    tokio::time::sleep(Duration::from_secs(19)).await;
    assert!(a.is_ejected(), "second ejection lasts twice the base");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!a.is_ejected());
}
