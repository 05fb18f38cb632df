//! The durable store: API keys (by hash), the domains registered under each key, per-domain
//! state, the outboxes the background workers drain, and an audit trail.
//!
//! # One facade, one backend per deployment
//!
//! [`Store`] is what every layer above this module talks to; it hands each call to the
//! backend the store was opened with (`enum Backend`), and nothing above `store/` knows which
//! one that is. Today there is one, `sled/` (embedded: a sled database, a write-ahead log and
//! group commit, in the data directory). A backend is one enum arm and one arm of the
//! `dispatch!` macro; each backend implements every method below as an inherent method of
//! the same name and signature (ARCHITECTURE.md §3).
//!
//! The types every backend shares live here, one concept per file: the records
//! ([`records`], `acme_record.rs`), what the read-check-write operations did
//! (`outcomes.rs`), the claim caps (`claim_caps.rs`), what listings return (`inventory.rs`,
//! `due_mail.rs`) and [`StoreError`] (`error.rs`).
//!
//! # What every backend promises
//!
//! * **Committed before acknowledged.** A write method changes the store; the caller awaits
//!   [`Store::commit`] (or [`Store::commit_since`] with the [`Mark`] it took first) before it
//!   answers, and only then is the change durable.
//! * **No reply shows what is not committed.** A request takes a [`Mark`] before it reads or
//!   writes and awaits [`Store::commit_since`] before it answers; that fails if anything it
//!   could have seen was lost.
//! * **Side effects ride with their cause.** A registration queues its bridge job, a claim
//!   its confirmation mail, an add or remove its ACME touch, in the same write.
//! * add, remove and claim are idempotent; a key's `domain_count` equals its domains; the
//!   claim caps hold across concurrent callers; audit events exist only for committed changes.

mod acme_record;
pub mod backup;
mod claim_caps;
pub mod config;
mod due_mail;
mod error;
mod inventory;
mod outcomes;
pub mod postgres;
pub mod records;
mod sled;
pub mod transfer;

use self::sled::SledStore;
pub use self::sled::durable::{DurabilityMode, FlushError, FlushStats, GroupCommit, Mark, Timing};
pub use acme_record::{AcmeKeyRecord, AcmeMapping, StoredEab};
pub use claim_caps::{CapExceeded, ClaimCaps};
pub use config::StoreConfig;
pub use due_mail::DueMail;
pub use error::StoreError;
pub use inventory::{Holder, InventoryRow};
pub use outcomes::{AddOutcome, ClaimOutcome, LinkOutcome, OperatorConfirmOutcome, RequeueOutcome};
pub use records::{
    AuditEvent, AuditKind, BridgeError, BridgePhase, BridgeRecord, DcvProgress, DcvRecordType,
    DcvState, DomainRecord, KeyDomain, KeyRecord, LinkAction, LinkToken, MailJob, Record, UnixTime,
    rfc3339,
};

use crate::apikey::KeyHash;
use crate::domain::Domain;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

/// The store. Share it behind an `Arc`.
pub struct Store {
    backend: Backend,
}

/// The backend a store was opened with.
enum Backend {
    /// Embedded: sled, the write-ahead log and group commit, in the data directory.
    Sled(SledStore),
    /// PostgreSQL: several instances share one database.
    Postgres(postgres::PgStore),
}

/// Hands a call to the store's backend: `dispatch!(self, b => b.method(args).await)`. A new
/// backend adds its arm here, and every method of [`Store`] serves it.
macro_rules! dispatch {
    ($store:expr, $backend:ident => $call:expr) => {
        match &$store.backend {
            Backend::Sled($backend) => $call,
            Backend::Postgres($backend) => $call,
        }
    };
}

