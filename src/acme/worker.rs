//! The ACME worker: consumes the store's ACME outbox (one entry per API key) and makes each
//! key's SCM ACME account hold exactly the key's eligible domains.
//!
//! ```text
//! touched key ─ revoked ──→ delete its account (per_key) / unmap its names (shared) → done
//!      └→ eligible = its domains that are synced, in policy, confirmed, DCV validated
//!      └→ account: stored id, else find by name, else create (id stored and committed
//!         before anything else, so a kill -9 right after the create finds it by name)
//!      └→ compare with the account's domain list in SCM → add the missing, remove the extra
//!      └→ rest: pending names → again in pending_recheck_secs; else in recheck_hours
//! ```
//!
//! A pass is a reconciliation, not a replay of events, so a lost answer, a retry or a restart
//! can never map a name twice or leave a removed one behind: the next pass compares again.
//! Transient failures retry with the bridge's backoff; other refusals are kept in the record
//! (and shown by `status`) until the next recheck.

use super::config::{AccountModel, AcmeConfig};
use super::eligibility;
use super::scm::AcmeApi;
use crate::apikey::KeyHash;
use crate::bridge::SectigoError;
use crate::bridge::config::{BackoffConfig, SectigoConfig};
use crate::store::{
    AcmeKeyRecord, AcmeMapping, AuditKind, KeyRecord, Store, StoreError, StoredEab, UnixTime,
};
use arc_swap::ArcSwap;
use chrono::Utc;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the worker sleeps at most between outbox scans when nothing wakes it.
const IDLE_SCAN: Duration = Duration::from_secs(30);

/// How many of a key's domains a pass reads from the store at a time.
const DOMAINS_PER_READ: usize = 1000;

/// The text kept for a name SCM answered with `notAddedDomains`.
const NOT_ADDED: &str = "Sectigo did not add it to the ACME account (notAddedDomains)";

