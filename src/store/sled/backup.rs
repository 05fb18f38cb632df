//! The sled side of an online backup ([`crate::store::backup`]): a consistent copy of a store
//! that keeps taking writes while it is read.
//!
//! # How it is consistent
//!
//! sled 0.34 has no snapshots, and holding the writers off for the length of a full read
//! would stall every client. Instead the backup is a *fuzzy* export plus the write-ahead log
//! records applied while it ran, which is how crash recovery already works (replaying the
//! log over a sled state that holds some of its records; records hold whole values, so
//! replaying one that is already there changes nothing):
//!
//! 1. [`SledStore::backup_begin`] takes a [`Mark`] and, under the log's pending lock, turns
//!    on a [`Tap`]: from that instant every batch applied is also copied, encoded as its log
//!    record. Every batch applied before it is whole in sled (apply runs under the same
//!    lock); the backup then waits until all of them are on disk.
//! 2. The caller exports every item page by page with [`SledStore::export`], while writes go
//!    on. A record read during the export has its value from the start or from a batch the
//!    tap holds.
//! 3. [`BackupWindow::finish`] turns the tap off (again under the pending lock) and waits
//!    until every tapped batch is on disk. The backup is export + tapped records; restoring
//!    it imports the items and then replays the records ([`write_log_tail`] puts them where
//!    [`SledStore::open`](super::SledStore::open) replays a log), which yields the store as
//!    it was when the tap went off: every key a tapped batch touched gets its last value,
//!    every other key the value the export read, which was its value throughout; the
//!    derived entries an import writes (holders, outboxes, the e-mail index) follow the same
//!    rule, because the batches that change an item change its derived entries with it.
//!    The audit trail is a prefix of the sequence when exported (events are staged in
//!    sequence order under the pending lock) and replay appends only what lies after it.
//!
//! What would make the copy incomplete fails the backup instead, with a message that says to
//! retry: a log write that failed while the tap ran (durable mode undoes changes with a
//! compensation record the tap does not see), or more than [`Tap::LIMIT`] bytes of changes
//! during the export (the tap lives in memory).

use super::durable::{Mark, Tap};
use super::{SledStore, wal};
use crate::store::StoreError;
use std::io::Write;
use std::path::Path;

impl Tap {
    /// The most changes a backup holds in memory while it reads the store.
    pub const LIMIT: usize = 256 << 20;

    /// Copies one encoded log record (called under the log's pending lock).
    pub(super) fn copy(&mut self, record: &[u8]) {
        if self.overflowed {
            return;
        }
        if self.records.len() + record.len() > Self::LIMIT {
            self.overflowed = true;
            self.records = Vec::new();
            return;
        }
        self.records.extend_from_slice(record);
        self.count += 1;
    }
}

/// The log records applied while a backup read the store, in apply order: the write-ahead
/// log's record format (`len`, `crc32`, payload), back to back.
#[derive(Debug, Default)]
pub struct LogTail {
    pub records: Vec<u8>,
    pub count: u64,
}

/// An online backup in progress: the tap is on. Dropped without [`BackupWindow::finish`]
/// (the client went away), it turns the tap off.
pub struct BackupWindow<'a> {
    store: &'a SledStore,
    since: Mark,
    losses: u64,
    open: bool,
}

fn retry(why: &str) -> StoreError {
    StoreError::Transfer(format!(
        "the backup was abandoned: {why}; nothing was written, run the backup again"
    ))
}

impl SledStore {
    /// Turns the tap on and waits until everything applied before it is on disk (see the
    /// module docs). Refused while another backup runs.
    pub async fn backup_begin(&self) -> Result<BackupWindow<'_>, StoreError> {
        let since = self.commits.mark();
        let losses = self.commits.losses();
        if !self.commits.tap_start() {
            return Err(StoreError::Transfer(
                "another backup of this server is running; wait for it to finish and try again"
                    .into(),
            ));
        }
        let window = BackupWindow {
            store: self,
            since,
            losses,
            open: true,
        };
        self.commits.commit_since(since).await?;
        Ok(window)
    }
}

impl BackupWindow<'_> {
    /// Turns the tap off, waits until every batch it copied is on disk, and returns the
    /// records; an error (saying to retry) if they cannot make the copy whole.
    pub async fn finish(mut self) -> Result<LogTail, StoreError> {
        self.open = false;
        let commits = &self.store.commits;
        let tap = commits.tap_stop().unwrap_or_default();
        if tap.overflowed {
            return Err(retry(&format!(
                "more than {} MiB of changes arrived while the store was read, more than a backup holds in memory; run it when the server is less busy",
                Tap::LIMIT >> 20
            )));
        }
        commits.commit_since(self.since).await.map_err(|e| {
            retry(&format!(
                "a change made during the backup could not be stored ({e})"
            ))
        })?;
        if commits.losses() != self.losses {
            return Err(retry(
                "a write-ahead log write failed during the backup and its changes were undone",
            ));
        }
        Ok(LogTail {
            records: tap.records,
            count: tap.count,
        })
    }
}

impl Drop for BackupWindow<'_> {
    fn drop(&mut self) {
        if self.open {
            self.store.commits.tap_stop();
        }
    }
}

