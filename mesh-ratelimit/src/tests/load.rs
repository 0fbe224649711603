//! Accuracy under overload and exactness under many threads.

use super::*;

#[tokio::test(start_paused = true)]
async fn ten_times_overload_for_ten_seconds_admits_rate_times_time_plus_burst() {
    // 100/s with a burst of 50, offered 1000/s (one request per millisecond) for 10s.
    let svc = svc(&layer(
        r#"
rules:
  - name: l
    scope: listener
    token_bucket: { max_tokens: 50, tokens_per_fill: 10, fill_interval: 100ms }
"#,
    ));
    let mut admitted = 0u32;
    for _ in 0..10_000 {
        if status(&svc, plain()).await == 200 {
            admitted += 1;
        }
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    let expected = 50.0 + 100.0 * 10.0;
    let error = (f64::from(admitted) - expected).abs() / expected;
    assert!(error <= 0.05, "admitted {admitted}, expected {expected}");
}

#[test]
fn many_threads_through_the_layer_admit_exactly_the_burst_per_key() {
    // Frozen time: each of 8 keys admits exactly its burst of 50, however the 4 threads race.
    let cfg = config(&PER_HEADER.replace("max_tokens: 1,", "max_tokens: 50,"));
    let (clock, _hand) = Clock::manual();
    let l = RateLimitLayer::with_clock(cfg, clock).unwrap();
    let admitted: Vec<u32> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let svc = svc(&l);
                s.spawn(move || {
                    let mut per_key = [0u32; 8];
                    for i in 0..2_000usize {
                        let key = (i + t) % 8;
                        let mut fut = std::pin::pin!(start(&svc, user(&format!("k{key}"))));
                        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                        let std::task::Poll::Ready(Ok(r)) = fut.as_mut().poll(&mut cx) else {
                            panic!("reject mode never waits");
                        };
                        per_key[key] += u32::from(r.status() == 200);
                    }
                    per_key
                })
            })
            .collect();
        let mut total = vec![0u32; 8];
        for w in workers {
            for (k, n) in w.join().unwrap().into_iter().enumerate() {
                total[k] += n;
            }
        }
        total
    });
    assert_eq!(admitted, vec![50; 8]);
}
