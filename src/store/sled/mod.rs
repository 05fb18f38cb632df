//! The embedded backend: one sled database, its write-ahead log and group commit, in the data
//! directory. [`SledStore`] implements every method of the [`Store`](crate::store::Store)
//! facade under the same name and signature; the facade's docs say what each promises.
//!
//! # Layout
//!
//! Everything lives in sled's default tree, one one-byte prefix per record kind; the table
//! and every key's encoder and decoder are in [`keyspace`], and no other file builds or takes
//! apart a key. One concept per file: API keys ([`keys`]), a key's domains and `list`'s
//! pages ([`domains`], with [`key_index`] for deep pages and [`holders`] for who holds a
//! domain), the audit trail ([`audit`]), the claim caps ([`claim_caps`]), the mailed links
//! ([`link_tokens`]), confirming a key ([`confirmation`]), the mail outbox ([`mail_outbox`]),
//! the bridge's and the ACME worker's state and outboxes ([`bridge_state`], [`acme_state`]),
//! the operator's reads ([`inventory`]), moving the store to another backend
//! ([`transfer`]) and online backups ([`backup`]). Start-up is [`SledStore::open`]: it replays the log
//! ([`wal::replay_into`]) and, after an unclean stop, rebuilds the holder index. A key's
//! domain count is not stored: it is derived from its domain entries ([`domain_counts`]).
//!
//! A registration (key-domain entry, holder entry, domain record, the audit event, the
//! bridge job) is one [`WriteBatch`]: one write-ahead log record, so a crash
//! never leaves half of it on disk, while sled itself takes the batch key by key
//! ([`WriteBatch`] says precisely what a batch promises and what it does not). Read-check-write
//! sequences (claim, add) run under one short write lock instead of sled transactions, which
//! the sled docs warn make every later operation pay a global read lock. The lock is held for
//! microseconds (in-memory sled work); the disk wait happens outside it, in [`SledStore::commit`].
//!
//! # Durability
//!
//! Write methods change sled's in-memory state and queue a write-ahead log record; nothing is
//! on disk yet. The caller must `commit().await` before acknowledging; see [`durable`]. Reads
//! and writes are `async fn`s around that in-memory work, run in the caller's task; only the
//! long reads of the admin API and the metrics go to the blocking pool
//! ([`SledStore::off_runtime`]).

mod acme_state;
mod audit;
mod audit_trail;
pub mod backup;
mod bridge_state;
mod claim_caps;
mod confirmation;
mod domain_counts;
mod domains;
pub mod durable;
mod holders;
mod inventory;
mod key_index;
mod keys;
mod keyspace;
mod link_tokens;
mod mail_outbox;
#[cfg(test)]
mod test_support;
mod transfer;
pub mod wal;

use crate::store::StoreError;
use crate::store::records::Record;
use audit_trail::AuditTrail;
use domain_counts::DomainCounts;
use durable::{DurabilityMode, FlushError, GroupCommit, Mark, Timing};
use key_index::KeyIndex;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use wal::WriteBatch;

/// The embedded store. Share it behind an `Arc`.
pub struct SledStore {
    db: sled::Db,
    commits: GroupCommit,
    bridge_enabled: AtomicBool,
    /// Claims queue a confirmation e-mail (the admin listener that serves the links is on).
    mail_enabled: AtomicBool,
    /// Woken when a domain is queued for the bridge, so the worker need not poll.
    bridge_wakeup: tokio::sync::Notify,
    /// ACME bookkeeping on (`[sectigo.acme]`), and its worker's wake-up.
    acme_enabled: AtomicBool,
    acme_wakeup: tokio::sync::Notify,
    /// Where `list` pages start deep into a key (see [`key_index`]).
    key_index: KeyIndex,
    /// How many domains each key holds (see [`domain_counts`]).
    domain_counts: DomainCounts,
}

