//! Group commit: an `ok` means the write is on disk, at a cost shared by all concurrent writers.
//!
//! A writer applies its change with [`GroupCommit::apply`] (to sled in memory, and to the
//! write-ahead log's buffer, see [`super::wal`]), then awaits [`GroupCommit::commit`]. One
//! flusher task collects every waiter that has arrived, writes the buffered log records to the
//! current segment with one `write` and one `fdatasync`, and only then wakes them all. Writers
//! that arrive during a sync form the next batch. This is what Redis does for
//! `appendfsync always`, and why 256 concurrent writers cost about as many syncs as 8.
//!
//! Every `checkpoint_ms` the flusher starts a checkpoint in the background: it switches to a
//! new segment, flushes sled and `fdatasync`s sled's `db` file through a handle of our own
//! (sled 0.34 makes its own log stable with `sync_file_range` only; sled issue #1452), then
//! deletes the segments the checkpoint covers. A failed log write is answered `500` and its
//! records are written again by the next round, into a fresh segment, so a torn record can
//! only ever be the tail of a segment.
//!
//! In relaxed mode `commit` returns at once and the flusher writes and syncs the log every
//! `relaxed_flush_ms`.

use super::wal::{self, WriteBatch};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How writes are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// Acknowledge after the group-commit log write and fdatasync (the default).
    Durable,
    /// Acknowledge at once; write and sync the log every `relaxed_flush_ms`.
    Relaxed,
}

/// A log write or sync failed: the writes waiting on it were not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("writing the database log failed: {0}")]
pub struct FlushError(pub Arc<str>);

impl FlushError {
    fn from_display(e: impl std::fmt::Display) -> Self {
        FlushError(e.to_string().into())
    }
}

type Waiter = oneshot::Sender<Result<(), FlushError>>;

/// How often the flusher yields to other tasks before closing a round (see `run_flusher`).
const GATHER_YIELDS: usize = 2;

/// Counters a benchmark or an operator can read.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Log write + fdatasync rounds completed.
    pub flushes: AtomicU64,
    /// Commits acknowledged by those rounds.
    pub commits: AtomicU64,
    /// Total microseconds spent in log write + fdatasync.
    pub flush_micros: AtomicU64,
    /// Checkpoints completed (sled flushed, old segments deleted).
    pub checkpoints: AtomicU64,
}

/// Timing settings.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Relaxed mode: how often the log is written and synced.
    pub relaxed_flush: Duration,
    /// How often sled is checkpointed and old log segments deleted.
    pub checkpoint: Duration,
}

/// The current log segment.
struct Segment {
    number: u64,
    file: File,
    len: u64,
}

/// Everything the flusher and the writers share.
struct Log {
    /// Encoded records applied to sled but not yet written to the log, in apply order.
    pending: Mutex<Vec<u8>>,
    segment: Mutex<Segment>,
    dir: PathBuf,
    db: sled::Db,
    db_file: File,
    injected_failures: AtomicU32,
    checkpointing: AtomicBool,
    stats: FlushStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, so a poisoned lock is usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Log {
    /// Writes and syncs everything pending. Runs on a blocking thread, one round at a time.
    fn flush_round(&self) -> Result<(), FlushError> {
        let bytes = std::mem::take(&mut *lock(&self.pending));
        if bytes.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let result = self.write(&bytes);
        if let Err(e) = &result {
            // Not acknowledged; write the same records again next round, ahead of newer ones,
            // into a fresh segment so that a torn record stays the last of its file.
            let mut pending = lock(&self.pending);
            let newer = std::mem::replace(&mut *pending, bytes);
            pending.extend_from_slice(&newer);
            drop(pending);
            if let Err(rotate) = self.rotate() {
                tracing::error!(error = %rotate, "could not start a new log segment");
            }
            tracing::error!(error = %e, "log write failed; writes not acknowledged");
            return result;
        }
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        let elapsed = started.elapsed();
        self.stats
            .flush_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        metrics::histogram!("certline_flush_seconds").record(elapsed.as_secs_f64());
        Ok(())
    }

    fn write(&self, bytes: &[u8]) -> Result<(), FlushError> {
        if self
            .injected_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(FlushError("injected failure (test)".into()));
        }
        let mut segment = lock(&self.segment);
        let mut block = wal::block(segment.number, bytes);
        if segment.len + block.len() as u64 > wal::SEGMENT_BYTES {
            // Full: continue in the next segment (a spare one, usually: a rename).
            let number = segment.number + 1;
            let file = wal::create_segment(&self.dir, number).map_err(FlushError::from_display)?;
            *segment = Segment {
                number,
                file,
                len: 0,
            };
            block = wal::block(number, bytes);
            self.prepare_spare();
        }
        wal::write_durably(&segment.file, segment.len, &block).map_err(FlushError::from_display)?;
        segment.len += block.len() as u64;
        Ok(())
    }

    /// Switches to a new, empty segment; returns the number of the previous one.
    fn rotate(&self) -> std::io::Result<u64> {
        let mut segment = lock(&self.segment);
        let previous = segment.number;
        let file = wal::create_segment(&self.dir, previous + 1)?;
        *segment = Segment {
            number: previous + 1,
            file,
            len: 0,
        };
        drop(segment);
        self.prepare_spare();
        Ok(previous)
    }

    /// Prepares the next segment in the background.
    fn prepare_spare(&self) {
        let dir = self.dir.clone();
        std::thread::spawn(move || {
            if let Err(e) = wal::ensure_spare(&dir) {
                tracing::warn!(error = %e, "could not prepare a spare log segment");
            }
        });
    }