impl Store {
    /// Opens (or creates) the embedded store in `dir`: replays what its write-ahead log holds
    /// and starts the group-commit flusher. Must be called inside a tokio runtime.
    pub fn open(dir: &Path, mode: DurabilityMode, timing: Timing) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Sled(SledStore::open(dir, mode, timing)?),
        })
    }

    /// Connects to PostgreSQL and applies the schema migrations this binary knows (under an
    /// advisory lock, so instances starting together do not race).
    pub async fn open_postgres(config: &postgres::PostgresConfig) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Postgres(postgres::PgStore::connect(config).await?),
        })
    }

    /// Opens the backend `[store]` chooses: sled in `dir` (with the durability settings), or
    /// PostgreSQL. Must be called inside a tokio runtime.
    pub async fn open_configured(
        config: &StoreConfig,
        dir: &Path,
        mode: DurabilityMode,
        timing: Timing,
    ) -> Result<Self, StoreError> {
        match config.postgres() {
            Some(pg) => Self::open_postgres(pg).await,
            None => Self::open(dir, mode, timing),
        }
    }

    /// Which backend this is, for the start-up log line and metrics: `sled` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Sled(_) => "sled",
            Backend::Postgres(_) => "postgres",
        }
    }

    // ---- Durability and lifecycle ----

    /// The point in history a request starts from: take it before reading or writing, and
    /// pass it to [`Store::commit_since`] before answering.
    pub fn mark(&self) -> Mark {
        dispatch!(self, b => b.mark())
    }

    /// Waits until everything applied so far is committed. An error if anything applied since
    /// `since` was lost instead (its log write failed): then what the caller wrote or read was
    /// not stored, and the caller answers `500` instead of showing it.
    pub async fn commit_since(&self, since: Mark) -> Result<(), StoreError> {
        dispatch!(self, b => b.commit_since(since).await)
    }

    /// Waits until every change made before the call is committed, for callers that took no
    /// [`Mark`] before writing.
    pub async fn commit(&self) -> Result<(), StoreError> {
        dispatch!(self, b => b.commit().await)
    }

    /// `Ok` while the store takes writes; otherwise why not and what to do (for `/readyz`).
    pub fn writable(&self) -> Result<(), StoreError> {
        dispatch!(self, b => b.writable())
    }

    /// Cancelled when the store has failed in a way only a restart mends: the server exits.
    pub fn fatal(&self) -> &tokio_util::sync::CancellationToken {
        dispatch!(self, b => b.fatal())
    }

    /// Makes everything applied so far durable now, whatever the durability mode.
    pub async fn flush(&self) -> Result<(), StoreError> {
        dispatch!(self, b => b.flush().await)
    }

    /// Flushes a last time and stops the background work (shutdown). Later commits fail.
    pub async fn close(&self) -> Result<(), StoreError> {
        dispatch!(self, b => b.close().await)
    }

    /// The group-commit machinery (counters, test fault injection), for a backend that has
    /// one.
    pub fn group_commit(&self) -> Option<&GroupCommit> {
        dispatch!(self, b => b.group_commit())
    }

    /// How many certline instances share this store now, this one included, as a watch the
    /// Sectigo client follows to take its share of the deployment's request budget. Always 1
    /// on the embedded store (one process owns the data directory); on PostgreSQL it follows
    /// the instances' heartbeats (`postgres/instances.rs`).
    pub fn live_instances(&self) -> tokio::sync::watch::Receiver<usize> {
        match &self.backend {
            // The sender goes at once: the value stays 1 and never changes.
            Backend::Sled(_) => tokio::sync::watch::channel(1).1,
            Backend::Postgres(b) => b.live_instances(),
        }
    }

    /// Resolves when a domain has been queued for the bridge since the last call.
    pub async fn bridge_queued(&self) {
        dispatch!(self, b => b.bridge_queued().await)
    }

    /// Resolves when a key has been touched for the ACME worker since the last call.
    pub async fn acme_queued(&self) {
        dispatch!(self, b => b.acme_queued().await)
    }

    // ---- Keys, domains, audit ----

    /// The record of a key, if the key is known.
    pub async fn key(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        dispatch!(self, b => b.key(hash).await)
    }

    /// Records a freshly minted key, optionally already claimed by `email` (subject to the
    /// claim `caps`; then nothing is written and the outcome says which cap refused it).
    /// Returns [`ClaimOutcome::Claimed`] when the key was recorded.
    pub async fn create_key(
        &self,
        hash: &KeyHash,
        email: Option<&str>,
        caps: &ClaimCaps,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<ClaimOutcome, StoreError> {
        dispatch!(self, b => b.create_key(hash, email, caps, ip, now).await)
    }

    /// Binds a key to an e-mail address, creating the key (a client made it itself) when
    /// `may_create`. E-mail addresses are compared case-insensitively. A new claim is subject
    /// to the claim `caps` ([`ClaimOutcome::Capped`]) and queues its confirmation mail.
    pub async fn claim_key(
        &self,
        hash: &KeyHash,
        may_create: bool,
        email: &str,
        caps: &ClaimCaps,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<ClaimOutcome, StoreError> {
        dispatch!(self, b => b.claim_key(hash, may_create, email, caps, ip, now).await)
    }

    /// Marks a key revoked: it can no longer add, list or claim. Idempotent. Returns whether
    /// the key exists.
    pub async fn revoke_key(
        &self,
        hash: &KeyHash,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        dispatch!(self, b => b.revoke_key(hash, ip, now).await)
    }

    /// Registers `domain` under a key the caller has checked exists and is not revoked,
    /// queueing the bridge (when enabled) and touching the key for ACME in the same write.
    pub async fn add_domain(
        &self,
        hash: &KeyHash,
        domain: &Domain,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<AddOutcome, StoreError> {
        dispatch!(self, b => b.add_domain(hash, domain, ip, now).await)
    }

    /// Unregisters `domain` from a key. Returns whether it was registered. The domain's own
    /// record (and its Sectigo state) stays: other keys may hold it, and certline never
    /// deletes from Sectigo.
    pub async fn remove_domain(
        &self,
        hash: &KeyHash,
        domain: &Domain,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        dispatch!(self, b => b.remove_domain(hash, domain, ip, now).await)
    }

    /// When `domain` was registered under the key, if it is.
    pub async fn key_domain(
        &self,
        hash: &KeyHash,
        domain: &Domain,
    ) -> Result<Option<KeyDomain>, StoreError> {
        dispatch!(self, b => b.key_domain(hash, domain).await)
    }

    /// Up to `limit` of the domains registered under a key, in lexicographic order, skipping
    /// the first `offset`.
    pub async fn key_domains(
        &self,
        hash: &KeyHash,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        dispatch!(self, b => b.key_domains(hash, offset, limit).await)
    }

    /// The shared record of a domain, if any key registered it.
    pub async fn domain(&self, name: &str) -> Result<Option<DomainRecord>, StoreError> {
        dispatch!(self, b => b.domain(name).await)
    }

    /// The keys that hold `domain` now, in the order of their hashes.
    pub async fn holders_of(&self, domain: &str) -> Result<Vec<KeyHash>, StoreError> {
        dispatch!(self, b => b.holders_of(domain).await)
    }

    /// Appends an event that no client caused (the bridge's own actions) to the audit trail.
    /// The source address is unspecified and the key id is `-`.
    pub async fn record_event(&self, kind: AuditKind, now: UnixTime) -> Result<(), StoreError> {
        dispatch!(self, b => b.record_event(kind, now).await)
    }

    /// Up to `limit` events of the audit trail after sequence number `after` (`None`: from
    /// the first), oldest first, each with its sequence number.
    pub async fn audit_events(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, AuditEvent)>, StoreError> {
        dispatch!(self, b => b.audit_events(after, limit).await)
    }

    // ---- Claims, links, mail ----

    /// Stores link tokens under their hashes.
    pub async fn save_link_tokens(
        &self,
        tokens: &[([u8; 32], LinkToken)],
    ) -> Result<(), StoreError> {
        dispatch!(self, b => b.save_link_tokens(tokens).await)
    }

    /// Follows a link: checks the token (known, meant for `action`, unused, not expired at
    /// `now`), uses it up, and confirms or revokes its key, in one write. Confirming also
    /// releases the key's domains waiting for it in the bridge. Commit before telling the
    /// user.
    pub async fn use_link(
        &self,
        token_hash: &[u8; 32],
        action: LinkAction,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<LinkOutcome, StoreError> {
        dispatch!(self, b => b.use_link(token_hash, action, ip, now).await)
    }

    /// An operator confirms a key by hand (`certline confirm`): what the confirm link does,
    /// audited the same way. A revoked key stays revoked. Commit before telling the operator.
    pub async fn confirm_key(
        &self,
        hash: &KeyHash,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<OperatorConfirmOutcome, StoreError> {
        dispatch!(self, b => b.confirm_key(hash, ip, now).await)
    }

    /// From now on, claims queue a confirmation e-mail. Called once at start-up when the
    /// admin listener (which serves the links) is configured.
    pub fn enable_confirmation_mail(&self) {
        dispatch!(self, b => b.enable_confirmation_mail())
    }

    /// Up to `limit` mail jobs due at or before `now`, earliest first.
    pub async fn due_mail(&self, now: UnixTime, limit: usize) -> Result<Vec<DueMail>, StoreError> {
        dispatch!(self, b => b.due_mail(now, limit).await)
    }

    /// The mail is out (or given up on): the job leaves the outbox. Commit afterwards.
    pub async fn finish_mail(&self, mail: &DueMail) -> Result<(), StoreError> {
        dispatch!(self, b => b.finish_mail(mail).await)
    }

    /// The send failed: the job, with its attempt counted, moves to `due`. Commit afterwards.
    pub async fn retry_mail(&self, mail: &DueMail, due: UnixTime) -> Result<(), StoreError> {
        dispatch!(self, b => b.retry_mail(mail, due).await)
    }

    /// How many mails are waiting (for metrics). A scan: call rarely.
    pub async fn mail_outbox_len(&self) -> Result<usize, StoreError> {
        dispatch!(self, b => b.mail_outbox_len().await)
    }

    // ---- Sectigo bridge state ----

    /// Turns bridge bookkeeping on: from now on, new domains are queued for the bridge.
    /// Called once at start-up when a `[sectigo]` section is configured.
    pub fn enable_bridge(&self) {
        dispatch!(self, b => b.enable_bridge())
    }

    /// Is the bridge bookkeeping on?
    pub fn bridge_enabled(&self) -> bool {
        dispatch!(self, b => b.bridge_enabled())
    }

    /// The bridge record of a host name.
    pub async fn bridge(&self, domain: &str) -> Result<Option<BridgeRecord>, StoreError> {
        dispatch!(self, b => b.bridge(domain).await)
    }

    /// Up to `limit` host names due at or before `now`, earliest first, with their records.
    pub async fn due_bridge_jobs(
        &self,
        now: UnixTime,
        limit: usize,
    ) -> Result<Vec<(String, BridgeRecord)>, StoreError> {
        dispatch!(self, b => b.due_bridge_jobs(now, limit).await)
    }

    /// The earliest due time in the bridge's outbox, if any.
    pub async fn next_bridge_due(&self) -> Result<Option<UnixTime>, StoreError> {
        dispatch!(self, b => b.next_bridge_due().await)
    }

    /// How many host names are waiting in the bridge's outbox (for metrics). A scan: call
    /// rarely.
    pub async fn outbox_len(&self) -> Result<usize, StoreError> {
        dispatch!(self, b => b.outbox_len().await)
    }

    /// Replaces a host's bridge record and moves its outbox entry to the new due time.
    /// `key_confirmed` only ever goes from false to true (a confirmation that raced with the
    /// worker's step is kept, and a record parked awaiting confirmation meanwhile requeued).
    pub async fn save_bridge(&self, domain: &str, record: &BridgeRecord) -> Result<(), StoreError> {
        dispatch!(self, b => b.save_bridge(domain, record).await)
    }

    /// Makes every record parked by a 401 due at `now` (new credentials arrived). Returns how
    /// many there are.
    pub async fn release_credential_waiters(&self, now: UnixTime) -> Result<usize, StoreError> {
        dispatch!(self, b => b.release_credential_waiters(now).await)
    }

    /// Does any record wait on credentials (parked by a 401)?
    pub async fn has_credential_waiters(&self) -> Result<bool, StoreError> {
        dispatch!(self, b => b.has_credential_waiters().await)
    }

    /// Makes every synced host that validates at `dcv_domain` (but is not it) due at `now`.
    /// Returns how many.
    pub async fn wake_dcv_dependents(
        &self,
        dcv_domain: &str,
        now: UnixTime,
    ) -> Result<usize, StoreError> {
        dispatch!(self, b => b.wake_dcv_dependents(dcv_domain, now).await)
    }

    /// Gives `domain` a bridge record, queued and due at `now`, unless it has one. Returns
    /// whether one was created.
    pub async fn ensure_bridge_record(
        &self,
        domain: &str,
        key_confirmed: bool,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        dispatch!(self, b => b.ensure_bridge_record(domain, key_confirmed, now).await)
    }

    /// Run when the bridge starts: queues every registered host without a bridge record, and
    /// requeues the ones whose rest depends on the configuration. Returns how many.
    pub async fn backfill_bridge(&self, now: UnixTime) -> Result<usize, StoreError> {
        dispatch!(self, b => b.backfill_bridge(now).await)
    }

    // ---- ACME state ----

    /// Turns ACME bookkeeping on (at start-up, when `[sectigo.acme]` is configured).
    pub fn enable_acme(&self) {
        dispatch!(self, b => b.enable_acme())
    }

    /// Is ACME bookkeeping on?
    pub fn acme_enabled(&self) -> bool {
        dispatch!(self, b => b.acme_enabled())
    }

    /// A key's ACME record.
    pub async fn acme_key(&self, hash: &KeyHash) -> Result<Option<AcmeKeyRecord>, StoreError> {
        dispatch!(self, b => b.acme_key(hash).await)
    }

    /// Up to `limit` keys due at or before `now`, earliest first.
    pub async fn due_acme_keys(
        &self,
        now: UnixTime,
        limit: usize,
    ) -> Result<Vec<KeyHash>, StoreError> {
        dispatch!(self, b => b.due_acme_keys(now, limit).await)
    }

    /// The earliest due time in the ACME outbox.
    pub async fn next_acme_due(&self) -> Result<Option<UnixTime>, StoreError> {
        dispatch!(self, b => b.next_acme_due().await)
    }

    /// Saves the worker's view of a key. If the key was touched since the worker read it,
    /// the key stays due now and the newer touch count is kept.
    pub async fn save_acme_key(
        &self,
        hash: &KeyHash,
        record: &AcmeKeyRecord,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        dispatch!(self, b => b.save_acme_key(hash, record, now).await)
    }

    /// Queues `hash` for the ACME worker now (a write of its own).
    pub async fn touch_acme_key(&self, hash: &KeyHash, now: UnixTime) -> Result<(), StoreError> {
        dispatch!(self, b => b.touch_acme_key(hash, now).await)
    }

    /// Run when the ACME worker starts: queues every key that holds domains or has an ACME
    /// record. Returns how many.
    pub async fn backfill_acme(&self, now: UnixTime) -> Result<usize, StoreError> {
        dispatch!(self, b => b.backfill_acme(now).await)
    }

    // ---- Operator (admin API) ----

    /// Up to `limit` registered domains after `after` (exclusive; `None`: from the first), in
    /// lexicographic order, each with its bridge record and holders.
    pub async fn inventory_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<InventoryRow>, StoreError> {
        dispatch!(self, b => b.inventory_after(after, limit).await)
    }

    /// Up to `limit` keys after `after` (exclusive; `None`: from the first), in the order of
    /// their hashes.
    pub async fn keys_after(
        &self,
        after: Option<&KeyHash>,
        limit: usize,
    ) -> Result<Vec<(KeyHash, KeyRecord)>, StoreError> {
        dispatch!(self, b => b.keys_after(after, limit).await)
    }

    /// The keys whose id (the lower-case hex of their hash) starts with `prefix`.
    pub async fn keys_with_id_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<(KeyHash, KeyRecord)>, StoreError> {
        dispatch!(self, b => b.keys_with_id_prefix(prefix).await)
    }

    /// Sends a host's bridge record back to `queued`, due now, keeping what is known about it
    /// for display; a domain registered while the bridge was off gets its first record.
    pub async fn requeue_domain(
        &self,
        host: &str,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<RequeueOutcome, StoreError> {
        dispatch!(self, b => b.requeue_domain(host, ip, now).await)
    }

    /// How many bridge records are in each phase (for the metrics).
    pub async fn bridge_phase_counts(&self) -> Result<HashMap<BridgePhase, u64>, StoreError> {
        dispatch!(self, b => b.bridge_phase_counts().await)
    }

    /// A tiny write for the readiness check; the caller commits it to prove the store takes
    /// writes.
    pub async fn probe_write(&self, now: UnixTime) -> Result<(), StoreError> {
        dispatch!(self, b => b.probe_write(now).await)
    }

    // ---- Moving a store (`certline migrate`; see [`transfer`]) ----

    /// Up to `limit` records from `cursor` on, as backend-neutral items, and where the next
    /// page starts (`None`: that was the last).
    pub async fn export(
        &self,
        cursor: &transfer::ExportCursor,
        limit: usize,
    ) -> Result<(Vec<transfer::Item>, Option<transfer::ExportCursor>), StoreError> {
        dispatch!(self, b => b.export(cursor, limit).await)
    }

    /// Writes exported items into this store, which must have been empty when the copy
    /// began (nothing is checked or merged). Commit afterwards.
    pub async fn import(&self, items: &[transfer::Item]) -> Result<(), StoreError> {
        dispatch!(self, b => b.import(items).await)
    }

    /// Does the store hold no record (a target a copy may write into)?
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        dispatch!(self, b => b.is_empty().await)
    }
}
