//! The durable store: API keys (by hash), the domains registered under each key, per-domain
//! state, and an audit trail, in one embedded sled database.
//!
//! # Layout
//!
//! Everything lives in sled's default tree, one one-byte prefix per record kind; the table
//! and every key's encoder and decoder are in [`keyspace`].
//!
//! A registration (key-domain entry, holder entry, domain record, the key's counter, the
//! audit event, the bridge job) is one [`WriteBatch`]: one write-ahead log record, so a crash
//! never leaves half of it on disk, while sled itself takes the batch key by key
//! ([`WriteBatch`] says precisely what a batch promises and what it does not). Read-check-write
//! sequences (claim, add) run under one short write lock instead of sled transactions, which
//! the sled docs warn make every later operation pay a global read lock. The lock is held for
//! microseconds (in-memory sled work); the disk wait happens outside it, in [`SledStore::commit`].
//!
//! # Durability
//!
//! Write methods change sled's in-memory state and queue a write-ahead log record; nothing is
//! on disk yet. The caller must `commit().await` before acknowledging; see [`durable`].

mod acme_state;
mod bridge_state;
mod claim_caps;
mod confirmation;
pub mod durable;
mod holders;
mod inventory;
mod key_index;
mod keyspace;
mod link_tokens;
mod mail_outbox;
#[cfg(test)]
mod test_support;
pub mod wal;

use crate::apikey::KeyHash;
use crate::domain::Domain;
use crate::store::records::{
    AuditEvent, AuditKind, DomainRecord, KeyDomain, KeyRecord, Record, UnixTime,
};
use crate::store::{AddOutcome, ClaimCaps, ClaimOutcome, StoreError};
use durable::{DurabilityMode, GroupCommit, Mark, Timing};
use key_index::KeyIndex;
use keyspace::{api_key, audit, domain as domain_record, holder, key_domain};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use wal::WriteBatch;

