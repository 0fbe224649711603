//! Wait mode: ordering, the waiting bound, cancellation.

use super::*;

const WAIT: &str = r#"
rules:
  - name: w
    scope: listener
    token_bucket: { max_tokens: 1, tokens_per_fill: 1, fill_interval: 100ms }
    mode: { wait: { max_wait: 250ms, max_waiting: 10 } }
"#;

#[tokio::test(start_paused = true)]
async fn wait_mode_holds_requests_in_order_up_to_max_wait() {
    let svc = svc(&layer(WAIT));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let fut = start(&svc, plain());
            tokio::spawn(async move {
                let r = fut.await.unwrap();
                (r.status().as_u16(), t0.elapsed().as_millis())
            })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    // Now, +100ms, +200ms; the fourth would wait 300ms > max_wait and is refused at once.
    assert_eq!(got, [(200, 0), (200, 100), (200, 200), (429, 0)]);
}

#[tokio::test(start_paused = true)]
async fn wait_mode_bounds_the_number_of_waiters() {
    let svc = svc(&layer(
        r#"
rules:
  - name: w
    scope: listener
    token_bucket: { max_tokens: 1, tokens_per_fill: 1, fill_interval: 100ms }
    mode: { wait: { max_wait: 10s, max_waiting: 2 } }
"#,
    ));
    let futs: Vec<_> = (0..4).map(|_| start(&svc, plain())).collect();
    let results = futures_join(futs).await;
    let codes: Vec<u16> = results.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(
        codes,
        [200, 200, 200, 429],
        "one immediate, two waiting, one refused"
    );
}

#[tokio::test(start_paused = true)]
async fn cancelled_waiter_gives_back_its_token_and_slot() {
    let svc = svc(&layer(WAIT));
    assert_eq!(status(&svc, plain()).await, 200);
    // Reserve the token due at 100ms, then give up at 50ms.
    let waiter = start(&svc, plain());
    assert!(tokio::time::timeout(Duration::from_millis(50), waiter)
        .await
        .is_err());
    // The refunded token is due at 100ms, not 200ms.
    let t0 = Instant::now();
    assert_eq!(status(&svc, plain()).await, 200);
    assert_eq!(t0.elapsed(), Duration::from_millis(50));
    let rule = svc.layer().limiter.rule("w").unwrap();
    assert_eq!(rule.waiting.load(std::sync::atomic::Ordering::Relaxed), 0);
}

async fn futures_join(
    futs: Vec<crate::ResponseFuture<<Inner as tower::Service<Request<Body>>>::Future, Inner>>,
) -> Vec<Response<Body>> {
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap().unwrap());
    }
    out
}
