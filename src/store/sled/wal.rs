//! The write-ahead log that makes an `ok` durable with one `fdatasync`.
//!
//! Every change to the store is applied to sled (in memory) and appended, in the same order
//! and under the same lock, to an in-memory buffer of log records. The group-commit flusher
//! ([`super::durable`]) writes that buffer to the current log segment and `fdatasync`s it, and
//! only then acknowledges the writers waiting on it: one sequential write and one sync per
//! batch of writers, the way Redis's `appendfsync always` works. sled itself is flushed only
//! at checkpoints, in the background; once a checkpoint has flushed and synced sled's `db`
//! file, the segments it covers are deleted. At start-up, whatever segments remain are
//! replayed into sled in order (replaying a record twice is harmless: records hold whole
//! values, not increments).
//!
//! Why not `sled::Db::flush` per batch: it writes through sled's page cache machinery and
//! makes its log stable with `sync_file_range`, which does not reach the disk cache, so a
//! durable ack needed a second sync of the `db` file; and its cost grows with the number of
//! dirty pages, which the benchmark showed to cap group commit at a few thousand acks/s.
//!
//! Segments are files of [`SEGMENT_BYTES`], filled with zeros when first created and recycled
//! (renamed) once a checkpoint covers them, so a log write overwrites blocks that already
//! exist: `fdatasync` then has data to flush but no file size or extent to journal, which on
//! ext4 is the difference between waiting for the disk and waiting for a journal commit
//! behind every other file's writeback (the trick PostgreSQL's WAL segments use).
//!
//! Each flush round writes one block: `magic "CLW1"`, `segment: u64`, `len: u32`,
//! `crc32(segment, len, data): u32`, then `data`, the round's records. The segment number in
//! the checksum makes stale blocks in a recycled file invalid. A record is `len: u32`,
//! `crc32(payload): u32`, `payload`; the payload is `count: u32`, then per operation
//! `key_len: u32`, `key`, `tag: u8` (0 remove, 1 insert, 2 audit event: the key is its
//! sequence number, the value the event, which goes to the audit trail's file instead of
//! sled) and for inserts and events `value_len: u32`, `value`. Replay of a segment stops at
//! the first block that is short, stale or corrupt: a torn tail left by a crash in the
//! middle of a write, never acknowledged.
//!
//! At start-up [`replay_into`] applies what the remaining segments hold to sled, makes sled
//! hold it on disk, and retires the segments; the store then knows from its
//! [`ReplayReport`] whether the last stop was clean (what needs checking after a crash is the
//! store's business, not the log's).

use super::audit_trail::AuditTrail;
use crate::store::StoreError;
use crate::store::records::{AuditEvent, Record};
use smallvec::SmallVec;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The size of a log segment.
pub const SEGMENT_BYTES: u64 = 8 << 20;
/// How many covered segments are kept for reuse instead of deleted.
const RECYCLE_KEEP: usize = 4;
const BLOCK_MAGIC: &[u8; 4] = b"CLW1";
const BLOCK_HEADER: usize = 20;
/// Written over the header of a block whose write failed: replay stops there.
pub(super) const NO_BLOCK: [u8; BLOCK_HEADER] = [0; BLOCK_HEADER];

/// One change: a key and its new value, or `None` to delete it.
pub(super) type Op = (Vec<u8>, Option<Vec<u8>>);

/// A set of changes that stands or falls together: one log record, applied to sled in order.
///
/// What that promises, precisely (sled's own `apply_batch`, which would make sled's view of a
/// batch atomic, is not used: see [`WriteBatch::apply_to`]):
///
/// * **On disk, all or nothing.** The batch is one log record with its own checksum; replay
///   applies it whole, or not at all if it never reached the disk intact. Before a crash
///   sled may have written part of an unacknowledged batch out by itself; the derived values
///   that could then disagree (a key's domain count, the holder index) are rebuilt at
///   start-up after an unclean stop.
/// * **In memory, key by key.** [`GroupCommit::apply`](super::durable::GroupCommit::apply)
///   inserts the changes into sled one at a time, in order. Read-check-write sequences hold
///   the writers' lock across their reads and their apply, so none sees half of another's
///   batch (the writes that check nothing, such as an audit event or link tokens, take no
///   lock). A reader that takes no lock can see part of a batch, for the microseconds the
///   apply takes; the batch's sequence number is published before sled shows any of it, so
///   that reader then waits for the batch's commit round and answers `500` if it failed.
/// * **Undone whole.** When a log write fails in durable mode, every key of every batch not
///   yet on disk gets back the value its apply replaced, newest first, and the undo is logged
///   as a record of its own (see [`super::durable`]). Relaxed mode acknowledged the batch
///   already and keeps it.
/// * **Not across a sled failure.** sled failing in the middle of an apply leaves part of the
///   batch in memory; the store turns fatal and the process exits, and the restart replays a
///   log that does not hold the batch (then the unclean-stop repairs above apply).
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    ops: Vec<Op>,
    /// The audit events of the changes, with their sequence numbers (given when the batch is
    /// applied): part of the log record, appended to the audit trail's file once on disk
    /// ([`super::audit_trail`]), never to sled. Inline: a batch has one or two, and a write
    /// should not cost an allocation for them.
    audit: SmallVec<[(u64, AuditEvent); 2]>,
}

