//! Group commit: an `ok` means the write is on disk, at a cost shared by all concurrent writers;
//! and what happens when the disk refuses.
//!
//! # Commits
//!
//! A writer applies its change with [`GroupCommit::apply`] (to sled in memory, and to the
//! write-ahead log's buffer, see [`super::wal`]); every applied batch gets the next sequence
//! number. A caller then awaits [`GroupCommit::commit_since`]: it wakes the flusher task and
//! waits until the *settled* watermark reaches the last sequence number applied. The flusher
//! writes everything buffered to the current segment with one `write` and one `fdatasync` and
//! only then advances the watermark, waking every waiter at once. Writers that arrive during a
//! sync form the next round. This is what Redis does for `appendfsync always`, and why 256
//! concurrent writers cost about as many syncs as 8.
//!
//! Reads use the same wait ([`GroupCommit::mark`] before, `commit_since` after): a reply never
//! shows a change that is not on disk yet, the way Redis sends the replies of an event-loop
//! turn only after that turn's fsync. When nothing is in flight the wait is three atomic loads.
//!
//! Every `checkpoint_ms` the flusher starts a checkpoint in the background: it switches to a
//! new segment, flushes sled and `fdatasync`s sled's `db` file through a handle of our own
//! (sled 0.34 makes its own log stable with `sync_file_range` only; sled issue #1452), then
//! deletes the segments the checkpoint covers.
//!
//! In relaxed mode `commit_since` returns at once and the flusher writes and syncs the log
//! every `relaxed_flush`.
//!
//! # Failures
//!
//! * **A log write or sync fails** (a full disk, a broken one). Durable mode: every change not
//!   yet on disk is *undone* in memory (each apply kept the values it replaced), so nothing
//!   later served can show it; its requests get `500`; the sequence numbers it covered are
//!   recorded as lost, so a request that saw or made them answers `500` too. Relaxed mode: the
//!   changes were acknowledged already, so they stay and are written once the log works again.
//!   Either way the store stops taking writes (refused with the reason, without touching sled)
//!   and retries once a second ([`RETRY_INTERVAL`]): it overwrites the failed block's header so
//!   a crash can never replay it, starts a fresh segment with a spare behind it (room for the
//!   log again), and writes the undo as a record of its own (so that a copy of an undone change
//!   that sled wrote out by itself is reverted at replay too). One log line when writes stop,
//!   one when they resume.
//! * **Space runs low.** Once a second the flusher looks at the free space of the data
//!   directory's file system; below [`MIN_FREE_BYTES`] the store stops taking writes the same
//!   way, before sled itself meets a full disk, and resumes when there is room again. No
//!   checkpoint runs while writes are refused: the log holds everything meanwhile.
//! * **sled fails** (an insert, a flush, or the sync of its file). sled 0.34 refuses all
//!   further work after an I/O error, and a failed fsync may have dropped pages it believes
//!   written, so this cannot be mended in-process: the store turns *fatal* ([`Health`]), every
//!   request is answered `500`, and the server exits non-zero for its supervisor to restart
//!   it, which replays the log (see README, "Durability").

use super::audit_trail::AuditTrail;
use super::wal::{self, WriteBatch};
use crate::store::records::AuditEvent;
use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::{Notify, watch};
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

/// A change could not be made durable, or the store does not take writes now; the text says
/// why and what to do. Nothing it covers was acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct FlushError(pub Arc<str>);

impl FlushError {
    fn new(text: impl Into<Arc<str>>) -> Self {
        FlushError(text.into())
    }
}

/// How often a store that does not take writes tries again, and how often free space is
/// checked (Redis retries a failed append-only-file write on the same one-second beat).
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Below this much free space in the data directory the store stops taking writes: room for
/// two log segments, so that sled never meets a full disk (it cannot recover from that
/// in-process) and a checkpoint can still run.
pub const MIN_FREE_BYTES: u64 = 2 * wal::SEGMENT_BYTES;

/// How many lost ranges are remembered; a request waiting across more failures than this is
/// answered `500` to be safe.
const LOSSES_KEPT: usize = 64;

/// How often the flusher yields to other tasks before closing a round (see `run_flusher`).
const GATHER_YIELDS: usize = 2;

