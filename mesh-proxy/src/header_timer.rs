//! The HTTP/1 header read timeout (slowloris protection) without a tokio timer per request.
//!
//! hyper arms its header read timer each time an HTTP/1 connection waits for a request head
//! (the wait for the next keep-alive request included) and drops it once the head is read:
//! with tokio's timer, a boxed `Sleep` registered in and removed from the timer wheel, under
//! its lock, on every request (~390 instructions of an HTTP/1 sidecar hop, callgrind). Here the
//! connection's [`Activity`] holds the deadline, and the listener's sweep, which already
//! visits every connection for the idle timeout, marks a passed deadline and wakes the
//! connection; hyper then finds its sleep elapsed and answers 408. The timeout fires up to one
//! sweep period late (a quarter of the header timeout at most, see `server::serve`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

use crate::conn::Activity;

/// Set on a deadline the sweep found passed.
const EXPIRED: u64 = 1 << 63;

/// hyper's HTTP/1 timer for one connection: its sleeps are the connection's header deadline.
#[derive(Clone, Debug)]
pub(crate) struct HeaderTimer(pub(crate) Arc<Activity>);

impl Timer for HeaderTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let activity = Arc::clone(&self.0);
        let at = deadline_ms(&activity, deadline);
        activity.header_deadline.store(at, Ordering::Release);
        Box::pin(HeaderSleep { activity, at })
    }
}

/// The connection's deadline in milliseconds since it opened, plus one (zero means none).
fn deadline_ms(activity: &Activity, deadline: Instant) -> u64 {
    let ms = deadline
        .saturating_duration_since(activity.started)
        .as_millis();
    u64::try_from(ms).unwrap_or(EXPIRED - 2).min(EXPIRED - 2) + 1
}

/// Marks the connection's header deadline passed and wakes the connection, if it is: the
/// listener's sweep calls this for every connection.
pub(crate) fn fire_if_passed(activity: &Activity) {
    let at = activity.header_deadline.load(Ordering::Acquire);
    if at == 0 || at & EXPIRED != 0 {
        return;
    }
    let now = deadline_ms(activity, Instant::now());
    if now >= at
        && activity
            .header_deadline
            .compare_exchange(at, at | EXPIRED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    {
        activity.wake();
    }
}

/// One armed header deadline; dropping it disarms it.
struct HeaderSleep {
    activity: Arc<Activity>,
    at: u64,
}

impl Future for HeaderSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        // No waker to register: the connection's task is the one polling (hyper polls its timer
        // from the connection future), and the sweep wakes it through `Activity`.
        if self.activity.header_deadline.load(Ordering::Acquire) == self.at | EXPIRED {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Sleep for HeaderSleep {}

impl Drop for HeaderSleep {
    fn drop(&mut self) {
        // Only this sleep's own deadline: a newer one (hyper's `reset`) is left armed.
        let deadline = &self.activity.header_deadline;
        for own in [self.at, self.at | EXPIRED] {
            if deadline
                .compare_exchange(own, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_fires_once_passed_and_only_its_own_sleep_disarms_it() {
        let activity = Activity::new();
        let timer = HeaderTimer(Arc::clone(&activity));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut later = timer.sleep(Duration::from_secs(60));
        fire_if_passed(&activity);
        assert!(later.as_mut().poll(&mut cx).is_pending());
        let mut passed = timer.sleep_until(Instant::now());
        // The older sleep's drop leaves the newer deadline armed.
        drop(later);
        fire_if_passed(&activity);
        assert!(passed.as_mut().poll(&mut cx).is_ready());
        drop(passed);
        assert_eq!(activity.header_deadline.load(Ordering::Acquire), 0);
    }
}
