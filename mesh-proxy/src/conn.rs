//! Per-connection bookkeeping: when bytes last moved and how many requests are in flight (so a
//! connection idle for `idle_timeout` with nothing in flight is closed gracefully; hyper's
//! HTTP/1 keep-alive has no idle timeout of its own), and the listener's signals to the
//! connection (drain, force close).
//!
//! The listener delivers its signals through a flag and a waker instead of each connection task
//! selecting over cancellation futures and an idle timer: those would be polled on every
//! wake-up of every connection (a mutex per token per poll in the chain benchmark's profile) and
//! hold a timer entry per connection. The listener's own sweep finds idle connections.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::fragment::Fragments;

/// No signal: serve.
const RUN: u8 = 0;
/// Finish in-flight requests, take no new ones (drain, idle timeout).
const GRACEFUL: u8 = 1;
/// Close now (drain deadline passed).
const FORCE: u8 = 2;

/// Activity of one downstream connection, and the listener's signal to it.
#[derive(Debug)]
pub(crate) struct Activity {
    pub(crate) started: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    signal: AtomicU8,
    waker: AtomicWaker,
    /// The HTTP/1 header read deadline armed now, if any (see `crate::header_timer`).
    pub(crate) header_deadline: AtomicU64,
    /// Request targets with a fragment seen in the bytes read (see `crate::fragment`).
    pub(crate) fragments: Fragments,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            signal: AtomicU8::new(RUN),
            waker: AtomicWaker::new(),
            header_deadline: AtomicU64::new(0),
            fragments: Fragments::default(),
        })
    }

    /// Raises the connection's signal to `level` (never lowers it) and wakes its task.
    fn raise(&self, level: u8) {
        if self.signal.fetch_max(level, Ordering::AcqRel) < level {
            self.waker.wake();
        }
    }

    /// Asks the connection to finish its in-flight requests and close.
    pub(crate) fn close_gracefully(&self) {
        self.raise(GRACEFUL);
    }

    /// Closes the connection now.
    pub(crate) fn close_now(&self) {
        self.raise(FORCE);
    }

    /// Wakes the connection's task (it re-reads its state: a header deadline passed).
    pub(crate) fn wake(&self) {
        self.waker.wake();
    }

    fn is_signalled(&self) -> bool {
        self.signal.load(Ordering::Acquire) != RUN
    }

    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since bytes last moved, or zero while a request is in flight.
    pub(crate) fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Marks a request in flight until the guard drops.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }
}

/// Resolves once the listener has signalled the connection (to close, gracefully or now): what
/// a connection waits on while it has no protocol server yet (protocol detection).
pub(crate) struct Signalled<'a>(pub(crate) &'a Activity);

impl Future for Signalled<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.waker.register(cx.waker());
        if self.0.is_signalled() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// A request in flight on a connection.
pub(crate) struct InFlight(Arc<Activity>);

/// A connection that can stop taking new requests and close once the in-flight ones are done.
pub(crate) trait GracefulShutdown {
    /// Starts the graceful shutdown (HTTP/2 GOAWAY, HTTP/1 close after the current response).
    fn graceful_shutdown(self: Pin<&mut Self>);
}

pin_project_lite::pin_project! {
    /// A connection future under its listener's signals (see [`Activity`]).
    pub(crate) struct Supervised<C> {
        #[pin]
        conn: C,
        activity: Arc<Activity>,
        closing: bool,
    }
}

impl<C> Supervised<C> {
    pub(crate) fn new(conn: C, activity: Arc<Activity>) -> Self {
        Self {
            conn,
            activity,
            closing: false,
        }
    }
}

/// How a supervised connection ended.
#[derive(Debug)]
pub(crate) enum Ended<E> {
    /// It finished by itself (the result of the connection future).
    Done(Result<(), E>),
    /// The listener closed it (drain deadline).
    Forced,
}

impl<C, E> Future for Supervised<C>
where
    C: Future<Output = Result<(), E>> + GracefulShutdown,
{
    type Output = Ended<E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Register before reading the signal: a signal raised after the load wakes this waker.
        this.activity.waker.register(cx.waker());
        match this.activity.signal.load(Ordering::Acquire) {
            RUN => {}
            GRACEFUL => {
                if !*this.closing {
                    *this.closing = true;
                    this.conn.as_mut().graceful_shutdown();
                }
            }
            _ => return Poll::Ready(Ended::Forced),
        }
        this.conn.poll(cx).map(Ended::Done)
    }
}

