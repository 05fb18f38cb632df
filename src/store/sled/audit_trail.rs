//! The audit trail's own file: `audit.trail` in the data directory, appended to once a
//! write-ahead log round holding the events is durable, and read by
//! [`SledStore::audit_events`](super::SledStore::audit_events).
//!
//! The trail used to be a sled record per event (`A` + sequence number): one more sled
//! insert per `add` (a leaf-node copy, see BENCHMARKS.md) and about a hundred bytes per
//! event in sled's pages for a log that is only ever appended to and read in order. Now:
//!
//! * An event is part of its change's log record (an audit operation of the
//!   [`WriteBatch`](super::wal::WriteBatch)) and gets its sequence number when the batch is
//!   applied, under the log's pending lock, so sequence order is log order.
//! * Until its round is on disk it waits in memory ([`Trail::unwritten`]): readers see it
//!   there, as they saw sled's copy before (a durable-mode reader waits for the round with
//!   the rest of its request). A round that fails in durable mode is undone, and its events
//!   with it ([`AuditTrail::discard_undurable`]): the file never holds an undone change.
//! * Once the round is durable the events are appended to the file (one `pwrite`, no sync)
//!   and their log lines go out. A checkpoint syncs the file ([`AuditTrail::sync`]) before it
//!   retires the log segments that hold the same events; after a crash, replay appends what
//!   the file lacks ([`AuditTrail::append_replayed`]: sequence numbers only grow, so "lacks"
//!   is "after its last").
//! * A record is `len: u32`, `crc32(payload): u32`, then the payload: the sequence number
//!   (8 bytes, big-endian) and the encoded [`AuditEvent`]. Opening reads the file once,
//!   cuts a torn tail (a crash in the middle of an append) and keeps every
//!   [`POST_EVERY`]-th record's position, so that a page after a sequence number starts
//!   close to it.
//!
//! Databases from before this file held the trail in sled: [`AuditTrail::migrate_from`]
//! moves those records here at open.

use crate::store::StoreError;
use crate::store::records::{AuditEvent, Record};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The file's name in the data directory.
pub(super) const FILE_NAME: &str = "audit.trail";

/// One position kept in memory every this many records.
const POST_EVERY: u64 = 256;

const HEADER: usize = 8;

/// The trail: its file and the events whose rounds are not written yet. See the module doc.
pub(super) struct AuditTrail {
    path: PathBuf,
    inner: Mutex<Trail>,
    /// The last sequence number handed out.
    last_seq: AtomicU64,
}

struct Trail {
    file: File,
    /// Where the next record goes: the end of the last valid record.
    len: u64,
    /// The sequence number of the file's last record (0: none).
    last: u64,
    /// Records in the file.
    records: u64,
    /// `(sequence number, offset)` of every [`POST_EVERY`]-th record.
    posts: Vec<(u64, u64)>,
    /// Events applied but not in the file yet, in sequence order; the first `durable` of
    /// them belong to rounds that are on disk (their append failed or is about to happen).
    unwritten: VecDeque<(u64, AuditEvent)>,
    durable: usize,
    /// Appended since the last sync.
    dirty: bool,
    /// Reused for the records of one append.
    buffer: Vec<u8>,
}

fn lock(m: &Mutex<Trail>) -> MutexGuard<'_, Trail> {
    // Every critical section leaves the trail consistent, so a poisoned lock is usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn io_error(path: &Path) -> impl Fn(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Appends one record to `out`.