/// The ACME worker. Build with [`AcmeWorker::new`], run with [`AcmeWorker::run`].
pub struct AcmeWorker {
    store: Arc<Store>,
    /// Swappable: a reload with new Sectigo credentials hands in a new client.
    api: ArcSwap<AcmeApi>,
    config: AcmeConfig,
    organization: u64,
    require_confirmed_key: bool,
    backoff: BackoffConfig,
    max_concurrency: usize,
    in_flight: Mutex<HashSet<[u8; 32]>>,
    finished: Notify,
}

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error(transparent)]
    Sectigo(#[from] SectigoError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AcmeWorker {
    /// A worker for `sectigo.acme` (the caller checked it is present) over `store`.
    pub fn new(store: Arc<Store>, api: AcmeApi, sectigo: &SectigoConfig) -> Option<Self> {
        let config = sectigo.acme.clone()?;
        Some(Self {
            store,
            api: ArcSwap::from_pointee(api),
            organization: config.organization(sectigo.org_id),
            config,
            require_confirmed_key: sectigo.require_confirmed_key,
            backoff: sectigo.backoff.clone(),
            max_concurrency: sectigo.max_concurrency.max(1),
            in_flight: Mutex::new(HashSet::new()),
            finished: Notify::new(),
        })
    }

    /// The Sectigo API as configured now (a pass that started keeps the client it began with
    /// for each call it has already made).
    fn api(&self) -> Arc<AcmeApi> {
        self.api.load_full()
    }

    /// New Sectigo credentials or settings from a reload: the next call uses `client`.
    /// `[sectigo.acme]` itself needs a restart (the reload reports it).
    pub fn replace_client(&self, client: crate::bridge::SectigoClient) {
        self.api.store(Arc::new(AcmeApi::new(client)));
    }

    /// Runs until `shutdown` is cancelled; keys in flight finish their pass.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        match self.store.backfill_acme(now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(keys = n, "queued keys for the ACME account worker"),
            Err(e) => tracing::error!(error = %e, "could not queue keys for the ACME worker"),
        }
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(self.max_concurrency));
        while !shutdown.is_cancelled() {
            let due = match self
                .store
                .due_acme_keys(now(), self.max_concurrency + 64)
                .await
            {
                Ok(due) => due,
                Err(e) => {
                    tracing::error!(error = %e, "reading the ACME outbox failed");
                    Vec::new()
                }
            };
            let mut started = 0;
            for hash in due {
                if !self.lock_in_flight().insert(hash.0) {
                    continue;
                }
                let permit = tokio::select! {
                    p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
                    _ = shutdown.cancelled() => {
                        self.lock_in_flight().remove(&hash.0);
                        break;
                    }
                };
                let this = self.clone();
                tracker.spawn(async move {
                    this.process(&hash).await;
                    this.lock_in_flight().remove(&hash.0);
                    drop(permit);
                    this.finished.notify_one();
                });
                started += 1;
            }
            if started == 0 {
                let wait = match self.store.next_acme_due().await {
                    Ok(Some(due)) => Duration::from_secs((due - now()).max(1) as u64),
                    _ => IDLE_SCAN,
                }
                .min(IDLE_SCAN);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.store.acme_queued() => {}
                    _ = self.finished.notified() => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
        tracker.close();
        tracker.wait().await;
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One pass over one key, its outcome saved and committed.
    async fn process(&self, hash: &KeyHash) {
        let key_id = hash.id();
        let mut record = match self.store.acme_key(hash).await {
            Ok(Some(r)) if r.next_attempt_at.is_some_and(|due| due <= now()) => r,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(key = %key_id, error = %e, "reading ACME state failed");
                return;
            }
        };
        let result = self.pass(hash, &mut record).await;
        let now = now();
        let outcome = match result {
            Ok(next) => {
                record.attempts = 0;
                record.last_error = None;
                record.next_attempt_at = next;
                "ok"
            }
            Err(e) => {
                let retryable = match &e {
                    PassError::Sectigo(s) => s.is_retryable(),
                    PassError::Store(_) => true,
                };
                record.last_error = Some(e.to_string());
                if retryable {
                    let jitter = rand::random_range(0.5..=1.0);
                    let retry_after = match &e {
                        PassError::Sectigo(s) => s.retry_after(),
                        PassError::Store(_) => None,
                    };
                    let delay = self.backoff.delay(record.attempts, jitter, retry_after);
                    record.attempts = record.attempts.saturating_add(1);
                    record.next_attempt_at = Some(now + delay.as_secs().max(1) as i64);
                    tracing::info!(key = %key_id, attempt = record.attempts, retry_in_secs = delay.as_secs(),
                        error = %e, "ACME account pass failed; will retry");
                    "retry"
                } else {
                    record.attempts = 0;
                    record.next_attempt_at = Some(now + self.pending_recheck());
                    tracing::warn!(key = %key_id, error = %e,
                        "Sectigo refused an ACME account change; kept as failed until the next recheck");
                    "failed"
                }
            }
        };
        metrics::counter!("certline_acme_passes_total", "result" => outcome).increment(1);
        if let Err(e) = self.store.save_acme_key(hash, &record, now).await {
            tracing::error!(key = %key_id, error = %e, "saving ACME state failed");
            return;
        }
        if let Err(e) = self.store.commit().await {
            tracing::error!(key = %key_id, error = %e, "flushing ACME state failed");
        }
    }

    fn pending_recheck(&self) -> i64 {
        self.config.pending_recheck_secs.max(1) as i64
    }

    /// Reconciles one key; returns when to look at it again.
    async fn pass(
        &self,
        hash: &KeyHash,
        record: &mut AcmeKeyRecord,
    ) -> Result<Option<UnixTime>, PassError> {
        let now = now();
        let key = self.store.key(hash).await?;
        let Some(key) = key.filter(|k| k.revoked_at.is_none()) else {
            self.retire(hash, record).await?;
            return Ok(None);
        };
        let (hosts, desired) = self.eligible_hosts(hash, &key).await?;
        let pending = hosts.len() > desired.len();
        let account = match self.config.accounts {
            AccountModel::Shared => self.config.account_id,
            AccountModel::PerKey if desired.is_empty() && record.account_id.is_none() => None,
            AccountModel::PerKey => Some(self.ensure_account(hash, record).await?),
        };
        let Some(mut id) = account else {
            record.domains = hosts
                .iter()
                .map(|h| (h.clone(), AcmeMapping::Pending))
                .collect();
            return Ok(pending.then_some(now + self.pending_recheck()));
        };
        let present = match self.api().account_domains(id).await {
            Ok(p) => p,
            // Deleted in SCM since certline stored its id: start over with a new account.
            Err(SectigoError::Api { status: 404, .. })
                if self.config.accounts == AccountModel::PerKey =>
            {
                tracing::warn!(key = %hash.id(), account = id, "ACME account gone from Sectigo; recreating it");
                record.account_id = None;
                record.eab = None;
                id = self.ensure_account(hash, record).await?;
                self.api().account_domains(id).await?
            }
            Err(e) => return Err(e.into()),
        };
        record.account_id = Some(id);
        if self.config.hand_out_eab && record.eab.is_none() {
            record.eab = self.api().account(id).await?.eab().map(|eab| StoredEab {
                kid: eab.kid,
                hmac: eab.hmac.expose().to_owned(),
            });
        }
        let present: BTreeSet<String> = present.into_iter().collect();
        let to_add: Vec<String> = desired.difference(&present).cloned().collect();
        let to_remove: Vec<String> = match self.config.accounts {
            AccountModel::PerKey => present.difference(&desired).cloned().collect(),
            AccountModel::Shared => {
                let mut mine = Vec::new();
                for (host, state) in &record.domains {
                    let gone = *state == AcmeMapping::Mapped && !desired.contains(host);
                    if gone && present.contains(host) && !self.held_elsewhere(hash, host).await? {
                        mine.push(host.clone());
                    }
                }
                mine
            }
        };
        let not_added: BTreeSet<String> = if to_add.is_empty() {
            BTreeSet::new()
        } else {
            let refused = self.api().add_domains(id, &to_add).await?;
            let refused: BTreeSet<String> =
                refused.iter().map(|n| n.to_ascii_lowercase()).collect();
            for name in to_add.iter().filter(|n| !refused.contains(*n)) {
                self.audit(name, "acme-mapped", &id.to_string(), now).await;
            }
            for name in &refused {
                self.audit(name, "acme-not-added", &id.to_string(), now)
                    .await;
            }
            refused
        };
        if !to_remove.is_empty() {
            self.api().remove_domains(id, &to_remove).await?;
            for name in &to_remove {
                self.audit(name, "acme-unmapped", &id.to_string(), now)
                    .await;
            }
        }
        let mut failed = false;
        record.domains = hosts
            .iter()
            .map(|h| {
                let state = if !desired.contains(h) {
                    AcmeMapping::Pending
                } else if not_added.contains(h) {
                    failed = true;
                    AcmeMapping::Failed(NOT_ADDED.into())
                } else {
                    AcmeMapping::Mapped
                };
                (h.clone(), state)
            })
            .collect::<BTreeMap<_, _>>();
        Ok(Some(if pending || failed {
            now + self.pending_recheck()
        } else {
            now + self.config.recheck_hours.max(1) as i64 * 3600
        }))
    }

    /// The key's hosts (ports dropped: SCM knows names), and those of them now eligible.
    async fn eligible_hosts(
        &self,
        hash: &KeyHash,
        key: &KeyRecord,
    ) -> Result<(BTreeSet<String>, BTreeSet<String>), StoreError> {
        let mut hosts = BTreeSet::new();
        let mut desired = BTreeSet::new();
        let mut offset = 0;
        loop {
            let names = self
                .store
                .key_domains(hash, offset, DOMAINS_PER_READ)
                .await?;
            offset += names.len();
            let last_page = names.len() < DOMAINS_PER_READ;
            for name in names {
                let Ok(domain) = crate::domain::normalize(&name) else {
                    continue;
                };
                let host = domain.host().to_owned();
                let bridge = self.store.bridge(&host).await?;
                let eligible = eligibility::check(
                    bridge.as_ref(),
                    key.confirmed_at.is_some(),
                    self.require_confirmed_key,
                );
                if eligible.is_ok() {
                    desired.insert(host.clone());
                }
                hosts.insert(host);
            }
            if last_page {
                return Ok((hosts, desired));
            }
        }
    }

    /// The key's account id: stored, else found by name, else created. A found or created
    /// id is saved and committed at once, and a create is only ever attempted after a
    /// search by name found nothing, so a crash or a lost answer right after the create
    /// leaves one account, which the next pass finds.
    async fn ensure_account(
        &self,
        hash: &KeyHash,
        record: &mut AcmeKeyRecord,
    ) -> Result<u64, PassError> {
        if let Some(id) = record.account_id {
            return Ok(id);
        }
        let name = self.config.account_name(&hash.id());
        let server = &self.config.acme_server;
        let found = self
            .api()
            .find_accounts(&name, self.organization, server)
            .await?;
        let id = match found.as_slice() {
            [first, rest @ ..] => {
                if !rest.is_empty() {
                    tracing::warn!(account = %name, ids = ?found.iter().map(|a| a.id).collect::<Vec<_>>(),
                        "several ACME accounts carry this key's name; using the oldest, delete the others");
                }
                first.id
            }
            [] => {
                let id = self
                    .api()
                    .create_account(&name, self.organization, server)
                    .await?;
                tracing::info!(account = %name, id, "created a Sectigo ACME account for a key");
                self.audit(&name, "acme-account-created", &id.to_string(), now())
                    .await;
                id
            }
        };
        record.account_id = Some(id);
        record.account_deleted = false;
        self.store.save_acme_key(hash, record, now()).await?;
        self.store.commit().await?;
        Ok(id)
    }

    /// The key is revoked (or gone): per key, its account is deleted, so its EAB can no
    /// longer get certificates; shared, its names leave the account unless another key
    /// holds them.
    async fn retire(&self, hash: &KeyHash, record: &mut AcmeKeyRecord) -> Result<(), PassError> {
        if record.account_deleted {
            return Ok(());
        }
        match self.config.accounts {
            AccountModel::PerKey => {
                let name = self.config.account_name(&hash.id());
                let mut ids: BTreeSet<u64> = record.account_id.into_iter().collect();
                for account in self
                    .api()
                    .find_accounts(&name, self.organization, &self.config.acme_server)
                    .await?
                {
                    ids.insert(account.id);
                }
                for id in ids {
                    self.api().delete_account(id).await?;
                    tracing::info!(account = %name, id, "deleted the ACME account of a revoked key");
                    self.audit(&name, "acme-account-deleted", &id.to_string(), now())
                        .await;
                }
            }
            AccountModel::Shared => {
                let Some(id) = self.config.account_id else {
                    return Ok(());
                };
                let mut mine = Vec::new();
                for (host, state) in &record.domains {
                    if *state == AcmeMapping::Mapped && !self.held_elsewhere(hash, host).await? {
                        mine.push(host.clone());
                    }
                }
                if !mine.is_empty() {
                    self.api().remove_domains(id, &mine).await?;
                    for name in &mine {
                        self.audit(name, "acme-unmapped", &id.to_string(), now())
                            .await;
                    }
                }
            }
        }
        record.account_id = None;
        record.eab = None;
        record.domains.clear();
        record.account_deleted = true;
        Ok(())
    }

    /// Does another live key hold `host` with it mapped (shared accounts only)? Asks the
    /// store's holder index, so it costs one lookup per holder of `host`, not a scan.
    async fn held_elsewhere(&self, hash: &KeyHash, host: &str) -> Result<bool, StoreError> {
        for other in self.store.holders_of(host).await? {
            if other == *hash {
                continue;
            }
            match self.store.key(&other).await? {
                Some(record) if record.revoked_at.is_none() => {}
                _ => continue,
            }
            if let Some(acme) = self.store.acme_key(&other).await?
                && acme.domains.get(host) == Some(&AcmeMapping::Mapped)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Audit-trail entry; a failure to write it is logged, not fatal.
    async fn audit(&self, subject: &str, step: &str, detail: &str, now: UnixTime) {
        let kind = AuditKind::Bridge {
            domain: subject.to_owned(),
            step: step.to_owned(),
            detail: detail.to_owned(),
        };
        if let Err(e) = self.store.record_event(kind, now).await {
            tracing::error!(error = %e, "writing the audit trail failed");
        }
    }
}

fn now() -> UnixTime {
    Utc::now().timestamp()
}
