//! The access-log writers: one task per destination (a file, or standard output), fed by a
//! bounded channel. The data path only `try_send`s a finished record; when the writer falls
//! behind, the record is dropped and counted (`mesh_access_log_dropped`), never waited for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use mesh_core::{AccessLog, AccessLogFormat, ACCESS_LOG_STDOUT};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::record::Record;

/// Records a writer may have queued before new ones are dropped.
const QUEUE: usize = 8192;
/// Records taken off the queue at once.
const BATCH: usize = 256;
/// Formatted lines written at once when this many bytes are waiting...
const FLUSH_BYTES: usize = 64 * 1024;
/// ...or when the first of them has waited this long.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// A line to write: the record and its format.
type Entry = (AccessLogFormat, Arc<Record>);

/// One configured access log, as the data path holds it: a format and its writer's queue.
#[derive(Clone, Debug)]
pub(crate) struct Sink {
    format: AccessLogFormat,
    queue: mpsc::Sender<Entry>,
    dropped: Counter,
}

impl Sink {
    /// Queues `record`, or drops and counts it when the writer is behind (or gone).
    pub(crate) fn send(&self, record: Arc<Record>) {
        if self.queue.try_send((self.format, record)).is_err() {
            self.dropped.inc();
        }
    }
}

/// The sidecar's access-log writers, shared by every listener: the owner of their tasks, which
/// [`shutdown`](Self::shutdown) ends after writing what is queued. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct AccessLogWriters {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// One queue per destination path; touched only when config changes.
    queues: Mutex<HashMap<String, mpsc::Sender<Entry>>>,
    tasks: TaskTracker,
    stop: CancellationToken,
    dropped: Counter,
    written: Counter,
}

/// Why an access log could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("access log {path}: {source}")]
pub struct AccessLogOpenError {
    /// The destination.
    pub path: String,
    /// Why it could not be opened.
    pub source: std::io::Error,
}

impl AccessLogWriters {
    /// Writers with their counters registered in `registry` (`mesh_access_log_lines` written,
    /// `mesh_access_log_dropped` dropped because a writer was behind).
    pub fn register(registry: &mut Registry) -> Self {
        let writers = Self::default();
        let reg = registry.sub_registry_with_prefix("mesh");
        reg.register(
            "access_log_lines",
            "Access-log lines written",
            writers.inner.written.clone(),
        );
        reg.register(
            "access_log_dropped",
            "Access-log lines dropped because the writer was behind",
            writers.inner.dropped.clone(),
        );
        writers
    }

    /// The sinks for `logs`, starting a writer for each destination not yet written to. Must
    /// run inside a tokio runtime. A file that cannot be opened refuses the whole list.
    pub(crate) fn sinks(&self, logs: &[AccessLog]) -> Result<Vec<Sink>, AccessLogOpenError> {
        let mut queues = self
            .inner
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut sinks = Vec::with_capacity(logs.len());
        for log in logs {
            let queue = match queues.get(&log.path) {
                Some(q) => q.clone(),
                None => {
                    let out = open(&log.path).map_err(|source| AccessLogOpenError {
                        path: log.path.clone(),
                        source,
                    })?;
                    let (tx, rx) = mpsc::channel(QUEUE);
                    self.inner.tasks.spawn(write_lines(
                        rx,
                        out,
                        self.inner.stop.clone(),
                        self.inner.written.clone(),
                        log.path.clone(),
                    ));
                    queues.insert(log.path.clone(), tx.clone());
                    tx
                }
            };
            sinks.push(Sink {
                format: log.format,
                queue,
                dropped: self.inner.dropped.clone(),
            });
        }
        Ok(sinks)
    }

    /// Lines dropped so far because a writer was behind.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.get()
    }

    /// Stops every writer once it has written what is queued, and waits for them.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

/// Standard output or error, or a file opened for appending (created if missing).
fn open(path: &str) -> std::io::Result<Box<dyn AsyncWrite + Send + Unpin>> {
    Ok(match path {
        ACCESS_LOG_STDOUT => Box::new(tokio::io::stdout()),
        "/dev/stderr" => Box::new(tokio::io::stderr()),
        _ => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            Box::new(tokio::fs::File::from_std(file))
        }
    })
}

/// One destination's writer: formats queued records as they come and writes them in chunks, as
/// Envoy flushes its access logs on an interval. A write of tokio's file or stdout is a trip to
/// the blocking thread pool; one per line cost more than the line itself (the chain benchmark
/// measured it), so lines are written once [`FLUSH_BYTES`] are waiting or [`FLUSH_EVERY`] after
/// the first of them, and at shutdown.
async fn write_lines(
    mut rx: mpsc::Receiver<Entry>,
    mut out: Box<dyn AsyncWrite + Send + Unpin>,
    stop: CancellationToken,
    written: Counter,
    path: String,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut text = String::new();
    let mut flush_at = tokio::time::Instant::now();
    loop {
        let (last, due) = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => (n == 0, false),
            () = tokio::time::sleep_until(flush_at), if !text.is_empty() => (false, true),
            () = stop.cancelled() => {
                // Take what is queued, refuse the rest, write it and end.
                rx.close();
                while let Ok(e) = rx.try_recv() {
                    batch.push(e);
                }
                (true, true)
            }
        };
        if text.is_empty() && !batch.is_empty() {
            flush_at = tokio::time::Instant::now() + FLUSH_EVERY;
        }
        for (format, record) in batch.drain(..) {
            record.write(format, &mut text);
            written.inc();
        }
        if !text.is_empty() && (due || last || text.len() >= FLUSH_BYTES) {
            let wrote = out.write_all(text.as_bytes()).await;
            let flushed = out.flush().await;
            if let Err(e) = wrote.and(flushed) {
                tracing::warn!(%path, error = %e, "access log write failed");
            }
            text.clear();
        }
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that falls behind costs a line, counted, never a wait.
    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (tx, mut rx) = mpsc::channel(1);
        let sink = Sink {
            format: AccessLogFormat::Json,
            queue: tx,
            dropped: Counter::default(),
        };
        let record = Arc::new(super::super::record::tests::record());
        sink.send(Arc::clone(&record));
        sink.send(Arc::clone(&record));
        assert_eq!(sink.dropped.get(), 1);
        assert!(rx.try_recv().is_ok());
        drop(rx);
        sink.send(record);
        assert_eq!(sink.dropped.get(), 2, "a gone writer drops too");
    }

    /// Shutdown writes what is queued before the writer ends.
    #[tokio::test]
    async fn shutdown_writes_what_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log").display().to_string();
        let writers = AccessLogWriters::default();
        let sinks = writers
            .sinks(&[AccessLog::new(path.clone(), AccessLogFormat::Text)])
            .unwrap();
        for _ in 0..3 {
            sinks[0].send(Arc::new(super::super::record::tests::record()));
        }
        writers.shutdown().await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert_eq!(writers.dropped(), 0);
    }
}