fn encode_record(out: &mut Vec<u8>, seq: u64, event: &[u8]) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_be_bytes());
    crc.update(event);
    out.extend_from_slice(&((8 + event.len()) as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(event);
}

/// Reads the record at `offset` of `file` (`len` bytes long): its sequence number, the
/// event's bytes and where the next one starts; `None` when it is short or corrupt.
fn read_record(file: &File, offset: u64, len: u64) -> io::Result<Option<(u64, Vec<u8>, u64)>> {
    if offset + HEADER as u64 > len {
        return Ok(None);
    }
    let mut header = [0u8; HEADER];
    file.read_exact_at(&mut header, offset)?;
    let size = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as u64;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    let end = offset + HEADER as u64 + size;
    if size < 8 || end > len {
        return Ok(None);
    }
    let mut payload = vec![0u8; size as usize];
    file.read_exact_at(&mut payload, offset + HEADER as u64)?;
    if crc32fast::hash(&payload) != crc {
        return Ok(None);
    }
    let seq = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
    payload.drain(..8);
    Ok(Some((seq, payload, end)))
}

impl AuditTrail {
    /// Opens (or creates) the trail in `dir`: reads it once, cuts a torn tail.
    pub(super) fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(FILE_NAME);
        let display = path.clone();
        let err = io_error(&display);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(&err)?;
        let size = file.metadata().map_err(&err)?.len();
        let (mut len, mut last, mut records, mut posts) = (0u64, 0u64, 0u64, Vec::new());
        let mut reader = BufReader::with_capacity(1 << 20, &file);
        let mut header = [0u8; HEADER];
        let mut payload = Vec::new();
        while len + HEADER as u64 <= size {
            reader.read_exact(&mut header).map_err(&err)?;
            let n = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as u64;
            let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
            if n < 8 || len + HEADER as u64 + n > size {
                break;
            }
            payload.resize(n as usize, 0);
            reader.read_exact(&mut payload).map_err(&err)?;
            if crc32fast::hash(&payload) != crc {
                break;
            }
            let seq = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
            if records.is_multiple_of(POST_EVERY) {
                posts.push((seq, len));
            }
            records += 1;
            last = seq;
            len += HEADER as u64 + n;
        }
        drop(reader);
        if len < size {
            // A crash in the middle of an append: that event is still in the log, whose
            // replay appends it again.
            file.set_len(len).map_err(&err)?;
            file.sync_all().map_err(&err)?;
            tracing::warn!(
                path = %path.display(),
                cut = size - len,
                "cut a torn tail off the audit trail"
            );
        }
        Ok(Self {
            path,
            last_seq: AtomicU64::new(last),
            inner: Mutex::new(Trail {
                file,
                len,
                last,
                records,
                posts,
                unwritten: VecDeque::new(),
                durable: 0,
                dirty: false,
                buffer: Vec::new(),
            }),
        })
    }

    /// The next sequence number: nanoseconds since the epoch, forced to increase, so the
    /// trail sorts by time and a number is never reused (not across a restart or a clock
    /// step back either). Called under the log's pending lock, in log order.
    pub(super) fn next_seq(&self) -> u64 {
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64;
        let next = now.max(self.last_seq.load(Ordering::Acquire) + 1);
        self.last_seq.store(next, Ordering::Release);
        next
    }

    /// Events of a batch just applied, in sequence order, waiting for their round.
    pub(super) fn stage(&self, events: impl IntoIterator<Item = (u64, AuditEvent)>) {
        lock(&self.inner).unwritten.extend(events);
    }

    /// The next `n` staged events are in a durable round: appends every such event to the
    /// file and returns those appended (for their log lines). An append that fails leaves
    /// them staged, visible to readers and in the log, and is retried by the next round or
    /// checkpoint.
    pub(super) fn committed(&self, n: usize) -> Vec<AuditEvent> {
        let mut trail = lock(&self.inner);
        trail.durable = (trail.durable + n).min(trail.unwritten.len());
        match trail.append_durable() {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "appending to the audit trail failed; retried at the next round and checkpoint (the events are in the write-ahead log meanwhile)");
                Vec::new()
            }
        }
    }

    /// A failed round was undone (durable mode): the staged events of rounds not on disk go
    /// with it.
    pub(super) fn discard_undurable(&self) {
        let mut trail = lock(&self.inner);
        let keep = trail.durable;
        trail.unwritten.truncate(keep);
    }

    /// Appends what is durable and not yet in the file, and makes the file stable: a
    /// checkpoint calls this before it retires the log segments holding the same events.
    pub(super) fn sync(&self) -> io::Result<Vec<AuditEvent>> {
        let mut trail = lock(&self.inner);
        let events = trail.append_durable()?;
        if trail.dirty {
            trail.file.sync_data()?;
            trail.dirty = false;
        }
        Ok(events)
    }

    /// Appends an event found in the log at replay, unless the file has it already.
    pub(super) fn append_replayed(&self, seq: u64, event: &[u8]) -> Result<(), StoreError> {
        let mut trail = lock(&self.inner);
        if seq <= trail.last {
            return Ok(());
        }
        let mut buffer = std::mem::take(&mut trail.buffer);
        buffer.clear();
        encode_record(&mut buffer, seq, event);
        let result = trail.append(&buffer, [seq].into_iter());
        trail.buffer = buffer;
        self.last_seq.fetch_max(seq, Ordering::AcqRel);
        result.map_err(io_error(&self.path))
    }

    /// Moves the trail of a database from before this file (sled records under `A`) into
    /// it, then deletes those records from sled. Safe to repeat after a crash: the file is
    /// synced before sled forgets anything, and records the file has are skipped.
    pub(super) fn migrate_from(&self, db: &sled::Db) -> Result<usize, StoreError> {
        use super::keyspace::audit;
        let mut moved = Vec::new();
        for entry in db.scan_prefix([audit::PREFIX]) {
            let (k, v) = entry?;
            self.append_replayed(audit::decode(&k), &v)?;
            moved.push(k);
        }
        if moved.is_empty() {
            return Ok(0);
        }
        self.sync().map_err(io_error(&self.path))?;
        for k in &moved {
            db.remove(k)?;
        }
        db.flush()?;
        Ok(moved.len())
    }

    /// Up to `limit` events after sequence number `after` (`None`: from the first), oldest
    /// first: from the file, then those still waiting for their round.
    pub(super) fn events(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, AuditEvent)>, StoreError> {
        let trail = lock(&self.inner);
        let err = io_error(&self.path);
        let after = after.unwrap_or(0);
        let mut out = Vec::new();
        if after < trail.last {
            let post = trail.posts.partition_point(|&(seq, _)| seq <= after);
            let mut offset = post.checked_sub(1).map_or(0, |i| trail.posts[i].1);
            while out.len() < limit {
                let Some((seq, event, next)) =
                    read_record(&trail.file, offset, trail.len).map_err(&err)?
                else {
                    break;
                };
                if seq > after {
                    out.push((seq, AuditEvent::decode(&event)?));
                }
                offset = next;
            }
        }
        let waiting = trail.unwritten.iter().filter(|(seq, _)| *seq > after);
        out.extend(waiting.take(limit - out.len()).cloned());
        Ok(out)
    }
}