    /// Makes sled hold everything the log holds, then deletes the covered segments. With an
    /// empty segment there is nothing to cover, unless `always` (shutdown) asks for a flush.
    fn checkpoint(&self, always: bool) -> Result<(), FlushError> {
        if lock(&self.segment).len == 0 {
            if always {
                self.db.flush().map_err(FlushError::from_display)?;
                self.db_file.sync_data().map_err(FlushError::from_display)?;
            }
            return Ok(());
        }
        // Every record in a segment up to `covered` was applied to sled before it was
        // written, so before this rotation, so before the flush below begins.
        let covered = self.rotate().map_err(FlushError::from_display)?;
        self.db.flush().map_err(FlushError::from_display)?;
        self.db_file.sync_data().map_err(FlushError::from_display)?;
        let covered: Vec<_> = wal::segments(&self.dir)
            .map_err(FlushError::from_display)?
            .into_iter()
            .filter(|(number, _)| *number <= covered)
            .collect();
        wal::retire_segments(&self.dir, &covered).map_err(FlushError::from_display)?;
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The shared flusher. Cheap to call from any number of tasks.
pub struct GroupCommit {
    mode: DurabilityMode,
    waiters: mpsc::UnboundedSender<Waiter>,
    log: Arc<Log>,
    /// Stops the flusher task (which holds a handle on the database) at close.
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl GroupCommit {
    /// Starts the flusher over log segments in `dir`, the next one numbered `next_segment`.
    /// Must be called inside a tokio runtime.
    pub(super) fn start(
        db: sled::Db,
        db_file: File,
        dir: PathBuf,
        next_segment: u64,
        mode: DurabilityMode,
        timing: Timing,
    ) -> std::io::Result<Self> {
        let file = wal::create_segment(&dir, next_segment)?;
        wal::ensure_spare(&dir)?;
        let log = Arc::new(Log {
            pending: Mutex::new(Vec::new()),
            segment: Mutex::new(Segment {
                number: next_segment,
                file,
                len: 0,
            }),
            dir,
            db,
            db_file,
            injected_failures: AtomicU32::new(0),
            checkpointing: AtomicBool::new(false),
            stats: FlushStats::default(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_flusher(log.clone(), mode, timing, rx, stop.clone()));
        Ok(Self {
            mode,
            waiters: tx,
            log,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// Applies a batch to sled (atomically) and queues its log record, in one order for both.
    pub(super) fn apply(&self, batch: &WriteBatch) -> Result<(), sled::Error> {
        let mut pending = lock(&self.log.pending);
        batch.apply_to(&self.log.db)?;
        batch.encode_into(&mut pending);
        Ok(())
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

    /// Writes and syncs the log now, whatever the mode.
    pub async fn flush_now(&self) -> Result<(), FlushError> {
        let log = self.log.clone();
        run_blocking(move || log.flush_round()).await
    }

    /// Stops the flusher, writes what is pending and checkpoints, so that a clean shutdown
    /// leaves no log to replay and, once the store is dropped, the database is closed.
    pub async fn close(&self) -> Result<(), FlushError> {
        self.stop.cancel();
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let log = self.log.clone();
        run_blocking(move || {
            log.flush_round()?;
            while log.checkpointing.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            log.checkpoint(true)?;
            wal::mark_clean(&log.dir).map_err(FlushError::from_display)
        })
        .await
    }

    /// Makes the next `n` log writes fail, as a full or broken disk would. For tests of the
    /// `500 storage failure` path; nothing in the server calls it.
    pub fn inject_flush_failures(&self, n: u32) {
        self.log.injected_failures.store(n, Ordering::SeqCst);
    }

    /// Flush counters.
    pub fn stats(&self) -> &FlushStats {
        &self.log.stats
    }

    /// The acknowledgement mode.
    pub fn mode(&self) -> DurabilityMode {
        self.mode
    }
}

async fn run_blocking(
    f: impl FnOnce() -> Result<(), FlushError> + Send + 'static,
) -> Result<(), FlushError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(FlushError(format!("flush task failed: {e}").into())))
}

async fn run_flusher(
    log: Arc<Log>,
    mode: DurabilityMode,
    timing: Timing,
    mut rx: mpsc::UnboundedReceiver<Waiter>,
    stop: CancellationToken,
) {
    let period = match mode {
        DurabilityMode::Durable => timing.checkpoint,
        DurabilityMode::Relaxed => timing.relaxed_flush.min(timing.checkpoint),
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = Instant::now();
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            first = rx.recv() => match first {
                Some(first) => batch.push(first),
                None => return,
            },
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if !batch.is_empty() {
            // Let connection tasks that are ready run first, so that their writes join this
            // round instead of each starting a round of its own (with one writer, the yields
            // return at once).
            for _ in 0..GATHER_YIELDS {
                tokio::task::yield_now().await;
            }
        }
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let round = log.clone();
        let result = run_blocking(move || round.flush_round()).await;
        log.stats
            .commits
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for waiter in batch.drain(..) {
            // A waiter whose connection went away no longer listens; that is fine.
            let _ = waiter.send(result.clone());
        }
        if last_checkpoint.elapsed() >= timing.checkpoint
            && !log.checkpointing.swap(true, Ordering::SeqCst)
        {
            last_checkpoint = Instant::now();
            let log = log.clone();
            // In the background: acknowledgements go on while sled flushes.
            tokio::task::spawn_blocking(move || {
                if let Err(e) = log.checkpoint(false) {
                    tracing::error!(error = %e, "checkpoint failed; the log is kept and replayed at start");
                }
                log.checkpointing.store(false, Ordering::SeqCst);
            });
        }
    }
}