impl SledStore {
    /// Opens (or creates) the database in `dir`, replays what its write-ahead log holds
    /// beyond sled's last checkpoint, and starts the flusher. Must be called inside a tokio
    /// runtime.
    pub fn open(dir: &Path, mode: DurabilityMode, timing: Timing) -> Result<Self, StoreError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| StoreError::Io { path, source }
        };
        let db = sled::Config::new()
            .path(dir)
            // The write-ahead log makes writes durable; sled is flushed at checkpoints. sled's
            // own background flush (every 500 ms by default) cost a quarter of the server's
            // time in `sync_file_range` under load and competed with the log's syncs.
            .flush_every_ms(None)
            .open()
            .map_err(|source| StoreError::Open {
                path: dir.display().to_string(),
                source,
            })?;
        let db_path = dir.join("db");
        let db_file = std::fs::File::open(&db_path).map_err(io(&db_path))?;
        let wal_dir = dir.join("wal");
        // After a crash sled may hold part of an unacknowledged registration. Keys' domain
        // counts are derived from their entries ([`domain_counts`]), so they cannot disagree;
        // the holder index is checked below.
        let trail = std::sync::Arc::new(AuditTrail::open(dir)?);
        let replay = wal::replay_into(&db, &db_file, &db_path, &wal_dir, &trail)?;
        // A database from before the trail had its own file keeps it in sled: moved once.
        let moved = trail.migrate_from(&db)?;
        if moved > 0 {
            tracing::info!(
                events = moved,
                "moved the audit trail out of the database into {}",
                audit_trail::FILE_NAME
            );
        }
        // The directory entries of sled's files must survive a power cut too.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        let commits = GroupCommit::start(
            db.clone(),
            db_file,
            wal_dir.clone(),
            replay.next_segment,
            trail,
            mode,
            timing,
        )
        .map_err(io(&wal_dir))?;
        let store = Self {
            db,
            commits,
            bridge_enabled: AtomicBool::new(false),
            mail_enabled: AtomicBool::new(false),
            bridge_wakeup: tokio::sync::Notify::new(),
            acme_enabled: AtomicBool::new(false),
            acme_wakeup: tokio::sync::Notify::new(),
            key_index: KeyIndex::default(),
            domain_counts: DomainCounts::default(),
        };
        store.migrate_email_index()?;
        store.ensure_holder_index(replay.clean)?;
        Ok(store)
    }

    /// Applies a batch: to sled, and to the write-ahead log in the same order. Refused while
    /// the store does not take writes (see [`durable`]).
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        Ok(self.commits.apply(batch)?)
    }

    /// The point in history a request starts from: take it before reading or writing, and
    /// pass it to [`SledStore::commit_since`] before answering.
    pub fn mark(&self) -> Mark {
        self.commits.mark()
    }

    /// Waits until everything applied so far is durable (durable mode; at once in relaxed
    /// mode). An error if anything applied since `since` was undone because its log write
    /// failed: then what the caller wrote or read was not stored, and the caller answers
    /// `500` instead of showing it.
    pub async fn commit_since(&self, since: Mark) -> Result<(), StoreError> {
        Ok(self.commits.commit_since(since).await?)
    }

    /// Waits until every change made before the call is durable (see [`durable`]), for
    /// callers that took no [`Mark`] before writing. A change undone between the write and
    /// this call leaves the log marked broken for at least a second, which this refuses;
    /// [`SledStore::commit_since`] needs no such margin.
    pub async fn commit(&self) -> Result<(), StoreError> {
        let since = self.commits.mark();
        self.commits.log_intact()?;
        Ok(self.commits.commit_since(since).await?)
    }

    /// `Ok` while the store takes writes; otherwise why not and what to do (for `/readyz`).
    pub fn writable(&self) -> Result<(), StoreError> {
        Ok(self.commits.writable()?)
    }

    /// Cancelled when the store has failed in a way only a restart mends: the server exits.
    pub fn fatal(&self) -> &tokio_util::sync::CancellationToken {
        self.commits.fatal()
    }

    /// Flushes and syncs now, whatever the mode.
    pub async fn flush(&self) -> Result<(), StoreError> {
        Ok(self.commits.flush_now().await?)
    }

    /// Flushes a last time and stops the background flusher (shutdown). Later commits fail;
    /// the database closes when the last handle on the store is dropped.
    pub async fn close(&self) -> Result<(), StoreError> {
        Ok(self.commits.close().await?)
    }

    /// The group-commit machinery, for its counters and test fault injection (always there:
    /// the facade's `Option` is for backends without one).
    pub fn group_commit(&self) -> Option<&GroupCommit> {
        Some(&self.commits)
    }

    /// Resolves when a domain has been queued for the bridge since the last call.
    pub async fn bridge_queued(&self) {
        self.bridge_wakeup.notified().await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.commits.writers()
    }

    fn get<R: Record>(&self, key: &[u8]) -> Result<Option<R>, StoreError> {
        get_in(&self.db, key)
    }

    /// Runs a long read (an admin listing or count, a metrics scan) on tokio's blocking pool,
    /// so that thousands of records read from sled, which may wait for its disk, do not hold
    /// up the runtime's other tasks. Not for the line protocol's short reads.
    async fn off_runtime<T: Send + 'static>(
        &self,
        read: impl FnOnce(&sled::Db) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || read(&db)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(StoreError::Flush(FlushError(
                "the server is shutting down: the read was not run".into(),
            ))),
        }
    }
}