impl Trail {
    /// Appends the durable staged events; returns them.
    fn append_durable(&mut self) -> io::Result<Vec<AuditEvent>> {
        if self.durable == 0 {
            return Ok(Vec::new());
        }
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        for (seq, event) in self.unwritten.iter().take(self.durable) {
            encode_record(&mut buffer, *seq, &event.encode());
        }
        let seqs: Vec<u64> = self
            .unwritten
            .iter()
            .take(self.durable)
            .map(|(seq, _)| *seq)
            .collect();
        let result = self.append(&buffer, seqs.into_iter());
        self.buffer = buffer;
        result?;
        let events = self
            .unwritten
            .drain(..self.durable)
            .map(|(_, e)| e)
            .collect();
        self.durable = 0;
        Ok(events)
    }

    /// Writes `records` (encoded, with sequence numbers `seqs`) at the end of the file.
    fn append(&mut self, records: &[u8], seqs: impl Iterator<Item = u64>) -> io::Result<()> {
        if let Err(e) = self.file.write_all_at(records, self.len) {
            // Whatever part was written is cut off again, so the next append starts clean.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        let mut offset = self.len;
        let mut header = [0u8; HEADER];
        for seq in seqs {
            if self.records.is_multiple_of(POST_EVERY) {
                self.posts.push((seq, offset));
            }
            self.records += 1;
            self.last = seq;
            let at = (offset - self.len) as usize;
            header.copy_from_slice(&records[at..at + HEADER]);
            offset += HEADER as u64 + u32::from_le_bytes(header[..4].try_into().expect("4")) as u64;
        }
        self.len += records.len() as u64;
        self.dirty = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::AuditKind;
    use std::net::{IpAddr, Ipv4Addr};

    fn event(i: u64) -> AuditEvent {
        AuditEvent {
            at: i as i64,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            key_id: "k".into(),
            kind: AuditKind::DomainAdded {
                domain: format!("d{i}.example"),
            },
        }
    }

    fn stage(trail: &AuditTrail, range: std::ops::Range<u64>) -> Vec<u64> {
        let staged: Vec<_> = range.map(|i| (trail.next_seq(), event(i))).collect();
        let seqs = staged.iter().map(|(s, _)| *s).collect();
        trail.stage(staged);
        seqs
    }

    #[test]
    fn events_page_from_the_file_and_from_memory_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let trail = AuditTrail::open(dir.path()).unwrap();
        let seqs = stage(&trail, 0..1000);
        assert_eq!(trail.committed(600).len(), 600);
        let all = trail.events(None, usize::MAX).unwrap();
        assert_eq!(all.len(), 1000, "600 from the file, 400 waiting");
        assert_eq!(all.iter().map(|(s, _)| *s).collect::<Vec<_>>(), seqs);
        for after in [0, 1, 255, 256, 257, 599, 600, 999] {
            let page = trail.events(Some(seqs[after]), 3).unwrap();
            let want: Vec<_> = all[after + 1..].iter().take(3).cloned().collect();
            assert_eq!(page, want, "after #{after}");
        }
        // The rounds not on disk are undone: their events go.
        trail.discard_undurable();
        assert_eq!(trail.events(None, usize::MAX).unwrap().len(), 600);
        trail.sync().unwrap();
        drop(trail);
        let trail = AuditTrail::open(dir.path()).unwrap();
        assert_eq!(trail.events(None, usize::MAX).unwrap(), all[..600]);
        assert!(trail.next_seq() > seqs[599]);
    }

    #[test]
    fn a_torn_tail_is_cut_and_replay_appends_only_what_the_file_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let trail = AuditTrail::open(dir.path()).unwrap();
        let seqs = stage(&trail, 0..3);
        trail.committed(3);
        trail.sync().unwrap();
        drop(trail);
        let path = dir.path().join(FILE_NAME);
        let whole = std::fs::metadata(&path).unwrap().len();
        // A crash in the middle of the third record's append.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(whole - 5).unwrap();
        let trail = AuditTrail::open(dir.path()).unwrap();
        assert_eq!(trail.events(None, usize::MAX).unwrap().len(), 2);
        // Replay of the log: the first two are there already, the third is appended.
        for (i, seq) in seqs.iter().enumerate() {
            trail
                .append_replayed(*seq, &event(i as u64).encode())
                .unwrap();
        }
        let all = trail.events(None, usize::MAX).unwrap();
        assert_eq!(all.iter().map(|(s, _)| *s).collect::<Vec<_>>(), seqs);
        assert_eq!(all[2].1, event(2));
    }
}