/// An audit operation in a log record (operation tags: 0 remove, 1 insert, 2 audit event).
const AUDIT_TAG: u8 = 2;

/// A log record read back at replay: the changes for sled and the audit events (sequence
/// number, encoded event) for the trail's file.
#[derive(Debug, Default)]
pub(super) struct Replayed {
    pub ops: Vec<Op>,
    pub audit: Vec<(u64, Vec<u8>)>,
}

impl WriteBatch {
    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), Some(value.into())));
    }

    /// Deletes `key`.
    pub fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), None));
    }

    /// Records an audit event: it reaches the trail's file and its log line is written once
    /// the batch is on disk, never for a change that was refused or undone.
    pub(super) fn audit(&mut self, event: AuditEvent) {
        self.audit.push((0, event));
    }

    /// Gives the audit events their sequence numbers (when the batch is applied, in log
    /// order).
    pub(super) fn number_audit_events(&mut self, mut next: impl FnMut() -> u64) {
        for (seq, _) in &mut self.audit {
            *seq = next();
        }
    }

    /// The changes and the numbered audit events, for the store to apply.
    pub(super) fn into_parts(self) -> (Vec<Op>, SmallVec<[(u64, AuditEvent); 2]>) {
        (self.ops, self.audit)
    }

    /// Appends this batch's log record to `out`.
    pub(super) fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 8]);
        let count = self.ops.len() + self.audit.len();
        out.extend_from_slice(&(count as u32).to_le_bytes());
        for (k, v) in &self.ops {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
            match v {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                    out.extend_from_slice(v);
                }
            }
        }
        for (seq, event) in &self.audit {
            out.extend_from_slice(&8u32.to_le_bytes());
            out.extend_from_slice(&seq.to_be_bytes());
            out.push(AUDIT_TAG);
            let value = event.encode();
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(&value);
        }
        let payload_len = (out.len() - start - 8) as u32;
        let crc = crc32fast::hash(&out[start + 8..]);
        out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    // Replay applies a record's changes to sled one by one, in order ([`Replayed::apply_to`];
    // the write path does the same in `GroupCommit::apply`, keeping each replaced value for
    // an undo).
    //
    // Not with `sled::Tree::apply_batch`: in sled 0.34 that writes and `sync_file_range`s
    // its log twice per batch (measured: two waits on the disk per acknowledged write, on
    // the request path, serialising every writer). All-or-nothing comes from the log instead
    // (see [`WriteBatch`]): sled may hold a prefix of an unacknowledged batch, which replay
    // completes or which was never acknowledged.
    #[cfg(test)]
    fn replayed(&self) -> Replayed {
        Replayed {
            ops: self.ops.clone(),
            audit: self.audit.iter().map(|(s, e)| (*s, e.encode())).collect(),
        }
    }
}

impl Replayed {
    /// Applies the changes to sled one by one, in order (see the comment above
    /// `WriteBatch::replayed`).
    pub(super) fn apply_to(&self, db: &sled::Db) -> Result<(), sled::Error> {
        for (k, v) in &self.ops {
            match v {
                Some(v) => db.insert(k.as_slice(), v.as_slice())?,
                None => db.remove(k.as_slice())?,
            };
        }
        Ok(())
    }
}