/// How many entries have `prefix` (a scan: for metrics).
fn count_prefix(db: &sled::Db, prefix: u8) -> Result<usize, StoreError> {
    let mut n = 0;
    for entry in db.scan_prefix([prefix]) {
        entry?;
        n += 1;
    }
    Ok(n)
}

/// Reads and decodes the record at `key` (for reads that run off the runtime, with a handle
/// on the database instead of the store).
fn get_in<R: Record>(db: &sled::Db, key: &[u8]) -> Result<Option<R>, StoreError> {
    match db.get(key)? {
        Some(bytes) => Ok(Some(R::decode(&bytes)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::keyspace::{api_key, key_domain};
    use super::test_support::{audit_trail, open, open_in};
    use super::*;
    use crate::domain::Domain;
    use crate::store::records::AuditEvent;
    use crate::store::{AuditKind, ClaimCaps, KeyDomain};
    use std::net::IpAddr;
    use std::time::Duration;

    /// Regression: the state kill -9 can leave. sled wrote out a registration on its own
    /// (the domain entry, and in the layout before derived counts the key record with the
    /// new count) that never reached the log; replaying the log then restored the older key
    /// record, so `domain_count` said 1 while two domains were listed. The count is now the
    /// entries', whatever a key record written by an older version says.
    #[test]
    fn a_keys_count_is_its_entries_after_a_crash_and_whatever_its_record_says() {
        let dir = tempfile::tempdir().unwrap();
        let hash = crate::apikey::ApiKey::generate().hash();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let first: Domain = "a.example.org".parse().unwrap();
        {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let store = open(dir.path());
                store
                    .create_key(&hash, None, &ClaimCaps::default(), ip, 0)
                    .await
                    .unwrap();
                store.add_domain(&hash, &first, ip, 0).await.unwrap();
                store.commit().await.unwrap();
                // Straight to sled, bypassing the log: an unacknowledged add that sled
                // persisted by itself before the crash, with a key record whose stored count
                // (as older versions kept it) is wrong.
                let mut key = store.key(&hash).await.unwrap().unwrap();
                key.domain_count = 7;
                let mut batch = sled::Batch::default();
                batch.insert(api_key::encode(&hash), key.encode());
                batch.insert(
                    key_domain::encode(&hash, "b.example.org"),
                    KeyDomain { added_at: 0 }.encode(),
                );
                store.db.apply_batch(batch).unwrap();
                store.db.flush().unwrap();
            });
            // The runtime and the store go away without `close`: no checkpoint, as at a crash.
        }
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let store = open(dir.path());
            let listed = store.key_domains(&hash, 0, usize::MAX).await.unwrap().len() as u64;
            assert_eq!(listed, 2);
            assert_eq!(
                store.key(&hash).await.unwrap().unwrap().domain_count,
                listed
            );
            let page = store.keys_after(None, 10).await.unwrap();
            assert_eq!(page[0].1.domain_count, listed, "the admin listing too");
            store.remove_domain(&hash, &first, ip, 0).await.unwrap();
            store.commit().await.unwrap();
            assert_eq!(store.key(&hash).await.unwrap().unwrap().domain_count, 1);
            store.close().await.unwrap();
        });
    }

    /// A data directory from before the audit trail had its own file (events as sled
    /// records under `A`) opens: its events are moved into the file, in order, sled forgets
    /// them, and new events are numbered after them. An unclean stop after the move (sled
    /// still holding copies) moves nothing twice.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_older_database_has_its_audit_trail_moved_into_the_file() {
        use super::keyspace::audit;
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let old: Vec<(u64, AuditEvent)> = (1..=3u64)
            .map(|i| {
                let event = AuditEvent {
                    at: i as i64,
                    ip,
                    key_id: "-".into(),
                    kind: AuditKind::DomainAdded {
                        domain: format!("old{i}.example.org"),
                    },
                };
                (i * 1000, event)
            })
            .collect();
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            for (seq, event) in &old {
                db.insert(audit::encode(*seq), event.encode()).unwrap();
            }
            db.flush().unwrap();
        }
        let store = open(dir.path());
        assert_eq!(store.audit_events(None, 10).await.unwrap(), old);
        assert_eq!(store.db.scan_prefix([audit::PREFIX]).count(), 0);
        let hash = crate::apikey::ApiKey::generate().hash();
        store
            .create_key(&hash, None, &ClaimCaps::default(), ip, 0)
            .await
            .unwrap();
        store.commit().await.unwrap();
        let all = store.audit_events(None, 10).await.unwrap();
        assert_eq!(all.len(), 4);
        assert!(all[3].0 > old[2].0);
        // As if sled had kept a copy through a crash after the move.
        store
            .db
            .insert(audit::encode(old[0].0), old[0].1.encode())
            .unwrap();
        store.close().await.unwrap();
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.audit_events(None, 10).await.unwrap(), all);
        store.close().await.unwrap();
    }

    async fn wait_until_writable(store: &SledStore) {
        let started = std::time::Instant::now();
        while store.writable().is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "never writable again"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn domain_added(store: &SledStore, name: &str) -> bool {
        audit_trail(store)
            .await
            .iter()
            .any(|e| matches!(&e.kind, AuditKind::DomainAdded { domain } if domain == name))
    }

    /// Durable mode: a change whose log write failed is undone in memory (the key's count,
    /// the domain entry, its audit event), the request that made it learns so, and it is not
    /// there after a restart either; the store takes writes again by itself.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_log_write_is_undone_and_writes_resume() {
        let dir = tempfile::tempdir().unwrap();
        let hash = crate::apikey::ApiKey::generate().hash();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (kept, refused, later): (Domain, Domain, Domain) = (
            "kept.example.org".parse().unwrap(),
            "refused.example.org".parse().unwrap(),
            "later.example.org".parse().unwrap(),
        );
        let store = open(dir.path());
        store
            .create_key(&hash, None, &ClaimCaps::default(), ip, 0)
            .await
            .unwrap();
        store.add_domain(&hash, &kept, ip, 0).await.unwrap();
        store.commit().await.unwrap();

        let since = store.mark();
        store.commits.inject_flush_failures(1);
        store.add_domain(&hash, &refused, ip, 0).await.unwrap();
        assert!(store.commit_since(since).await.is_err());
        assert_eq!(store.key_domain(&hash, &refused).await.unwrap(), None);
        assert_eq!(store.key(&hash).await.unwrap().unwrap().domain_count, 1);
        assert!(!domain_added(&store, "refused.example.org").await);
        // Refused up front until the log is mended, without touching the database.
        let refusal = store.add_domain(&hash, &later, ip, 0).await.unwrap_err();
        assert!(refusal.to_string().contains("free space"), "{refusal}");
        assert_eq!(store.key_domain(&hash, &later).await.unwrap(), None);

        wait_until_writable(&store).await;
        let since = store.mark();
        store.add_domain(&hash, &later, ip, 0).await.unwrap();
        store.commit_since(since).await.unwrap();
        assert_eq!(store.key(&hash).await.unwrap().unwrap().domain_count, 2);
        store.close().await.unwrap();
        drop(store);

        let store = open(dir.path());
        assert_eq!(store.key_domain(&hash, &refused).await.unwrap(), None);
        assert!(store.key_domain(&hash, &later).await.unwrap().is_some());
        assert_eq!(store.key(&hash).await.unwrap().unwrap().domain_count, 2);
        store.close().await.unwrap();
    }

    /// Relaxed mode acknowledged the change already: a failed log write keeps it, and it is
    /// written once the log works again.
    #[tokio::test(flavor = "multi_thread")]
    async fn relaxed_mode_keeps_an_acknowledged_change_through_a_failed_log_write() {
        let dir = tempfile::tempdir().unwrap();
        let hash = crate::apikey::ApiKey::generate().hash();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let domain: Domain = "relaxed.example.org".parse().unwrap();
        let store = open_in(dir.path(), DurabilityMode::Relaxed);
        store
            .create_key(&hash, None, &ClaimCaps::default(), ip, 0)
            .await
            .unwrap();
        store.commits.inject_flush_failures(1);
        store.add_domain(&hash, &domain, ip, 0).await.unwrap();
        store.commit().await.unwrap();
        assert!(store.flush().await.is_err());
        assert!(store.key_domain(&hash, &domain).await.unwrap().is_some());
        wait_until_writable(&store).await;
        store.flush().await.unwrap();
        store.close().await.unwrap();
        drop(store);
        let store = open_in(dir.path(), DurabilityMode::Relaxed);
        assert!(store.key_domain(&hash, &domain).await.unwrap().is_some());
        assert!(domain_added(&store, "relaxed.example.org").await);
        store.close().await.unwrap();
    }
}
