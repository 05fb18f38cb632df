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
//! Record format (little-endian): `len: u32`, `crc32(payload): u32`, `payload`; the payload is
//! `count: u32`, then per operation `key_len: u32`, `key`, `tag: u8` (0 remove, 1 insert) and
//! for inserts `value_len: u32`, `value`. Replay stops at the first short or corrupt record of
//! a segment: a torn tail left by a crash in the middle of a write, never acknowledged.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// A set of changes applied atomically: to sled as one batch, to the log as one record.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
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

    /// No changes?
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The same changes as a sled batch.
    pub(super) fn to_sled(&self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (k, v) in &self.ops {
            match v {
                Some(v) => batch.insert(k.as_slice(), v.as_slice()),
                None => batch.remove(k.as_slice()),
            }
        }
        batch
    }

    /// Appends this batch's log record to `out`.
    pub(super) fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&(self.ops.len() as u32).to_le_bytes());
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
        let payload_len = (out.len() - start - 8) as u32;
        let crc = crc32fast::hash(&out[start + 8..]);
        out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    fn decode(payload: &[u8]) -> Option<Self> {
        let mut r = Reader(payload);
        let count = r.u32()?;
        let mut ops = Vec::with_capacity(count.min(1024) as usize);
        for _ in 0..count {
            let key = r.bytes()?.to_vec();
            let value = match r.u8()? {
                0 => None,
                1 => Some(r.bytes()?.to_vec()),
                _ => return None,
            };
            ops.push((key, value));
        }
        r.0.is_empty().then_some(Self { ops })
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
pub(super) fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("wal-{number:016}.log"))
}

/// Reads every complete record of a segment. A short or corrupt record ends the segment.
pub(super) fn read_segment(path: &Path) -> io::Result<Vec<WriteBatch>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut out = Vec::new();
    let mut r = Reader(&bytes);
    while let (Some(len), Some(crc)) = (r.u32(), r.u32()) {
        let Some(payload) = r.take(len as usize) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        match WriteBatch::decode(payload) {
            Some(batch) => out.push(batch),
            None => break,
        }
    }
    Ok(out)
}

/// Creates segment `number`, empty, and makes its directory entry durable.
pub(super) fn create_segment(dir: &Path, number: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, number))?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// Appends `bytes` to a segment and makes them durable.
pub(super) fn append_durably(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    file.write_all(bytes)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: u8) -> WriteBatch {
        let mut b = WriteBatch::default();
        b.insert(vec![b'k', n], vec![n; n as usize]);
        b.remove(vec![b'r', n]);
        b
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = create_segment(dir.path(), 1).unwrap();
        let mut bytes = Vec::new();
        for n in 0..5 {
            batch(n).encode_into(&mut bytes);
        }
        append_durably(&mut file, &bytes).unwrap();
        // A crash in the middle of the next write leaves half a record.
        let mut torn = Vec::new();
        batch(9).encode_into(&mut torn);
        append_durably(&mut file, &torn[..torn.len() / 2]).unwrap();
        let read = read_segment(&segment_path(dir.path(), 1)).unwrap();
        assert_eq!(read.len(), 5);
        assert_eq!(read[3].ops, batch(3).ops);
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn a_corrupt_record_ends_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        batch(1).encode_into(&mut bytes);
        batch(2).encode_into(&mut bytes);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(segment_path(dir.path(), 7), &bytes).unwrap();
        let read = read_segment(&segment_path(dir.path(), 7)).unwrap();
        assert_eq!(read.len(), 1);
    }
}