impl Replayed {
    /// A record's payload; `None` if malformed. Records from before the audit trail had its
    /// own file hold audit events as sled inserts under `A` (tag 1): they are applied to sled
    /// like any insert and moved to the file at open ([`super::audit_trail`]).
    fn decode(payload: &[u8]) -> Option<Self> {
        let mut r = Reader(payload);
        let count = r.u32()?;
        let mut out = Replayed {
            ops: Vec::with_capacity(count.min(1024) as usize),
            audit: Vec::new(),
        };
        for _ in 0..count {
            let key = r.bytes()?;
            match r.u8()? {
                0 => out.ops.push((key.to_vec(), None)),
                1 => out.ops.push((key.to_vec(), Some(r.bytes()?.to_vec()))),
                AUDIT_TAG => {
                    let seq = u64::from_be_bytes(key.try_into().ok()?);
                    out.audit.push((seq, r.bytes()?.to_vec()));
                }
                _ => return None,
            }
        }
        r.0.is_empty().then_some(out)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// The segment files of a log directory, oldest first.
pub(super) fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("wal-"))
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(number) = number {
            out.push((number, path));
        }
    }
    out.sort();
    Ok(out)
}

/// The path of segment `number`.
fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("wal-{number:016}.log"))
}

/// Frames a flush round's records as one block of segment `number`.
pub(super) fn block(number: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK_HEADER + data.len());
    out.extend_from_slice(BLOCK_MAGIC);
    out.extend_from_slice(&number.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[4..16]);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Reads every record of segment `number` up to the first block that is short, stale (from
/// the file's previous life) or corrupt.
fn read_segment(path: &Path, number: u64) -> io::Result<Vec<Replayed>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut out = Vec::new();
    let mut r = Reader(&bytes);
    'blocks: while let Some(header) = r.take(BLOCK_HEADER) {
        let seg = u64::from_le_bytes(header[4..12].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes"));
        if &header[..4] != BLOCK_MAGIC || seg != number {
            break;
        }
        let Some(data) = r.take(len) else { break };
        let mut check = crc32fast::Hasher::new();
        check.update(&header[4..16]);
        check.update(data);
        if check.finalize() != crc {
            break;
        }
        let mut records = Reader(data);
        let mut batches = Vec::new();
        while !records.0.is_empty() {
            let (Some(len), Some(crc)) = (records.u32(), records.u32()) else {
                break 'blocks;
            };
            let Some(payload) = records.take(len as usize) else {
                break 'blocks;
            };
            match Replayed::decode(payload) {
                Some(batch) if crc32fast::hash(payload) == crc => batches.push(batch),
                _ => break 'blocks,
            }
        }
        out.extend(batches);
    }
    Ok(out)
}