/// The open connections of one listener, for its idle sweep and its drain. Touched when a
/// connection opens or closes and by the sweep, never per request.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    inner: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    next: u64,
    live: HashMap<u64, Arc<Activity>>,
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Entries are inserted and removed whole: a panic elsewhere leaves the map consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a connection; returns its key for [`remove`](Self::remove).
    pub(crate) fn insert(&self, activity: Arc<Activity>) -> u64 {
        let mut r = self.lock();
        let id = r.next;
        r.next += 1;
        r.live.insert(id, activity);
        id
    }

    /// Forgets a closed connection.
    pub(crate) fn remove(&self, id: u64) {
        self.lock().live.remove(&id);
    }

    /// Closes, gracefully, every connection idle for `idle` or longer, and wakes those whose
    /// HTTP/1 header read deadline passed (hyper then answers 408 and closes).
    pub(crate) fn close_idle(&self, idle: Duration) {
        for a in self.lock().live.values() {
            crate::header_timer::fire_if_passed(a);
            if !a.is_signalled() && a.idle_for() >= idle {
                tracing::debug!("idle timeout: closing a connection");
                a.close_gracefully();
            }
        }
    }

    /// Asks every connection to finish its in-flight requests and close.
    pub(crate) fn close_all_gracefully(&self) {
        for a in self.lock().live.values() {
            a.close_gracefully();
        }
    }

    /// The connection idle longest (no request in flight, not already told to close), with
    /// how long it has been idle: the one to shed at the connection limit.
    pub(crate) fn oldest_idle(&self) -> Option<(Duration, Arc<Activity>)> {
        self.lock()
            .live
            .values()
            .filter(|a| !a.is_signalled() && a.in_flight.load(Ordering::Acquire) == 0)
            .map(|a| (a.idle_for(), a))
            .max_by_key(|(idle, _)| *idle)
            .map(|(idle, a)| (idle, Arc::clone(a)))
    }

    /// Closes every connection now.
    pub(crate) fn close_all_now(&self) {
        for a in self.lock().live.values() {
            a.close_now();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// An IO that records activity on every successful read and write.
    pub(crate) struct TrackedIo<T> {
        #[pin]
        inner: T,
        activity: Arc<Activity>,
        // Whether the next byte read begins a line (for the fragment scan).
        at_line_start: bool,
        // Whether reads are scanned for request-target fragments (not for opaque bytes).
        scan: bool,
    }
}

impl<T> TrackedIo<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>) -> Self {
        activity.touch();
        Self {
            inner,
            activity,
            at_line_start: true,
            scan: true,
        }
    }

    /// An IO carrying opaque bytes: activity is recorded, nothing is scanned.
    pub(crate) fn opaque(inner: T, activity: Arc<Activity>) -> Self {
        Self {
            scan: false,
            ..Self::new(inner, activity)
        }
    }

    /// Stops the fragment scan (the connection turned out not to be HTTP).
    pub(crate) fn stop_scanning(&mut self) {
        self.scan = false;
    }
}

impl<T: AsyncRead> AsyncRead for TrackedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
            if !*this.scan {
                return res;
            }
            let read = &buf.filled()[before..];
            this.activity.fragments.scan(read, *this.at_line_start);
            *this.at_line_start = read.last() == Some(&b'\n');
        }
        res
    }
}

impl<T: AsyncWrite> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        res
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    // Passed through, so hyper queues body chunks and writes them with the head in one writev
    // instead of copying them into a flat buffer first.
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_time_counts_only_without_requests_in_flight() {
        let a = Activity::new();
        a.touch();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let guard = a.begin();
        assert_eq!(
            a.idle_for(),
            Duration::ZERO,
            "a request in flight is never idle"
        );
        drop(guard);
        assert!(
            a.idle_for() < Duration::from_millis(5),
            "finishing a request is activity"
        );
    }

    /// A connection future that counts graceful shutdowns and ends when told to by `done`.
    struct Fake {
        graceful: usize,
        done: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Future for Fake {
        type Output = Result<(), ()>;
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
            if self.done.load(Ordering::Acquire) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
    }

    impl GracefulShutdown for Fake {
        fn graceful_shutdown(mut self: Pin<&mut Self>) {
            self.graceful += 1;
        }
    }

    #[tokio::test]
    async fn signals_reach_the_connection_task_once_each() {
        let conns = Arc::new(Connections::default());
        let (a, b) = (Activity::new(), Activity::new());
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ia = conns.insert(a.clone());
        conns.insert(b.clone());
        let (fa, fb) = (
            Fake {
                graceful: 0,
                done: done.clone(),
            },
            Fake {
                graceful: 0,
                done: Arc::new(Default::default()),
            },
        );
        let mut sa = Box::pin(Supervised::new(fa, a.clone()));
        let sb = tokio::spawn(Supervised::new(fb, b.clone()));
        // Idle: `a` has a request in flight; `b` has been silent for 30 ms.
        std::thread::sleep(Duration::from_millis(30));
        let in_flight = a.begin();
        conns.close_idle(Duration::from_millis(20));
        drop(in_flight);
        assert!(!a.is_signalled() && b.is_signalled());
        assert!(futures_util::poll!(sa.as_mut()).is_pending());
        assert_eq!(sa.as_mut().project().conn.graceful, 0);
        // Drain: everyone is told once, however often the signal repeats.
        conns.close_all_gracefully();
        conns.close_all_gracefully();
        assert!(futures_util::poll!(sa.as_mut()).is_pending());
        assert!(futures_util::poll!(sa.as_mut()).is_pending());
        assert_eq!(sa.as_mut().project().conn.graceful, 1);
        // The deadline: a waiting task is woken and ends.
        conns.close_all_now();
        assert!(matches!(sb.await.unwrap(), Ended::Forced));
        done.store(true, Ordering::Release);
        assert!(matches!(sa.await, Ended::Forced), "force wins over done");
        conns.remove(ia);
        assert_eq!(conns.lock().live.len(), 1);
    }
}