/// Counters a benchmark or an operator can read.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Log write + fdatasync rounds completed.
    pub flushes: AtomicU64,
    /// Batches made durable by those rounds.
    pub commits: AtomicU64,
    /// Total microseconds spent in log write + fdatasync.
    pub flush_micros: AtomicU64,
    /// Checkpoints completed (sled flushed, old segments deleted).
    pub checkpoints: AtomicU64,
    /// Storage operations that failed (log writes, recovery attempts, checkpoints).
    pub failures: AtomicU64,
}

/// Timing settings.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Relaxed mode: how often the log is written and synced.
    pub relaxed_flush: Duration,
    /// How often sled is checkpointed and old log segments deleted.
    pub checkpoint: Duration,
}

/// A point in the store's history, taken before a request reads or writes: everything up to
/// `settled` was on disk (or undone) then, and `losses` failures had happened. Opaque to the
/// layers above the store. `Mark::default()` is the start of history: what a backend that
/// commits every write before it returns (nothing to wait for) hands out.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mark {
    settled: u64,
    losses: u64,
}

/// The current log segment.
struct Segment {
    number: u64,
    file: File,
    len: u64,
    /// A write at `len` failed: part of a block may be there, to be overwritten before the
    /// log is used again.
    torn: bool,
}

impl Segment {
    /// Switches to a new, empty segment numbered one up; returns the previous number.
    fn advance(&mut self, dir: &std::path::Path) -> std::io::Result<u64> {
        let previous = self.number;
        let file = wal::create_segment(dir, previous + 1)?;
        *self = Segment {
            number: previous + 1,
            file,
            len: 0,
            torn: false,
        };
        Ok(previous)
    }
}

/// What has been applied but not yet written, in apply order.
#[derive(Default)]
struct Pending {
    /// Encoded log records.
    records: Vec<u8>,
    /// Each key changed and the value it had before (durable mode only), to undo a failed round.
    undo: Vec<(Vec<u8>, Option<sled::IVec>)>,
    /// How many audit events these records hold (staged in the trail, see
    /// [`super::audit_trail`]); they reach its file and the log once their round is on disk.
    audit: usize,
    /// The sequence number of the last batch applied.
    last: u64,
    /// While an online backup runs: a copy of every record applied ([`Tap`]).
    tap: Option<Tap>,
}

/// A copy of every log record applied while an online backup runs (see
/// [`super::backup`]): the backup is a fuzzy export plus these records, which restore
/// replays over it. Capped at [`Tap::LIMIT`] bytes: past that the backup fails (retry)
/// rather than hold an unbounded amount of memory.
#[derive(Debug, Default)]
pub(super) struct Tap {
    /// Encoded log records, in apply order (the write-ahead log's record format).
    pub records: Vec<u8>,
    /// How many records.
    pub count: u64,
    /// More than [`Tap::LIMIT`] bytes were applied: `records` is incomplete.
    pub overflowed: bool,
}

/// One flush round: what it took from [`Pending`].
struct Round {
    records: Vec<u8>,
    undo: Vec<(Vec<u8>, Option<sled::IVec>)>,
    audit: usize,
    last: u64,
}

/// Which sequence numbers are on disk, and which were lost.
struct Progress {
    /// The last sequence number applied (written under the pending lock).
    applied: AtomicU64,
    /// Every sequence number up to this one is on disk or was undone.
    settled: AtomicU64,
    /// The same, for waiters.
    settled_tx: watch::Sender<u64>,
    /// How many undos have happened.
    losses: AtomicU64,
    /// The last [`LOSSES_KEPT`] undone ranges: `(after, upto]`.
    lost: Mutex<VecDeque<(u64, u64)>>,
}

impl Progress {
    fn settle(&self, upto: u64) {
        self.settled.store(upto, Ordering::Release);
        self.settled_tx.send_replace(upto);
    }

    /// Did a change in `(after, upto]` get undone since `losses_then` losses?
    fn lost_between(&self, losses_then: u64, after: u64, upto: u64) -> bool {
        let losses = self.losses.load(Ordering::Acquire);
        if losses == losses_then {
            return false;
        }
        let lost = lock(&self.lost);
        if losses - losses_then > lost.len() as u64 {
            return true; // forgotten: assume the worst
        }
        lost.iter().any(|&(from, to)| from < upto && to > after)
    }
}

/// Whether the store takes writes.
struct Health {
    /// New changes are accepted.
    writable: AtomicBool,
    /// A log write failed and the log has not been mended yet (see [`Log::recover`]).
    log_broken: AtomicBool,
    /// sled failed: nothing more can be stored in this process.
    fatal: AtomicBool,
    /// The store was closed (shutdown): nothing more is written.
    closed: AtomicBool,
    /// Why writes are refused, while they are.
    reason: Mutex<Option<FlushError>>,
    /// Cancelled when the store turns fatal; the server exits.
    fatal_token: CancellationToken,
}