/// Makes segment `number` ready for writing: a spare renamed (see [`ensure_spare`]), or, if
/// none is ready, a new file of [`SEGMENT_BYTES`] zeros. Its directory entry is made durable.
pub(super) fn create_segment(dir: &Path, number: u64) -> io::Result<File> {
    let path = segment_path(dir, number);
    match recycled(dir)?.into_iter().next() {
        Some(spare) => fs::rename(spare, &path)?,
        None => zero_filled(&path)?,
    }
    let file = OpenOptions::new().write(true).open(&path)?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// Makes sure a spare segment is waiting, so that the next rotation is a rename rather than
/// 8 MiB of zeros written while writers wait. Runs off the write path.
pub(super) fn ensure_spare(dir: &Path) -> io::Result<()> {
    if !recycled(dir)?.is_empty() {
        return Ok(());
    }
    let tmp = dir.join("spare.tmp");
    zero_filled(&tmp)?;
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    fs::rename(&tmp, dir.join(format!("recycle-spare-{unique}.log")))?;
    File::open(dir)?.sync_all()
}

/// Writes a segment's worth of zeros to `path`; on failure (a full disk) removes what it
/// wrote, so that a failed attempt does not eat the space a retry needs.
fn zero_filled(path: &Path) -> io::Result<()> {
    let result = write_zeros(path);
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

fn write_zeros(path: &Path) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..SEGMENT_BYTES / zeros.len() as u64 {
        file.write_all(&zeros)?;
    }
    file.sync_all()
}

/// Keeps up to two covered segments for reuse and deletes the rest.
pub(super) fn retire_segments(dir: &Path, covered: &[(u64, PathBuf)]) -> io::Result<()> {
    let mut spares = recycled(dir)?.len();
    for (number, path) in covered {
        if spares < RECYCLE_KEEP {
            fs::rename(path, dir.join(format!("recycle-{number:016}.log")))?;
            spares += 1;
        } else {
            fs::remove_file(path)?;
        }
    }
    File::open(dir)?.sync_all()
}

fn recycled(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("recycle-"))
        {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The marker a clean shutdown leaves: sled holds everything, nothing needs checking.
const CLEAN_MARKER: &str = "clean-shutdown";

/// Records that the store was closed cleanly (after its final checkpoint).
pub(super) fn mark_clean(dir: &Path) -> io::Result<()> {
    File::create(dir.join(CLEAN_MARKER))?.sync_all()?;
    File::open(dir)?.sync_all()
}

/// Was the store closed cleanly last time? Removes the marker: from now on it is open.
fn take_clean_marker(dir: &Path) -> io::Result<bool> {
    match fs::remove_file(dir.join(CLEAN_MARKER)) {
        Ok(()) => {
            File::open(dir)?.sync_all()?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// What [`replay_into`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReplayReport {
    /// The store was closed cleanly last time (a final checkpoint, nothing unacknowledged in
    /// sled). When not, sled may hold part of a batch that never reached the log.
    pub clean: bool,
    /// Batches (log records) applied.
    pub batches: usize,
    /// Segments read, now retired.
    pub segments: usize,
    /// The number the next segment gets.
    pub next_segment: u64,
}

/// Replays the log in `dir` (created if missing) into `db` at start-up: every record of every
/// segment, oldest first, up to each segment's first torn or stale block; the audit events
/// the trail's file lacks go to `trail`. Then, if there was anything to replay, syncs the
/// trail, flushes sled and syncs its `db` file (`db_file`, opened from `db_path`), so that
/// the segments can be retired. Takes the clean-shutdown marker: from now on the store is open.
///
/// Replaying a record twice is harmless (records hold whole values), and a record is applied
/// whole or, if it never reached the disk intact, not at all.
pub(super) fn replay_into(
    db: &sled::Db,
    db_file: &File,
    db_path: &Path,
    dir: &Path,
    trail: &AuditTrail,
) -> Result<ReplayReport, StoreError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| StoreError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let clean = take_clean_marker(dir).map_err(io(dir))?;
    let segments = segments(dir).map_err(io(dir))?;
    let mut batches = 0usize;
    for (number, path) in &segments {
        for batch in read_segment(path, *number).map_err(io(path))? {
            batch.apply_to(db)?;
            for (seq, event) in &batch.audit {
                trail.append_replayed(*seq, event)?;
            }
            batches += 1;
        }
    }
    if !segments.is_empty() {
        trail.sync().map_err(io(dir))?;
        db.flush()?;
        db_file.sync_data().map_err(io(db_path))?;
        retire_segments(dir, &segments).map_err(io(dir))?;
        if batches > 0 {
            tracing::info!(
                records = batches,
                segments = segments.len(),
                "replayed the write-ahead log"
            );
        }
    }
    Ok(ReplayReport {
        clean,
        batches,
        segments: segments.len(),
        next_segment: segments.last().map_or(1, |(n, _)| n + 1),
    })
}

/// Writes `bytes` at `offset` of a segment and makes them durable.
pub(super) fn write_durably(file: &File, offset: u64, bytes: &[u8]) -> io::Result<()> {
    file.write_all_at(bytes, offset)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u8) -> AuditEvent {
        AuditEvent {
            at: n.into(),
            ip: std::net::Ipv4Addr::LOCALHOST.into(),
            key_id: "-".into(),
            kind: crate::store::AuditKind::DomainAdded {
                domain: format!("d{n}.example.org"),
            },
        }
    }

    fn batch(n: u8) -> WriteBatch {
        let mut b = WriteBatch::default();
        b.insert(vec![b'k', n], vec![n; n as usize]);
        b.remove(vec![b'r', n]);
        b.audit(event(n));
        b.number_audit_events(|| 100 + u64::from(n));
        b
    }

    fn round(number: u64, batches: &[WriteBatch]) -> Vec<u8> {
        let mut data = Vec::new();
        for b in batches {
            b.encode_into(&mut data);
        }
        block(number, &data)
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = create_segment(dir.path(), 1).unwrap();
        let first = round(1, &[batch(0), batch(1), batch(2)]);
        write_durably(&file, 0, &first).unwrap();
        let second = round(1, &[batch(3), batch(4)]);
        write_durably(&file, first.len() as u64, &second).unwrap();
        // A crash in the middle of the next write leaves half a block.
        let torn = round(1, &[batch(9)]);
        let at = (first.len() + second.len()) as u64;
        write_durably(&file, at, &torn[..torn.len() / 2]).unwrap();
        let read = read_segment(&segment_path(dir.path(), 1), 1).unwrap();
        assert_eq!(read.len(), 5);
        assert_eq!(read[3].ops, batch(3).replayed().ops);
        assert_eq!(
            std::fs::metadata(segment_path(dir.path(), 1))
                .unwrap()
                .len(),
            SEGMENT_BYTES
        );
    }

    #[test]
    fn a_recycled_segment_does_not_replay_its_old_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let file = create_segment(dir.path(), 1).unwrap();
        let old = round(1, &[batch(1), batch(2)]);
        write_durably(&file, 0, &old).unwrap();
        retire_segments(dir.path(), &segments(dir.path()).unwrap()).unwrap();
        assert!(segments(dir.path()).unwrap().is_empty());
        let file = create_segment(dir.path(), 2).unwrap();
        assert_eq!(
            read_segment(&segment_path(dir.path(), 2), 2).unwrap().len(),
            0
        );
        // A short new block over the old ones: only the new one counts.
        write_durably(&file, 0, &round(2, &[batch(5)])).unwrap();
        let read = read_segment(&segment_path(dir.path(), 2), 2).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].ops, batch(5).replayed().ops);
    }

    #[test]
    fn replay_applies_every_record_retires_the_segments_and_takes_the_clean_marker() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        fs::create_dir_all(&wal_dir).unwrap();
        let first = create_segment(&wal_dir, 1).unwrap();
        write_durably(&first, 0, &round(1, &[batch(1), batch(2)])).unwrap();
        let second = create_segment(&wal_dir, 2).unwrap();
        let block = round(2, &[batch(3), batch(4)]);
        // The second round was torn by a crash: only the first one counts.
        write_durably(&second, 0, &round(2, &[batch(3)])).unwrap();
        let at = round(2, &[batch(3)]).len() as u64;
        write_durably(&second, at, &block[..block.len() / 2]).unwrap();

        let sled_dir = dir.path().join("db");
        let db = sled::Config::new().path(&sled_dir).open().unwrap();
        let db_path = sled_dir.join("db");
        let db_file = File::open(&db_path).unwrap();
        let trail = AuditTrail::open(dir.path()).unwrap();
        let report = replay_into(&db, &db_file, &db_path, &wal_dir, &trail).unwrap();
        assert_eq!(
            report,
            ReplayReport {
                clean: false,
                batches: 3,
                segments: 2,
                next_segment: 3
            }
        );
        assert_eq!(db.get([b'k', 3]).unwrap().as_deref(), Some(&[3u8; 3][..]));
        assert_eq!(
            db.get([b'k', 4]).unwrap(),
            None,
            "the torn round is not replayed"
        );
        assert!(segments(&wal_dir).unwrap().is_empty(), "retired");
        // The audit events go to the trail's file, not to sled, and only those replayed.
        let events = trail.events(None, usize::MAX).unwrap();
        assert_eq!(events, [(101, event(1)), (102, event(2)), (103, event(3))]);
        assert_eq!(db.len(), 3);

        mark_clean(&wal_dir).unwrap();
        let report = replay_into(&db, &db_file, &db_path, &wal_dir, &trail).unwrap();
        assert!(report.clean);
        assert_eq!((report.batches, report.next_segment), (0, 1));
        let report = replay_into(&db, &db_file, &db_path, &wal_dir, &trail).unwrap();
        assert!(!report.clean, "the marker is taken: the store is open now");
    }

    #[test]
    fn a_corrupt_block_ends_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = round(7, &[batch(1)]);
        let mut second = round(7, &[batch(2)]);
        let last = second.len() - 1;
        second[last] ^= 0xff;
        bytes.extend_from_slice(&second);
        bytes.extend_from_slice(&round(7, &[batch(3)]));
        fs::write(segment_path(dir.path(), 7), &bytes).unwrap();
        let read = read_segment(&segment_path(dir.path(), 7), 7).unwrap();
        assert_eq!(read.len(), 1);
    }
}
