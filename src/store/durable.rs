//! Group commit: an `ok` means the write is on disk, at a cost shared by all concurrent writers.
//!
//! A writer applies its change to sled (in memory), then awaits [`GroupCommit::commit`]. One
//! flusher task collects every waiter that has arrived, runs one `sled::Db::flush` and then an
//! `fdatasync` of sled's `db` file through a handle of our own (sled 0.34 makes its log stable
//! with `sync_file_range`, which does not flush the disk's cache; see sled issue #1452), and
//! only then wakes them all. Writers that arrive during a flush form the next batch. This is
//! what Redis does for `appendfsync always`, and why 256 concurrent writers cost about as many
//! syncs as 8.
//!
//! In relaxed mode `commit` returns at once and the flusher runs every `relaxed_flush_ms`.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// How writes are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// Acknowledge after the group-commit flush and fsync (the default).
    Durable,
    /// Acknowledge at once; flush every `relaxed_flush_ms`.
    Relaxed,
}

/// A flush or fsync failed: the writes waiting on it were not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("flushing the database failed: {0}")]
pub struct FlushError(pub Arc<str>);

type Waiter = oneshot::Sender<Result<(), FlushError>>;

/// Counters a benchmark or an operator can read.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Flush + fsync rounds completed.
    pub flushes: AtomicU64,
    /// Commits acknowledged by those rounds.
    pub commits: AtomicU64,
    /// Total microseconds spent in flush + fsync.
    pub flush_micros: AtomicU64,
}

/// The shared flusher. Cheap to call from any number of tasks.
pub struct GroupCommit {
    mode: DurabilityMode,
    waiters: mpsc::UnboundedSender<Waiter>,
    flusher: Flusher,
    /// Stops the flusher task (which holds a handle on the database) at close.
    stop: tokio_util::sync::CancellationToken,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What runs one flush round; cloned into blocking tasks.
#[derive(Clone)]
struct Flusher {
    db: sled::Db,
    db_file: Arc<File>,
    injected_failures: Arc<AtomicU32>,
    stats: Arc<FlushStats>,
}

impl Flusher {
    fn flush_blocking(&self) -> Result<(), FlushError> {
        let started = std::time::Instant::now();
        if self
            .injected_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(FlushError("injected failure (test)".into()));
        }
        self.db
            .flush()
            .map_err(|e| FlushError(e.to_string().into()))?;
        self.db_file
            .sync_data()
            .map_err(|e| FlushError(e.to_string().into()))?;
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .flush_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn flush(&self) -> Result<(), FlushError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.flush_blocking())
            .await
            .unwrap_or_else(|e| Err(FlushError(format!("flush task failed: {e}").into())))
    }
}

impl GroupCommit {
    /// Starts the flusher task. Must be called inside a tokio runtime.
    pub fn start(
        db: sled::Db,
        db_file: File,
        mode: DurabilityMode,
        relaxed_flush: Duration,
    ) -> Self {
        let flusher = Flusher {
            db,
            db_file: Arc::new(db_file),
            injected_failures: Arc::default(),
            stats: Arc::default(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = match mode {
            DurabilityMode::Durable => {
                tokio::spawn(run_group_commit(flusher.clone(), rx, stop.clone()))
            }
            DurabilityMode::Relaxed => {
                tokio::spawn(run_periodic(flusher.clone(), relaxed_flush, stop.clone()))
            }
        };
        Self {
            mode,
            waiters: tx,
            flusher,
            stop,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// Flushes a last time and stops the flusher task, so that once the store is dropped
    /// the database is closed (and its lock released) at once.
    pub async fn close(&self) -> Result<(), FlushError> {
        let result = self.flush_now().await;
        self.stop.cancel();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        result
    }

    /// Returns once every write applied before the call is on disk (durable mode), or at
    /// once (relaxed mode).
    pub async fn commit(&self) -> Result<(), FlushError> {
        if self.mode == DurabilityMode::Relaxed {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.waiters
            .send(tx)
            .map_err(|_| FlushError("the flusher has stopped".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(FlushError("the flusher has stopped".into())))
    }

    /// Flushes now, whatever the mode: used at shutdown.
    pub async fn flush_now(&self) -> Result<(), FlushError> {
        self.flusher.flush().await
    }

    /// Makes the next `n` flush rounds fail, as a full or broken disk would. For tests of the
    /// `500 storage failure` path; nothing in the server calls it.
    pub fn inject_flush_failures(&self, n: u32) {
        self.flusher.injected_failures.store(n, Ordering::SeqCst);
    }

    /// Flush counters.
    pub fn stats(&self) -> &FlushStats {
        &self.flusher.stats
    }

    /// The acknowledgement mode.
    pub fn mode(&self) -> DurabilityMode {
        self.mode
    }
}

async fn run_group_commit(
    flusher: Flusher,
    mut rx: mpsc::UnboundedReceiver<Waiter>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut batch = Vec::new();
    loop {
        let first = tokio::select! {
            first = rx.recv() => match first {
                Some(first) => first,
                None => return,
            },
            _ = stop.cancelled() => return,
        };
        batch.push(first);
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let result = flusher.flush().await;
        if let Err(e) = &result {
            tracing::error!(error = %e, waiters = batch.len(), "flush failed; writes not acknowledged");
        }
        flusher
            .stats
            .commits
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for waiter in batch.drain(..) {
            // A waiter whose connection went away no longer listens; that is fine.
            let _ = waiter.send(result.clone());
        }
    }
}

/// Flushes every `every` until the store is closed.
async fn run_periodic(
    flusher: Flusher,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = flusher.flush().await {
            tracing::error!(error = %e, "periodic flush failed (relaxed mode)");
        }
    }
}