impl Health {
    /// Failed for good, or closed: no commit can succeed any more.
    fn finished(&self) -> bool {
        self.fatal.load(Ordering::Acquire) || self.closed.load(Ordering::Acquire)
    }

    fn refusal(&self) -> FlushError {
        lock(&self.reason)
            .clone()
            .unwrap_or_else(|| FlushError::new("the store does not take writes"))
    }
}

/// Everything the flusher and the writers share.
struct Log {
    pending: Mutex<Pending>,
    segment: Mutex<Segment>,
    /// Held by the store's read-check-write sequences; an undo takes it too, so that no writer
    /// decides on a value that is being undone.
    writers: Mutex<()>,
    /// One flush round, recovery or close at a time.
    rounds: Mutex<()>,
    /// The undo of lost changes, to be logged before the next write (durable mode).
    compensation: Mutex<Vec<u8>>,
    kick: Notify,
    /// The audit trail: events wait there for their round, then go to its file.
    trail: Arc<AuditTrail>,
    /// To the thread that writes the audit log lines, in order (see [`AuditLines`]).
    audit_lines: Mutex<Option<std::sync::mpsc::Sender<Vec<AuditEvent>>>>,
    progress: Progress,
    health: Health,
    mode: DurabilityMode,
    dir: PathBuf,
    db: sled::Db,
    db_file: File,
    #[cfg(feature = "fault-injection")]
    injected_failures: std::sync::atomic::AtomicU32,
    checkpointing: AtomicBool,
    /// The last checkpoint failed: the next one is tried after [`RETRY_INTERVAL`].
    checkpoint_failed: AtomicBool,
    stats: FlushStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, so a poisoned lock is usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Log {
    /// Writes and syncs everything pending. Runs on a blocking thread.
    fn flush_round(&self) -> Result<(), FlushError> {
        let _round = lock(&self.rounds);
        if self.health.log_broken.load(Ordering::Acquire) {
            // Durable mode undid everything; relaxed mode keeps it for after recovery.
            return Err(self.health.refusal());
        }
        let mut pending = lock(&self.pending);
        if pending.records.is_empty() {
            return Ok(());
        }
        let round = Round {
            records: std::mem::take(&mut pending.records),
            undo: std::mem::take(&mut pending.undo),
            audit: std::mem::take(&mut pending.audit),
            last: pending.last,
        };
        drop(pending);
        let started = Instant::now();
        if let Err(e) = self.write_block(&round.records) {
            return Err(self.round_failed(round, e));
        }
        let elapsed = started.elapsed();
        self.audit_committed(round.audit);
        let batches = round
            .last
            .saturating_sub(self.progress.settled.load(Ordering::Acquire));
        self.progress.settle(round.last);
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        self.stats.commits.fetch_add(batches, Ordering::Relaxed);
        self.stats
            .flush_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        metrics::histogram!("certline_flush_seconds").record(elapsed.as_secs_f64());
        Ok(())
    }

    /// The audit events of `n` more events' rounds are on disk: to the trail's file, then
    /// their log lines, which say what was stored; written by their own thread, so that
    /// formatting them does not delay the next round. Called before the round is settled,
    /// so an acknowledged change's event is in the file (or, if that append failed, still
    /// staged and readable) when its writer hears of it.
    fn audit_committed(&self, n: usize) {
        let events = self.trail.committed(n);
        self.audit_lines_out(events);
    }

    fn audit_lines_out(&self, events: Vec<AuditEvent>) {
        if !events.is_empty()
            && let Some(lines) = lock(&self.audit_lines).as_ref()
        {
            let _ = lines.send(events);
        }
    }

    /// Appends one block holding `records` to the log and syncs it.
    fn write_block(&self, records: &[u8]) -> std::io::Result<()> {
        self.injected_failure()?;
        let mut segment = lock(&self.segment);
        let mut block = wal::block(segment.number, records);
        if segment.len + block.len() as u64 > wal::SEGMENT_BYTES {
            // Full: continue in the next segment (a spare one, usually: a rename).
            segment.advance(&self.dir)?;
            block = wal::block(segment.number, records);
            self.prepare_spare();
        }
        if let Err(e) = wal::write_durably(&segment.file, segment.len, &block) {
            segment.torn = true;
            return Err(e);
        }
        segment.len += block.len() as u64;
        Ok(())
    }

    #[cfg(feature = "fault-injection")]
    fn injected_failure(&self) -> std::io::Result<()> {
        match self
            .injected_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        {
            Ok(_) => Err(std::io::Error::other("injected failure (test)")),
            Err(_) => Ok(()),
        }
    }

    #[cfg(not(feature = "fault-injection"))]
    fn injected_failure(&self) -> std::io::Result<()> {
        Ok(())
    }

    /// A round's log write failed: stop taking writes, and undo (durable) or keep (relaxed)
    /// what it held.
    fn round_failed(&self, round: Round, e: std::io::Error) -> FlushError {
        let error = FlushError::new(format!(
            "writing the write-ahead log in {} failed: {e}; if the disk is full, free space \
             there: certline retries every second and takes writes again once it can",
            self.dir.display()
        ));
        self.count_failure("log_write");
        match self.mode {
            DurabilityMode::Durable => self.undo(round, &error),
            DurabilityMode::Relaxed => {
                // Acknowledged already: written again, ahead of newer records, after recovery.
                let mut pending = lock(&self.pending);
                self.health.log_broken.store(true, Ordering::Release);
                self.stop_writes(&error);
                let newer = std::mem::replace(&mut pending.records, round.records);
                pending.records.extend_from_slice(&newer);
                // Their audit events stay staged, first in line.
                pending.audit += round.audit;
            }
        }
        // Best effort now; recovery insists.
        let _ = self.mend_torn_block();
        error
    }

    /// Undoes every change not on disk (the failed round's and any applied since), newest
    /// first, and records them as lost.
    fn undo(&self, round: Round, error: &FlushError) {
        let _writers = lock(&self.writers);
        let mut pending = lock(&self.pending);
        self.health.log_broken.store(true, Ordering::Release);
        self.stop_writes(error);
        let newer = std::mem::take(&mut pending.undo);
        let mut compensation = WriteBatch::default();
        let mut undone = 0usize;
        for (key, previous) in newer.into_iter().rev().chain(round.undo.into_iter().rev()) {
            let restored = match &previous {
                Some(value) => self.db.insert(key.as_slice(), value.clone()).map(drop),
                None => self.db.remove(key.as_slice()).map(drop),
            };
            if let Err(e) = restored {
                self.turn_fatal(&format!("undoing a change in the database failed: {e}"));
                return;
            }
            match previous {
                Some(value) => compensation.insert(key, value.to_vec()),
                None => compensation.remove(key),
            }
            undone += 1;
        }
        pending.records.clear();
        pending.audit = 0;
        self.trail.discard_undurable();
        let after = self.progress.settled.load(Ordering::Acquire);
        let upto = pending.last;
        compensation.encode_into(&mut lock(&self.compensation));
        {
            let mut lost = lock(&self.progress.lost);
            if lost.len() == LOSSES_KEPT {
                lost.pop_front();
            }
            lost.push_back((after, upto));
        }
        self.progress.losses.fetch_add(1, Ordering::AcqRel);
        self.progress.settle(upto);
        drop(pending);
        tracing::warn!(
            batches = upto - after,
            keys = undone,
            "undid the changes the failed log write held; their requests were answered 500"
        );
    }

    /// Refuses writes from now on, logging the reason once.
    fn stop_writes(&self, error: &FlushError) {
        *lock(&self.health.reason) = Some(error.clone());
        if self.health.writable.swap(false, Ordering::AcqRel) {
            tracing::error!(error = %error, "the store stopped taking writes");
        }
    }

    /// sled failed: nothing more can be stored in this process. Logged once.
    fn turn_fatal(&self, what: &str) {
        let error = FlushError::new(format!(
            "{what}; the database refuses further work after an I/O error, so certline exits \
             for its supervisor to restart it (the restart replays the write-ahead log); if \
             the disk holding {} is full, free space there",
            self.dir.display()
        ));
        *lock(&self.health.reason) = Some(error.clone());
        self.health.writable.store(false, Ordering::Release);
        self.count_failure("database");
        if !self.health.fatal.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %error, "the store failed for good");
            self.health.fatal_token.cancel();
            // Wake every waiter; each then sees `fatal`.
            self.progress.settle(u64::MAX);
        }
    }

    fn count_failure(&self, stage: &'static str) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("certline_storage_failures_total", "stage" => stage).increment(1);
    }

    /// Overwrites the header of a block whose write failed, so that replay stops before it.
    fn mend_torn_block(&self) -> std::io::Result<()> {
        let mut segment = lock(&self.segment);
        if segment.torn {
            wal::write_durably(&segment.file, segment.len, &wal::NO_BLOCK)?;
            segment.torn = false;
        }
        Ok(())
    }

    /// Free space in the data directory's file system, if it is below the minimum.
    fn space_shortage(&self) -> Option<FlushError> {
        let stats = rustix::fs::statvfs(&self.dir).ok()?;
        let free = stats.f_bavail.saturating_mul(stats.f_frsize);
        (free < MIN_FREE_BYTES).then(|| {
            FlushError::new(format!(
                "only {} MiB free on the file system holding {}; certline takes writes again \
                 once {} MiB are free: free space there",
                free >> 20,
                self.dir.display(),
                MIN_FREE_BYTES >> 20
            ))
        })
    }

    /// Stops writes while space is short. Whatever is pending still goes to disk.
    fn check_space(&self) {
        if let Some(shortage) = self.space_shortage() {
            let _pending = lock(&self.pending);
            self.stop_writes(&shortage);
        }
    }

    /// Tries to take writes again (see the module docs): enough free space, and a log that
    /// works. Runs on a blocking thread.
    fn recover(&self) -> Result<(), FlushError> {
        let _round = lock(&self.rounds);
        if let Some(shortage) = self.space_shortage() {
            *lock(&self.health.reason) = Some(shortage.clone());
            return Err(shortage);
        }
        if self.health.log_broken.load(Ordering::Acquire) {
            self.mend_log()?;
        }
        *lock(&self.health.reason) = None;
        self.health.writable.store(true, Ordering::Release);
        tracing::info!("the store takes writes again");
        Ok(())
    }

    /// Makes a log whose write failed usable again.
    fn mend_log(&self) -> Result<(), FlushError> {
        let attempt = || -> std::io::Result<()> {
            self.injected_failure()?;
            self.mend_torn_block()?;
            // A spare first (the room check), then a fresh segment from it (a rename).
            wal::ensure_spare(&self.dir)?;
            self.rotate()?;
            let mut compensation = lock(&self.compensation);
            if !compensation.is_empty() {
                self.write_block(&compensation)?;
                compensation.clear();
            }
            Ok(())
        };
        if let Err(e) = attempt() {
            self.count_failure("recovery");
            let error = FlushError::new(format!(
                "the write-ahead log in {} is still not writable: {e}; free space there",
                self.dir.display()
            ));
            *lock(&self.health.reason) = Some(error.clone());
            return Err(error);
        }
        self.health.log_broken.store(false, Ordering::Release);
        Ok(())
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

    /// Switches to a new, empty segment; returns the number of the previous one.
    fn rotate(&self) -> std::io::Result<u64> {
        let previous = lock(&self.segment).advance(&self.dir)?;
        self.prepare_spare();
        Ok(previous)
    }

    /// Makes sled hold everything the log holds, then deletes the covered segments. With an
    /// empty segment there is nothing to cover, unless `always` (shutdown) asks for a flush.
    fn checkpoint(&self, always: bool) -> Result<(), FlushError> {
        let io = |e: std::io::Error| FlushError::new(format!("checkpoint: {e}"));
        if self.health.log_broken.load(Ordering::Acquire) {
            // The torn block must be mended before its segment can be left behind.
            return Err(self.health.refusal());
        }
        if lock(&self.segment).len == 0 {
            if always {
                self.sync_trail()?;
                self.sync_database()?;
            }
            return Ok(());
        }
        // Every record in a segment up to `covered` was applied to sled before it was
        // written, so before this rotation, so before the flush below begins. The rotation
        // waits for a round in progress, so that the audit events of every round written to
        // a covered segment are in the trail's file before it is synced.
        let covered = {
            let _round = lock(&self.rounds);
            self.rotate().map_err(io)?
        };
        self.sync_trail()?;
        self.sync_database()?;
        let covered: Vec<_> = wal::segments(&self.dir)
            .map_err(io)?
            .into_iter()
            .filter(|(number, _)| *number <= covered)
            .collect();
        wal::retire_segments(&self.dir, &covered).map_err(io)?;
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Makes the audit trail's file hold every event the log holds (before segments go).
    fn sync_trail(&self) -> Result<(), FlushError> {
        match self.trail.sync() {
            Ok(events) => {
                self.audit_lines_out(events);
                Ok(())
            }
            Err(e) => Err(FlushError::new(format!(
                "checkpoint: syncing the audit trail in {} failed: {e}",
                self.dir.display()
            ))),
        }
    }

    /// Flushes sled and syncs its file. A failure here is fatal (see the module docs).
    fn sync_database(&self) -> Result<(), FlushError> {
        let result = match self.db.flush() {
            Ok(_) => self
                .db_file
                .sync_data()
                .map_err(|e| format!("syncing the database file failed: {e}")),
            Err(e) => Err(format!("flushing the database failed: {e}")),
        };
        result.map_err(|what| {
            self.turn_fatal(&what);
            self.health.refusal()
        })
    }
}

/// The shared flusher. Cheap to call from any number of tasks.
pub struct GroupCommit {
    mode: DurabilityMode,
    log: Arc<Log>,
    /// Stops the flusher task (which holds a handle on the database) at close.
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The audit log writer, joined at close so that no line is lost at exit.
    audit_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The thread that writes audit log lines for the rounds that reached the disk.
struct AuditLines {
    sender: std::sync::mpsc::Sender<Vec<AuditEvent>>,
    thread: std::thread::JoinHandle<()>,
}

impl AuditLines {
    fn start() -> std::io::Result<Self> {
        let (sender, rounds) = std::sync::mpsc::channel::<Vec<AuditEvent>>();
        let thread = std::thread::Builder::new()
            .name("certline-audit".into())
            .spawn(move || {
                for round in rounds {
                    for event in &round {
                        tracing::info!(event = event.kind.name(), key = %event.key_id, ip = %event.ip, kind = ?event.kind, "audit");
                    }
                }
            })?;
        Ok(Self { sender, thread })
    }
}

impl GroupCommit {
    /// Starts the flusher over log segments in `dir`, the next one numbered `next_segment`.
    /// Must be called inside a tokio runtime.
    pub(super) fn start(
        db: sled::Db,
        db_file: File,
        dir: PathBuf,
        next_segment: u64,
        trail: Arc<AuditTrail>,
        mode: DurabilityMode,
        timing: Timing,
    ) -> std::io::Result<Self> {
        let file = wal::create_segment(&dir, next_segment)?;
        wal::ensure_spare(&dir)?;
        let audit_lines = AuditLines::start()?;
        let log = Arc::new(Log {
            pending: Mutex::new(Pending::default()),
            segment: Mutex::new(Segment {
                number: next_segment,
                file,
                len: 0,
                torn: false,
            }),
            writers: Mutex::new(()),
            rounds: Mutex::new(()),
            compensation: Mutex::new(Vec::new()),
            kick: Notify::new(),
            trail,
            audit_lines: Mutex::new(Some(audit_lines.sender)),
            progress: Progress {
                applied: AtomicU64::new(0),
                settled: AtomicU64::new(0),
                settled_tx: watch::Sender::new(0),
                losses: AtomicU64::new(0),
                lost: Mutex::new(VecDeque::new()),
            },
            health: Health {
                writable: AtomicBool::new(true),
                log_broken: AtomicBool::new(false),
                fatal: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                reason: Mutex::new(None),
                fatal_token: CancellationToken::new(),
            },
            mode,
            dir,
            db,
            db_file,
            #[cfg(feature = "fault-injection")]
            injected_failures: std::sync::atomic::AtomicU32::new(0),
            checkpointing: AtomicBool::new(false),
            checkpoint_failed: AtomicBool::new(false),
            stats: FlushStats::default(),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_flusher(log.clone(), timing, stop.clone()));
        Ok(Self {
            mode,
            log,
            stop,
            task: Mutex::new(Some(task)),
            audit_thread: Mutex::new(Some(audit_lines.thread)),
        })
    }

    /// The lock the store's read-check-write sequences hold (see [`Log::writers`]).
    pub(super) fn writers(&self) -> MutexGuard<'_, ()> {
        lock(&self.log.writers)
    }

    /// Applies a batch to sled and queues its log record, in one order for both. Refused,
    /// without touching sled, while the store does not take writes.
    pub(super) fn apply(&self, mut batch: WriteBatch) -> Result<(), FlushError> {
        let log = &*self.log;
        let mut pending = lock(&log.pending);
        // Checked under the lock: an undo stops writes under it too.
        if !log.health.writable.load(Ordering::Acquire) {
            return Err(log.health.refusal());
        }
        // Numbered under the lock: sequence order is log order.
        batch.number_audit_events(|| log.trail.next_seq());
        let start = pending.records.len();
        batch.encode_into(&mut pending.records);
        let Pending { records, tap, .. } = &mut *pending;
        if let Some(tap) = tap {
            tap.copy(&records[start..]);
        }
        let (ops, audit) = batch.into_parts();
        // The sequence number is published before sled shows any of the change: a reader
        // that sees one of its keys then waits for (and hears of the loss of) this batch in
        // `commit_since`. Published after, a reader could see the key, find nothing newer
        // than `settled` applied, and answer with a change whose log write then failed.
        pending.last += 1;
        log.progress.applied.store(pending.last, Ordering::SeqCst);
        let keep_undo = self.mode == DurabilityMode::Durable;
        for (key, value) in ops {
            let previous = match value {
                Some(value) => log.db.insert(key.as_slice(), value),
                None => log.db.remove(key.as_slice()),
            };
            match previous {
                Ok(previous) if keep_undo => pending.undo.push((key, previous)),
                Ok(_) => {}
                Err(e) => {
                    // Part of the batch may be in sled's memory and sled takes no more
                    // changes: only a restart (which replays the log) makes this right.
                    pending.records.truncate(start);
                    drop(pending);
                    log.turn_fatal(&format!("changing the database failed: {e}"));
                    return Err(log.health.refusal());
                }
            }
        }
        pending.audit += audit.len();
        log.trail.stage(audit);
        Ok(())
    }

    /// Starts copying every record applied from now on ([`Tap`]); `false` if a copy is
    /// running already (one backup at a time).
    pub(super) fn tap_start(&self) -> bool {
        let mut pending = lock(&self.log.pending);
        if pending.tap.is_some() {
            return false;
        }
        pending.tap = Some(Tap::default());
        true
    }

    /// Stops the copy [`Self::tap_start`] began and returns it.
    pub(super) fn tap_stop(&self) -> Option<Tap> {
        lock(&self.log.pending).tap.take()
    }

    /// How many times changes not yet on disk were undone (see `undo`): whatever was derived
    /// from the database in memory before a change of this count may be stale.
    pub(super) fn losses(&self) -> u64 {
        self.log.progress.losses.load(Ordering::Acquire)
    }

    /// The point in history a request starts from (see [`Self::commit_since`]).
    pub fn mark(&self) -> Mark {
        let progress = &self.log.progress;
        Mark {
            losses: progress.losses.load(Ordering::Acquire),
            settled: progress.settled.load(Ordering::Acquire),
        }
    }

    /// Returns once everything applied before the call is on disk (durable mode), or at once
    /// (relaxed mode). An error when any change applied since `since` was lost instead: what
    /// the caller wrote, or read, was not stored and must not be shown or acknowledged.
    pub async fn commit_since(&self, since: Mark) -> Result<(), FlushError> {
        let log = &*self.log;
        if log.health.finished() {
            return Err(log.health.refusal());
        }
        if self.mode == DurabilityMode::Relaxed {
            return Ok(());
        }
        let progress = &log.progress;
        let target = progress.applied.load(Ordering::SeqCst);
        if progress.settled.load(Ordering::Acquire) < target {
            log.kick.notify_one();
            let mut settled = progress.settled_tx.subscribe();
            // The sender lives as long as `log`, which we borrow.
            let _ = settled.wait_for(|s| *s >= target).await;
            if log.health.finished() {
                return Err(log.health.refusal());
            }
        }
        if progress.lost_between(since.losses, since.settled, target) {
            return Err(FlushError::new(format!(
                "the change was not stored: {}",
                log.health.refusal()
            )));
        }
        Ok(())
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
        let audit_thread = lock(&self.audit_thread).take();
        run_blocking(move || {
            // No change from now on: what is applied is what the last round writes.
            {
                let _pending = lock(&log.pending);
                log.health.closed.store(true, Ordering::Release);
                log.health.writable.store(false, Ordering::Release);
                *lock(&log.health.reason) = Some(FlushError::new("the store is closed"));
            }
            let result = close_log(&log);
            // Anyone still waiting hears that the store is closed.
            log.progress.settle(u64::MAX);
            // Every audit line of what was stored is out before the process may exit.
            lock(&log.audit_lines).take();
            if let Some(thread) = audit_thread {
                let _ = thread.join();
            }
            result
        })
        .await
    }

    /// `Err` (durable mode) while a failed log write has not been mended: changes may have
    /// been undone moments ago.
    pub fn log_intact(&self) -> Result<(), FlushError> {
        let health = &self.log.health;
        if self.mode == DurabilityMode::Durable && health.log_broken.load(Ordering::Acquire) {
            Err(health.refusal())
        } else {
            Ok(())
        }
    }

    /// `Ok` while the store takes writes; otherwise why not and what to do.
    pub fn writable(&self) -> Result<(), FlushError> {
        if self.log.health.writable.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(self.log.health.refusal())
        }
    }

    /// Cancelled when the store has failed in a way only a restart mends.
    pub fn fatal(&self) -> &CancellationToken {
        &self.log.health.fatal_token
    }

    /// Makes the next `n` log writes (and recovery attempts) fail, as a broken disk would.
    /// Only with the `fault-injection` feature, which the tests enable.
    #[cfg(feature = "fault-injection")]
    pub fn inject_flush_failures(&self, n: u32) {
        self.log.injected_failures.store(n, Ordering::SeqCst);
    }

    /// The audit trail (for the store's reads of it).
    pub(super) fn audit_trail(&self) -> &AuditTrail {
        &self.log.trail
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
        .unwrap_or_else(|e| Err(FlushError::new(format!("flush task failed: {e}"))))
}

async fn run_flusher(log: Arc<Log>, timing: Timing, stop: CancellationToken) {
    let flush_period = match log.mode {
        DurabilityMode::Durable => timing.checkpoint,
        DurabilityMode::Relaxed => timing.relaxed_flush.min(timing.checkpoint),
    };
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + flush_period, flush_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut health_tick = tokio::time::interval(RETRY_INTERVAL);
    health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = Instant::now();
    loop {
        tokio::select! {
            _ = log.kick.notified() => {
                // Let connection tasks that are ready run first, so that their writes join
                // this round instead of each starting a round of its own (with one writer,
                // the yields return at once).
                for _ in 0..GATHER_YIELDS {
                    tokio::task::yield_now().await;
                }
            }
            _ = tick.tick() => {}
            _ = health_tick.tick() => {
                let health = log.clone();
                let _ = run_blocking(move || {
                    if health.health.finished() {
                        Ok(())
                    } else if health.health.writable.load(Ordering::Acquire) {
                        health.check_space();
                        Ok(())
                    } else {
                        health.recover()
                    }
                })
                .await;
            }
            _ = stop.cancelled() => return,
        }
        let round = log.clone();
        // A failure is logged once by the round itself and answered to each waiter.
        let _ = run_blocking(move || round.flush_round()).await;
        let period = if log.checkpoint_failed.load(Ordering::Acquire) {
            RETRY_INTERVAL
        } else {
            timing.checkpoint
        };
        // Not while writes are refused: the log holds everything, and flushing sled on a
        // full disk is what would break it for good.
        if last_checkpoint.elapsed() >= period
            && log.health.writable.load(Ordering::Acquire)
            && !log.checkpointing.swap(true, Ordering::SeqCst)
        {
            last_checkpoint = Instant::now();
            let log = log.clone();
            // In the background: acknowledgements go on while sled flushes.
            tokio::task::spawn_blocking(move || {
                let result = log.checkpoint(false);
                let was_failing = log
                    .checkpoint_failed
                    .swap(result.is_err(), Ordering::AcqRel);
                log.checkpointing.store(false, Ordering::SeqCst);
                match result {
                    Err(e) => {
                        log.count_failure("checkpoint");
                        if !was_failing {
                            tracing::error!(error = %e, "checkpoint failed; the log is kept (and replayed at start) and the checkpoint is retried every second");
                        }
                    }
                    Ok(()) if was_failing => tracing::info!("checkpoints succeed again"),
                    Ok(()) => {}
                }
            });
        }
    }
}

/// The last flush and checkpoint of a clean shutdown.
fn close_log(log: &Log) -> Result<(), FlushError> {
    if log.health.fatal.load(Ordering::Acquire) {
        // Nothing more reaches the disk; the next start replays the log.
        let _ = log.mend_torn_block();
        return Err(log.health.refusal());
    }
    log.flush_round()?;
    while log.checkpointing.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    log.checkpoint(true)?;
    wal::mark_clean(&log.dir).map_err(|e| FlushError::new(format!("marking a clean shutdown: {e}")))
}
