//! The exporter's own runtime: one thread with a current-thread tokio runtime, on which the OTLP
//! exporter's gRPC channel (tonic's connection and buffer tasks) lives.
//!
//! Without it, the channel would live on the application's runtime, and turning spans into
//! protobuf, encoding and sending them (three quarters of what a sampled span costs, by
//! callgrind) would run on the same worker threads that serve requests. On its own thread, a
//! slow or dead collector and a burst of exports cost the data path nothing but the CPU the OS
//! gives that thread; and `OtlpTracing::start` works outside any runtime.

use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// The export thread: runs until [`stop`](Self::stop) or drop.
#[derive(Debug)]
pub(crate) struct ExportRuntime {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ExportRuntime {
    /// Starts the thread and builds `T` on its runtime with `build` (the exporter, whose gRPC
    /// channel spawns its tasks there).
    pub(crate) fn start<T, E>(
        build: impl FnOnce() -> Result<T, E> + Send + 'static,
    ) -> Result<(Self, T), StartError<E>>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        let (built_tx, built_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mesh-otlp-export".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = built_tx.send(Err(StartError::Runtime(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    let _ = built_tx.send(build().map_err(StartError::Build));
                    // Spawned tasks (the channel's) run while this waits.
                    let _ = stop_rx.await;
                });
            })
            .map_err(StartError::Runtime)?;
        let built = built_rx
            .recv()
            .map_err(|_| StartError::Runtime(std::io::Error::other("export thread ended")))??;
        Ok((
            Self {
                stop: Some(stop_tx),
                thread: Some(thread),
            },
            built,
        ))
    }

    /// Stops the runtime (its tasks are dropped) and waits for the thread to end.
    pub(crate) fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ExportRuntime {
    fn drop(&mut self) {
        // Signal only: joining here could block whoever drops the last handle.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Why the export thread could not start.
#[derive(Debug)]
pub(crate) enum StartError<E> {
    /// The thread or its runtime could not be created.
    Runtime(std::io::Error),
    /// `build` failed.
    Build(E),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Tasks spawned while building run on the export thread, outside any caller's runtime.
    #[test]
    fn builds_on_its_own_runtime_and_stops() {
        let (rt, name) = ExportRuntime::start(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            tokio::spawn(async move {
                tx.send(std::thread::current().name().map(str::to_owned))
                    .unwrap();
            });
            Ok::<_, ()>(rx)
        })
        .unwrap();
        let ran_on = name
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        assert_eq!(ran_on.as_deref(), Some("mesh-otlp-export"));
        rt.stop();
        let failed = ExportRuntime::start(|| Err::<(), _>("no"));
        assert!(matches!(failed, Err(StartError::Build("no"))));
    }
}