/// Splits `records` (back-to-back log records) into whole records; `None` if one is cut
/// short or fails its checksum.
pub(crate) fn check_records(mut records: &[u8]) -> Option<u64> {
    let mut count = 0;
    while !records.is_empty() {
        let header: [u8; 8] = records.get(..8)?.try_into().ok()?;
        let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
        let payload = records.get(8..8 + len)?;
        if crc32fast::hash(payload) != crc {
            return None;
        }
        records = &records[8 + len..];
        count += 1;
    }
    Some(count)
}

/// Writes `chunks` of log records (each a whole number of records) into the write-ahead
/// log of the closed data directory `dir`, as a segment after any it has, so that the next
/// [`SledStore::open`] replays them. Synced before it returns.
pub fn write_log_tail<'a>(
    dir: &Path,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(), StoreError> {
    let wal_dir = dir.join("wal");
    let io = |source| StoreError::Io {
        path: wal_dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&wal_dir).map_err(io)?;
    let number = wal::segments(&wal_dir)
        .map_err(io)?
        .last()
        .map_or(1, |(n, _)| n + 1);
    let tmp = wal_dir.join("restore.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    let mut len = 0u64;
    for chunk in chunks {
        if !chunk.is_empty() {
            let block = wal::block(number, chunk);
            file.write_all(&block).map_err(io)?;
            len += block.len() as u64;
        }
    }
    // A segment's usual size: once replayed, the file is recycled as a spare like any other.
    file.set_len(len.max(wal::SEGMENT_BYTES)).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, wal_dir.join(format!("wal-{number:016}.log"))).map_err(io)?;
    std::fs::File::open(&wal_dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{IP, key_with_domains, open};
    use super::*;
    use crate::store::transfer::{ExportCursor, Item};

    async fn everything(store: &SledStore) -> Vec<Item> {
        let mut out = Vec::new();
        let mut cursor = Some(ExportCursor::start());
        while let Some(at) = cursor {
            let (items, next) = store.export(&at, 1000).await.unwrap();
            out.extend(items);
            cursor = next;
        }
        out
    }

    /// Writes between the pages of the export (to records already read, and to records not
    /// read yet) come back through the tapped records: the restored store is the source as
    /// of the tap's end, record for record, audit trail, holders and counts included.
    #[tokio::test]
    async fn a_fuzzy_export_plus_the_tapped_records_restores_the_store_as_of_the_end() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = open(a.path());
        let ip = IP.parse().unwrap();
        let first = key_with_domains(&source, &["a.example.org", "b.example.org"]).await;
        let second = key_with_domains(&source, &["c.example.org", "z.example.org"]).await;
        source.commit().await.unwrap();

        let window = source.backup_begin().await.unwrap();
        // A second backup waits for this one.
        assert!(source.backup_begin().await.is_err());
        let mut items = Vec::new();
        let mut cursor = Some(ExportCursor::start());
        let mut page = 0;
        let mut removed_after_read = false;
        while let Some(at) = cursor {
            let (got, next) = source.export(&at, 2).await.unwrap();
            items.extend(got);
            cursor = next;
            page += 1;
            match page {
                // Keys read: a new key, a domain added to a read key, one removed from the
                // first key (whose entries come later) and from the second.
                1 => {
                    key_with_domains(&source, &["n.example.org"]).await;
                    for (hash, name, add) in [
                        (&first, "d.example.org", true),
                        (&first, "a.example.org", false),
                        (&second, "z.example.org", false),
                    ] {
                        let domain = name.parse().unwrap();
                        if add {
                            source.add_domain(hash, &domain, ip, 5).await.unwrap();
                        } else {
                            assert!(source.remove_domain(hash, &domain, ip, 5).await.unwrap());
                        }
                    }
                    source.commit().await.unwrap();
                }
                _ if !removed_after_read
                    && items.iter().any(|i| {
                        matches!(i, Item::KeyDomain { hash, domain, .. }
                            if *hash == first && domain == "b.example.org")
                    }) =>
                {
                    // An entry already read is removed, and one removed earlier added back.
                    removed_after_read = true;
                    let b_name = "b.example.org".parse().unwrap();
                    assert!(source.remove_domain(&first, &b_name, ip, 6).await.unwrap());
                    let a_name = "a.example.org".parse().unwrap();
                    source.add_domain(&first, &a_name, ip, 6).await.unwrap();
                    source.commit().await.unwrap();
                }
                _ => {}
            }
        }
        assert!(removed_after_read);
        let tail = window.finish().await.unwrap();
        assert!(tail.count >= 6, "{} records tapped", tail.count);
        assert_eq!(check_records(&tail.records), Some(tail.count));
        let expected = everything(&source).await;
        source.close().await.unwrap();
        drop(source);

        let target = open(b.path());
        target.import(&items).await.unwrap();
        target.commit().await.unwrap();
        // Fuzzy: the export alone is not the store at the end.
        assert_ne!(everything(&target).await, expected);
        target.close().await.unwrap();
        drop(target);
        write_log_tail(b.path(), [tail.records.as_slice()]).unwrap();
        let restored = open(b.path());
        assert_eq!(everything(&restored).await, expected);
        let holders = |name: &str| {
            let store = &restored;
            let name = name.to_owned();
            async move { store.holders_of(&name).await.unwrap() }
        };
        assert_eq!(holders("a.example.org").await, vec![first]);
        assert!(holders("b.example.org").await.is_empty());
        assert!(holders("z.example.org").await.is_empty());
        assert_eq!(holders("d.example.org").await, vec![first]);
        // The tap is off: a new backup may start.
        drop(restored.backup_begin().await.unwrap());
    }
}