/// The embedded store. Share it behind an `Arc`.
pub struct SledStore {
    db: sled::Db,
    commits: GroupCommit,
    bridge_enabled: AtomicBool,
    /// Claims queue a confirmation e-mail (the admin listener that serves the links is on).
    mail_enabled: AtomicBool,
    /// The last audit sequence number handed out.
    audit_seq: AtomicU64,
    /// Woken when a domain is queued for the bridge, so the worker need not poll.
    bridge_wakeup: tokio::sync::Notify,
    /// ACME bookkeeping on (`[sectigo.acme]`), and its worker's wake-up.
    acme_enabled: AtomicBool,
    acme_wakeup: tokio::sync::Notify,
    /// Where `list` pages start deep into a key (see [`key_index`]).
    key_index: KeyIndex,
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
        let replay = wal::replay_into(&db, &db_file, &db_path, &wal_dir)?;
        if !replay.clean {
            // After a crash sled may hold part of an unacknowledged registration; the one
            // derived value that can then disagree is a key's domain count.
            let recounted = recount_domains(&db)?;
            if recounted > 0 {
                tracing::warn!(
                    keys = recounted,
                    "recounted keys' domains after an unclean stop"
                );
            }
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
            mode,
            timing,
        )
        .map_err(io(&wal_dir))?;
        let last_audit = match db.scan_prefix([audit::PREFIX]).next_back() {
            Some(entry) => audit::decode(&entry?.0),
            None => 0,
        };
        let store = Self {
            db,
            commits,
            bridge_enabled: AtomicBool::new(false),
            mail_enabled: AtomicBool::new(false),
            audit_seq: AtomicU64::new(last_audit),
            bridge_wakeup: tokio::sync::Notify::new(),
            acme_enabled: AtomicBool::new(false),
            acme_wakeup: tokio::sync::Notify::new(),
            key_index: KeyIndex::default(),
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

    /// The group-commit machinery, for its counters and test fault injection.
    pub fn group_commit(&self) -> &GroupCommit {
        &self.commits
    }

    /// Resolves when a domain has been queued for the bridge since the last call.
    pub async fn bridge_queued(&self) {
        self.bridge_wakeup.notified().await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.commits.writers()
    }

    /// The record of a key, if the key is known.
    pub fn key(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        self.get(&api_key::encode(hash))
    }

    /// Records a freshly minted key, optionally already claimed by `email` (subject to the
    /// claim `caps`; then nothing is written and the outcome says which cap refused it).
    /// Returns [`ClaimOutcome::Claimed`] when the key was recorded.
    pub fn create_key(
        &self,
        hash: &KeyHash,
        email: Option<&str>,
        caps: &ClaimCaps,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<ClaimOutcome, StoreError> {
        let record = KeyRecord {
            created_at: now,
            creator_ip: ip,
            email: email.map(str::to_owned),
            claimed_at: email.map(|_| now),
            confirmed_at: None,
            revoked_at: None,
            domain_count: 0,
        };
        let mut batch = WriteBatch::default();
        let _guard = self.lock();
        if let Some(email) = email
            && let Err(cap) = self.claim_checks(&mut batch, hash, email, caps, ip, now)?
        {
            return Ok(ClaimOutcome::Capped(cap));
        }
        batch.insert(api_key::encode(hash), record.encode());
        self.audit(&mut batch, now, ip, hash, AuditKind::KeyCreated)?;
        if let Some(email) = email {
            let kind = AuditKind::KeyClaimed {
                email: email.to_owned(),
            };
            self.audit(&mut batch, now, ip, hash, kind)?;
            self.queue_confirmation_mail(&mut batch, hash, email, ip, now);
        }
        self.write(batch)?;
        Ok(ClaimOutcome::Claimed)
    }

    /// Binds a key to an e-mail address, creating the key (a client made it itself) when
    /// `may_create`. E-mail addresses are compared case-insensitively. A new claim is subject
    /// to the claim `caps` ([`ClaimOutcome::Capped`]).
    pub fn claim_key(
        &self,
        hash: &KeyHash,
        may_create: bool,
        email: &str,
        caps: &ClaimCaps,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<ClaimOutcome, StoreError> {
        let _guard = self.lock();
        let existing = self.key(hash)?;
        let is_new = existing.is_none();
        let record = match existing {
            Some(r) if r.revoked_at.is_some() => return Ok(ClaimOutcome::Revoked),
            Some(KeyRecord {
                email: Some(ref owner),
                ..
            }) => {
                return Ok(if owner.eq_ignore_ascii_case(email) {
                    ClaimOutcome::AlreadyClaimed
                } else {
                    ClaimOutcome::ClaimedByOther
                });
            }
            Some(r) => KeyRecord {
                email: Some(email.to_owned()),
                claimed_at: Some(now),
                ..r
            },
            None if !may_create => return Ok(ClaimOutcome::Unknown),
            None => KeyRecord {
                created_at: now,
                creator_ip: ip,
                email: Some(email.to_owned()),
                claimed_at: Some(now),
                confirmed_at: None,
                revoked_at: None,
                domain_count: 0,
            },
        };
        let mut batch = WriteBatch::default();
        if let Err(cap) = self.claim_checks(&mut batch, hash, email, caps, ip, now)? {
            return Ok(ClaimOutcome::Capped(cap));
        }
        batch.insert(api_key::encode(hash), record.encode());
        if is_new {
            self.audit(&mut batch, now, ip, hash, AuditKind::KeyCreated)?;
        }
        let kind = AuditKind::KeyClaimed {
            email: email.to_owned(),
        };
        self.audit(&mut batch, now, ip, hash, kind)?;
        self.queue_confirmation_mail(&mut batch, hash, email, ip, now);
        self.write(batch)?;
        Ok(ClaimOutcome::Claimed)
    }

    /// Marks a key revoked: it can no longer add, list or claim. Idempotent. Returns whether
    /// the key exists.
    pub fn revoke_key(
        &self,
        hash: &KeyHash,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let _guard = self.lock();
        let Some(mut record) = self.key(hash)? else {
            return Ok(false);
        };
        if record.revoked_at.is_none() {
            record.revoked_at = Some(now);
            let mut batch = WriteBatch::default();
            batch.insert(api_key::encode(hash), record.encode());
            self.audit(&mut batch, now, ip, hash, AuditKind::KeyRevoked)?;
            acme_state::touch_key(self, &mut batch, hash, now)?;
            self.write(batch)?;
            self.acme_wakeup.notify_one();
        }
        Ok(true)
    }

    /// Registers `domain` under a key the caller has checked exists and is not revoked.
    pub fn add_domain(
        &self,
        hash: &KeyHash,
        domain: &Domain,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<AddOutcome, StoreError> {
        let name = domain.to_string();
        let kd_key = key_domain::encode(hash, &name);
        let _guard = self.lock();
        if self.db.contains_key(&kd_key)? {
            return Ok(AddOutcome::AlreadyRegistered);
        }
        let Some(mut key) = self.key(hash)? else {
            return Ok(AddOutcome::UnknownKey);
        };
        key.domain_count += 1;
        let mut batch = WriteBatch::default();
        batch.insert(api_key::encode(hash), key.encode());
        batch.insert(kd_key, KeyDomain { added_at: now }.encode());
        batch.insert(holder::encode(&name, hash), Vec::new());
        let d_key = domain_record::encode(&name);
        let new_domain = !self.db.contains_key(&d_key)?;
        // A domain is queued for the bridge in the same batch that registers it, so an
        // acknowledged registration can never miss the bridge. Sectigo knows host names, not
        // ports: `www.example.org:8443` is bridged as `www.example.org`.
        let host = domain.host();
        let existing = if self.bridge_enabled() {
            self.bridge(host)?
        } else {
            None
        };
        let queued = self.bridge_enabled() && existing.is_none();
        // A confirmed key adding a domain an unconfirmed key holds lifts the wait for it.
        let released = match existing {
            Some(record) if key.confirmed_at.is_some() => {
                bridge_state::mark_key_confirmed(&mut batch, host, record, now)
            }
            _ => false,
        };
        if new_domain {
            let record = DomainRecord {
                first_added_at: now,
            };
            batch.insert(d_key, record.encode());
        }
        if queued {
            bridge_state::queue_new_domain(&mut batch, host, now, key.confirmed_at.is_some());
        }
        let kind = AuditKind::DomainAdded {
            domain: name.clone(),
        };
        self.audit(&mut batch, now, ip, hash, kind)?;
        acme_state::touch_key(self, &mut batch, hash, now)?;
        self.write(batch)?;
        self.acme_wakeup.notify_one();
        self.key_index.inserted(hash, name.as_bytes());
        if queued || released {
            self.bridge_wakeup.notify_one();
        }
        Ok(AddOutcome::Added)
    }

    /// Unregisters `domain` from a key. Returns whether it was registered. The domain's own
    /// record (and its Sectigo state) stays: other keys may hold it, and certline never
    /// deletes from Sectigo.
    pub fn remove_domain(
        &self,
        hash: &KeyHash,
        domain: &Domain,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let name = domain.to_string();
        let kd_key = key_domain::encode(hash, &name);
        let _guard = self.lock();
        if !self.db.contains_key(&kd_key)? {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        if let Some(mut key) = self.key(hash)? {
            key.domain_count = key.domain_count.saturating_sub(1);
            batch.insert(api_key::encode(hash), key.encode());
        }
        batch.remove(kd_key);
        batch.remove(holder::encode(&name, hash));
        let kind = AuditKind::DomainRemoved {
            domain: name.clone(),
        };
        self.audit(&mut batch, now, ip, hash, kind)?;
        acme_state::touch_key(self, &mut batch, hash, now)?;
        self.write(batch)?;
        self.acme_wakeup.notify_one();
        self.key_index.removed(hash, name.as_bytes());
        Ok(true)
    }

    /// When `domain` was registered under the key, if it is.
    pub fn key_domain(
        &self,
        hash: &KeyHash,
        domain: &Domain,
    ) -> Result<Option<KeyDomain>, StoreError> {
        self.get(&key_domain::encode(hash, domain.to_string()))
    }

    /// The domains registered under a key, in lexicographic order, skipping `offset`. Deep
    /// offsets start from the key's rank index ([`key_index`]) instead of reading every
    /// entry before them.
    pub fn key_domains(
        &self,
        hash: &KeyHash,
        offset: usize,
    ) -> impl Iterator<Item = Result<String, StoreError>> + '_ {
        let prefix = key_domain::prefix(hash);
        let start = self.page_start(hash, &prefix, offset as u64);
        let from = key_domain::encode(hash, start.from.as_deref().unwrap_or_default());
        self.db
            .range(from..)
            .take_while(move |entry| match entry {
                Ok((k, _)) => k.starts_with(&prefix),
                Err(_) => true,
            })
            .skip(start.skip as usize)
            .map(move |entry| {
                let (k, _) = entry?;
                Ok(key_domain::name(&k))
            })
    }

    /// Where the page at `offset` of a key starts; builds the key's rank index (one scan of
    /// its domains) when a deep page finds none.
    fn page_start(&self, hash: &KeyHash, prefix: &[u8], offset: u64) -> key_index::Start {
        if let Some(start) = self.key_index.start(hash, offset, self.commits.losses()) {
            return start;
        }
        let from_first = key_index::Start {
            from: None,
            skip: offset,
        };
        let ticket = self.key_index.begin_build(hash, self.commits.losses());
        let mut posts = Vec::new();
        for (rank, entry) in self.db.scan_prefix(prefix).keys().enumerate() {
            let Ok(k) = entry else {
                return from_first; // the scan that follows reports the error
            };
            if (rank as u64).is_multiple_of(key_index::SPACING) {
                posts.push(Box::<[u8]>::from(key_domain::name_bytes(&k)));
            }
        }
        let post = ((offset / key_index::SPACING) as usize).min(posts.len().saturating_sub(1));
        let start = match posts.get(post) {
            Some(name) => key_index::Start {
                from: Some(name.clone()),
                skip: offset - post as u64 * key_index::SPACING,
            },
            None => from_first,
        };
        self.key_index
            .finish_build(hash, ticket, posts, self.commits.losses());
        start
    }

    /// The shared record of a domain, if any key registered it.
    pub fn domain(&self, name: &str) -> Result<Option<DomainRecord>, StoreError> {
        self.get(&domain_record::encode(name))
    }

    /// Appends an event that no client caused (the bridge's own actions) to the audit trail.
    /// The source address is unspecified and the key id is `-`.
    pub fn record_event(&self, kind: AuditKind, now: UnixTime) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        self.audit_raw(
            &mut batch,
            now,
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            "-".to_owned(),
            kind,
        )?;
        self.write(batch)
    }

    /// The audit trail, oldest first.
    pub fn audit_events(&self) -> impl Iterator<Item = Result<AuditEvent, StoreError>> + '_ {
        self.db.scan_prefix([audit::PREFIX]).map(|entry| {
            let (_, v) = entry?;
            Ok(AuditEvent::decode(&v)?)
        })
    }

    /// Audit keys: nanoseconds since the epoch, forced to increase, so the trail sorts by
    /// time and a key is never reused (not even after a restart or a clock step back).
    fn next_audit_seq(&self, at: UnixTime) -> u64 {
        let now = chrono::Utc::now()
            .timestamp_nanos_opt()
            .unwrap_or(at.saturating_mul(1_000_000_000)) as u64;
        let mut previous = self.audit_seq.load(Ordering::SeqCst);
        loop {
            let next = now.max(previous + 1);
            match self.audit_seq.compare_exchange(
                previous,
                next,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return next,
                Err(actual) => previous = actual,
            }
        }
    }

    fn get<R: Record>(&self, key: &[u8]) -> Result<Option<R>, StoreError> {
        match self.db.get(key)? {
            Some(bytes) => Ok(Some(R::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn audit(
        &self,
        batch: &mut WriteBatch,
        at: UnixTime,
        ip: IpAddr,
        hash: &KeyHash,
        kind: AuditKind,
    ) -> Result<(), StoreError> {
        self.audit_raw(batch, at, ip, hash.id(), kind)
    }

    fn audit_raw(
        &self,
        batch: &mut WriteBatch,
        at: UnixTime,
        ip: IpAddr,
        key_id: String,
        kind: AuditKind,
    ) -> Result<(), StoreError> {
        let key = audit::encode(self.next_audit_seq(at));
        let event = AuditEvent {
            at,
            ip,
            key_id,
            kind,
        };
        // Its log line is written once the batch is on disk (see `durable`).
        batch.audit(key, event);
        Ok(())
    }
}

/// After a crash, sled may hold changes it wrote out on its own that never reached the log
/// (so were never acknowledged), while replaying the log ([`wal::replay_into`]) restores the
/// last logged version of each key record. A key's `domain_count` can then disagree with its domain entries (found
/// by tests/crash.rs: `list` showed `total=` below the number of domains it listed). The
/// entries are what `list` shows, so the count is made to match them. Returns how many keys
/// were corrected.
fn recount_domains(db: &sled::Db) -> Result<usize, StoreError> {
    let mut corrected = 0;
    for entry in db.scan_prefix([api_key::PREFIX]) {
        let (k, v) = entry?;
        let Some(hash) = api_key::decode(&k) else {
            continue;
        };
        let mut record = KeyRecord::decode(&v)?;
        let mut count = 0u64;
        for entry in db.scan_prefix(key_domain::prefix(&hash)) {
            entry?;
            count += 1;
        }
        if record.domain_count != count {
            record.domain_count = count;
            db.insert(k, record.encode())?;
            corrected += 1;
        }
    }
    Ok(corrected)
}

#[cfg(test)]
mod tests {
    use super::test_support::{open, open_in};
    use super::*;
    use std::time::Duration;

    /// Regression: the state kill -9 can leave. sled wrote out a registration on its own
    /// (the key record with the new count and the domain entry) that never reached the log;
    /// replaying the log then restored the older key record, so `domain_count` said 1 while
    /// two domains were listed.
    #[test]
    fn replay_recounts_domains_that_sled_kept_beyond_the_log() {
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
                    .unwrap();
                store.add_domain(&hash, &first, ip, 0).unwrap();
                store.commit().await.unwrap();
                // Straight to sled, bypassing the log: an unacknowledged add that sled
                // persisted by itself before the crash.
                let mut key = store.key(&hash).unwrap().unwrap();
                key.domain_count += 1;
                let mut batch = sled::Batch::default();
                batch.insert(api_key::encode(&hash), key.encode());
                batch.insert(
                    key_domain::encode(&hash, "b.example.org"),
                    KeyDomain { added_at: 0 }.encode(),
                );
                store.db.apply_batch(batch).unwrap();
                store.db.flush().unwrap();
                assert_eq!(store.key(&hash).unwrap().unwrap().domain_count, 2);
            });
            // The runtime and the store go away without `close`: no checkpoint, as at a crash.
        }
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let store = open(dir.path());
            let listed = store.key_domains(&hash, 0).count() as u64;
            assert_eq!(listed, 2);
            assert_eq!(store.key(&hash).unwrap().unwrap().domain_count, listed);
            store.close().await.unwrap();
        });
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

    fn domain_added(store: &SledStore, name: &str) -> bool {
        store
            .audit_events()
            .map(Result::unwrap)
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
            .unwrap();
        store.add_domain(&hash, &kept, ip, 0).unwrap();
        store.commit().await.unwrap();

        let since = store.mark();
        store.group_commit().inject_flush_failures(1);
        store.add_domain(&hash, &refused, ip, 0).unwrap();
        assert!(store.commit_since(since).await.is_err());
        assert_eq!(store.key_domain(&hash, &refused).unwrap(), None);
        assert_eq!(store.key(&hash).unwrap().unwrap().domain_count, 1);
        assert!(!domain_added(&store, "refused.example.org"));
        // Refused up front until the log is mended, without touching the database.
        let refusal = store.add_domain(&hash, &later, ip, 0).unwrap_err();
        assert!(refusal.to_string().contains("free space"), "{refusal}");
        assert_eq!(store.key_domain(&hash, &later).unwrap(), None);

        wait_until_writable(&store).await;
        let since = store.mark();
        store.add_domain(&hash, &later, ip, 0).unwrap();
        store.commit_since(since).await.unwrap();
        assert_eq!(store.key(&hash).unwrap().unwrap().domain_count, 2);
        store.close().await.unwrap();
        drop(store);

        let store = open(dir.path());
        assert_eq!(store.key_domain(&hash, &refused).unwrap(), None);
        assert!(store.key_domain(&hash, &later).unwrap().is_some());
        assert_eq!(store.key(&hash).unwrap().unwrap().domain_count, 2);
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
            .unwrap();
        store.group_commit().inject_flush_failures(1);
        store.add_domain(&hash, &domain, ip, 0).unwrap();
        store.commit().await.unwrap();
        assert!(store.flush().await.is_err());
        assert!(store.key_domain(&hash, &domain).unwrap().is_some());
        wait_until_writable(&store).await;
        store.flush().await.unwrap();
        store.close().await.unwrap();
        drop(store);
        let store = open_in(dir.path(), DurabilityMode::Relaxed);
        assert!(store.key_domain(&hash, &domain).unwrap().is_some());
        assert!(domain_added(&store, "relaxed.example.org"));
        store.close().await.unwrap();
    }
}
