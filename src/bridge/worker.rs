//! The bridge worker: consumes the store's outbox and drives each domain through the state
//! machine of ARCHITECTURE.md §5, one step at a time, saving the state after every step so a
//! restart (even after kill -9) resumes where it stopped.
//!
//! ```text
//! queued → policy ─ not allowed ─→ not_forwarded / awaiting_confirmation
//!            └→ lookup ─ found ──────────────→ details (+ CT monitoring PUT) → dcv_status → synced
//!                 └ absent ─ may create ─→ create ┘ (-700 → lookup again)
//!                 └ absent ─ may not ────→ not_in_sectigo (rechecked on schedule)
//! synced → (recheck due) → details → …
//!
//! DCV (when `dcv_method` is cname/txt and DCV is missing, expired or expiring soon):
//! dcv_status → cname: dcv_start → dcv_publish → dcv_submit → dcv_wait → dcv_cleanup → synced
//!            → txt:   dcv_submit → dcv_publish → dcv_wait → dcv_cleanup → synced
//! without a DNS hook, dcv_publish becomes dcv_action_required (the record is shown by
//! `status`; certline keeps submitting/polling on a schedule until Sectigo validates).
//! ```
//!
//! Failures are sorted by [`SectigoError`]: transient ones (timeouts, resets, 5xx, 429,
//! undecodable bodies) retry the same step with exponential backoff and jitter, honouring
//! `Retry-After`; a 401 pauses the whole bridge (one probe every `unauthorized_retry_secs`
//! until the credentials work again); any other 4xx is final for the step and its Sectigo
//! code and description are kept for `status` and the inventory. Concurrency and request rate
//! toward Sectigo are bounded inside [`SectigoClient`]; the worker runs at most
//! `max_concurrency` domains at once on top of that.

use super::config::{BackoffConfig, DcvMethod, SectigoConfig};
use super::dcv_domain::ValidationDomains;
use super::dns_hook::{self, DnsRecord, HookAction, HookError};
use super::policy::{Policy, Skip};
use super::sectigo::{
    CreateOutcome, DcvStatus, DelegationStatus, DomainState, OrderStatus, SectigoClient,
    SectigoError, ValidationStatus,
};
use crate::store::{
    AuditKind, BridgeError, BridgePhase, BridgeRecord, DcvProgress, DcvRecordType, DcvState, Store,
    StoreError, UnixTime,
};
use arc_swap::ArcSwap;
use chrono::Utc;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the worker sleeps at most between outbox scans when nothing wakes it.
const IDLE_SCAN: Duration = Duration::from_secs(30);

/// Rounds of "create: -700 exists / lookup: nothing" before the domain is `failed`.
const MAX_EXISTS_ROUNDS: u32 = 3;

/// Consecutive undecodable answers to one step before it is `failed`: a proxy page or a
/// changed API does not heal by retrying for ever.
const MAX_DECODE_ATTEMPTS: u32 = 5;

/// How often a state only a person can change (a suspended domain, a delegation awaiting
/// approval) is looked at again.
const PERSON_RECHECK: Duration = Duration::from_secs(3600);

/// What the rest of certline may see of the bridge (the `status` command, the admin API).
#[derive(Debug, Default)]
pub struct BridgeHandle {
    paused: AtomicBool,
    /// Set by [`Worker::credentials_changed`]: probe at once instead of after
    /// `unauthorized_retry_secs`.
    probe_now: AtomicBool,
    wake: Notify,
}

impl BridgeHandle {
    /// Is the bridge paused because Sectigo rejected certline's credentials?
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }
}

/// The worker. Build it with [`Worker::new`], run it with [`Worker::run`].
pub struct Worker {
    store: Arc<Store>,
    /// Replaced whole by [`Worker::reconfigure`]; each step reads the current one.
    settings: ArcSwap<Settings>,
    /// Fixed at start: the worker's slots are sized once.
    max_concurrency: usize,
    handle: Arc<BridgeHandle>,
    in_flight: Mutex<HashSet<String>>,
    finished: Notify,
}

/// What a reload may change while the worker runs: the credentials (in the client), the
/// policy, the timings and the DCV settings. A step in flight finishes with the settings
/// it started with.
struct Settings {
    client: SectigoClient,
    policy: Policy,
    validation_domains: ValidationDomains,
    approve_delegations: bool,
    backoff: BackoffConfig,
    recheck_interval: Duration,
    unauthorized_retry: Duration,
    dcv: DcvSettings,
}

impl Settings {
    fn new(client: SectigoClient, config: &SectigoConfig) -> Self {
        Self {
            client,
            policy: Policy::from_config(config),
            validation_domains: ValidationDomains::new(&config.dcv_domains),
            approve_delegations: config.approve_delegations,
            backoff: config.backoff.clone(),
            recheck_interval: Duration::from_secs(config.recheck_interval_hours.max(1) * 3600),
            unauthorized_retry: Duration::from_secs(config.unauthorized_retry_secs.max(1)),
            dcv: DcvSettings {
                method: config.dcv_method,
                hook: config.dcv_hook.clone(),
                hook_env: config.dcv_hook_env.clone(),
                hook_timeout: Duration::from_secs(config.dcv_hook_timeout_secs.max(1)),
                max_poll: Duration::from_secs(config.dcv_max_poll_secs.max(1)),
                max_wait: Duration::from_secs(config.dcv_max_wait_hours.max(1) * 3600),
                expiry_window_days: i64::from(config.dcv_expiry_window_days),
            },
        }
    }
}

/// DCV automation settings, from `[sectigo]`.
struct DcvSettings {
    method: DcvMethod,
    hook: Option<PathBuf>,
    hook_env: Vec<String>,
    hook_timeout: Duration,
    max_poll: Duration,
    max_wait: Duration,
    expiry_window_days: i64,
}

/// What one step achieved.
enum Step {
    /// The record moved to another phase; run the next step now.
    Continue,
    /// The record is at rest until its `next_attempt_at`.
    Rest,
}

impl Worker {
    /// A worker over `store`, talking to Sectigo with `client` under `config`'s policy.
    pub fn new(store: Arc<Store>, client: SectigoClient, config: &SectigoConfig) -> Self {
        Self {
            store,
            settings: ArcSwap::from_pointee(Settings::new(client, config)),
            max_concurrency: config.max_concurrency.max(1),
            handle: Arc::new(BridgeHandle::default()),
            in_flight: Mutex::new(HashSet::new()),
            finished: Notify::new(),
        }
    }

    /// The handle other parts of certline read the bridge's state through.
    pub fn handle(&self) -> Arc<BridgeHandle> {
        self.handle.clone()
    }

    /// The settings in force: a step holds one snapshot from start to end.
    fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// New credentials (in `client`) and settings from a reloaded `[sectigo]` section
    /// (`max_concurrency` keeps its start-up value): the next step of every domain uses
    /// them.
    ///
    /// The credentials may have changed in their file with the TOML as it was, and a client
    /// cannot tell, so every reload takes [`Self::credentials_changed`]'s path: ALL domains
    /// parked by a 401 become due at once behind one probe, not just the probe's domain.
    ///
    /// Domains the old policy set aside (not forwarded, awaiting confirmation) wait for no
    /// timer; when the policy changed, they are queued again, as at start-up.
    ///
    /// Runs on a blocking thread (a reload reads its files on one) inside the runtime, and
    /// waits there for the store's part, so the reload is done when this returns.
    pub fn reconfigure(&self, client: SectigoClient, config: &SectigoConfig) {
        let settings = Settings::new(client, config);
        // Policy has no PartialEq (it is the bridge's pure decision type); its Debug form
        // shows every field.
        let policy_changed =
            format!("{:?}", self.settings().policy) != format!("{:?}", settings.policy);
        self.settings.store(Arc::new(settings));
        tokio::runtime::Handle::current().block_on(async {
            if policy_changed {
                match self.store.backfill_bridge(now()).await {
                    Ok(n) => tracing::info!(
                        domains = n,
                        "policy changed: domains set aside are queued again"
                    ),
                    Err(e) => {
                        tracing::error!(error = %e, "policy changed, but queueing the domains it set aside failed")
                    }
                }
            }
            self.credentials_changed().await;
        });
        // The idle loop sleeps until the next due domain under the old timings: look again.
        self.finished.notify_one();
    }

    /// The entry point for "new configuration or credentials arrived" (start-up and
    /// [`Self::reconfigure`] call it): every domain parked by a 401 is due at once, but while
    /// any waits on credentials the bridge stays `paused` and sends one probe first; when the
    /// probe succeeds, all of them go, not a request per `unauthorized_retry_secs`.
    pub async fn credentials_changed(&self) {
        match self.store.release_credential_waiters(now()).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(
                    domains = n,
                    "credentials (re)loaded: domains parked by a 401 are due; probing Sectigo first"
                );
                self.handle.paused.store(true, Ordering::SeqCst);
                self.handle.probe_now.store(true, Ordering::SeqCst);
                self.handle.wake.notify_one();
            }
            Err(e) => tracing::error!(error = %e, "could not requeue domains parked by a 401"),
        }
    }

    /// A call to Sectigo succeeded: if the bridge was paused, the credentials work again,
    /// so every domain parked by a 401 is due now.
    async fn resumed(&self) {
        if self.handle.paused.swap(false, Ordering::SeqCst) {
            tracing::warn!("Sectigo accepts certline's credentials again: bridge resumed");
            if let Err(e) = self.store.release_credential_waiters(now()).await {
                tracing::error!(error = %e, "could not requeue domains parked by a 401");
            }
        }
    }

    /// Runs until `shutdown` is cancelled; in-flight domains finish their current step.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        match self.store.backfill_bridge(now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(domains = n, "queued domains registered before the bridge"),
            Err(e) => tracing::error!(error = %e, "could not queue older domains for the bridge"),
        }
        // Domains parked by a 401 before this start are due now, behind one probe.
        self.credentials_changed().await;
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(self.max_concurrency));
        while !shutdown.is_cancelled() {
            if self.handle.is_paused() {
                // Paused: one domain probes whether the credentials work (again); at once
                // after new credentials, else every `unauthorized_retry_secs`.
                if !self.handle.probe_now.swap(false, Ordering::SeqCst) {
                    let retry = self.settings().unauthorized_retry;
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = self.handle.wake.notified() => {}
                        _ = shutdown.cancelled() => break,
                    }
                    self.handle.probe_now.store(false, Ordering::SeqCst);
                }
                // The probe is due now by definition: it is the earliest domain waiting.
                let probe = self.store.due_bridge_jobs(i64::MAX, 1).await;
                if let Ok(Some((domain, mut record))) = probe.map(|v| v.into_iter().next())
                    && self.lock_in_flight().insert(domain.clone())
                {
                    record.next_attempt_at = Some(now());
                    if self.store.save_bridge(&domain, &record).await.is_ok() {
                        self.clone().process(domain.clone(), &shutdown).await;
                    }
                    self.lock_in_flight().remove(&domain);
                } else if let Ok(false) = self.store.has_credential_waiters().await {
                    // Nothing left waiting on credentials: nothing to probe with.
                    self.handle.paused.store(false, Ordering::SeqCst);
                }
                continue;
            }
            let started = self.start_due(&tracker, &permits, &shutdown).await;
            if started == 0 {
                let wait = self.time_to_next_due().await.min(IDLE_SCAN);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.store.bridge_queued() => {}
                    _ = self.finished.notified() => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
        tracker.close();
        tracker.wait().await;
    }

    /// Starts every due domain that is not already in flight, up to the concurrency limit.
    async fn start_due(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        permits: &Arc<Semaphore>,
        shutdown: &CancellationToken,
    ) -> usize {
        let since = self.store.mark();
        let due = match self
            .store
            .due_bridge_jobs(now(), self.max_concurrency + 64)
            .await
        {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "reading the bridge outbox failed");
                return 0;
            }
        };
        // Only registrations that are on disk go to Sectigo: one whose log write fails is
        // undone, and must not have been forwarded meanwhile.
        if self.store.commit_since(since).await.is_err() {
            return 0;
        }
        let mut started = 0;
        for (domain, _) in due {
            if self.handle.is_paused() || shutdown.is_cancelled() {
                break;
            }
            if !self.lock_in_flight().insert(domain.clone()) {
                continue;
            }
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.expect("semaphore never closed"),
                _ = shutdown.cancelled() => {
                    self.lock_in_flight().remove(&domain);
                    break;
                }
            };
            let this = self.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                this.clone().process(domain.clone(), &shutdown).await;
                this.lock_in_flight().remove(&domain);
                drop(permit);
                this.finished.notify_one();
            });
            started += 1;
        }
        started
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn time_to_next_due(&self) -> Duration {
        match self.store.next_bridge_due().await {
            Ok(Some(due)) => Duration::from_secs((due - now()).max(1) as u64),
            _ => IDLE_SCAN,
        }
    }

    /// Runs one domain's steps until it rests (synced, waiting, failed) or a step fails.
    ///
    /// The record is read afresh here, not taken from the outbox scan that found it: by the
    /// time a worker slot is free, another task may have moved the domain on, and acting on a
    /// stale copy would repeat steps (a second DNS publish, say).
    ///
    /// Shutdown cancels the step in flight (a hung Sectigo must not hold certline past
    /// `shutdown_grace_ms`); its record is not saved, so a restart repeats that step, which
    /// every step tolerates (a repeated create meets -700 and looks the domain up).
    async fn process(self: Arc<Self>, domain: String, shutdown: &CancellationToken) {
        let mut record = match self.store.bridge(&domain).await {
            Ok(Some(r)) if r.next_attempt_at.is_some_and(|due| due <= now()) => r,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(%domain, error = %e, "reading bridge state failed");
                return;
            }
        };
        loop {
            let before = record.phase;
            let result = tokio::select! {
                result = self.step(&domain, &mut record) => result,
                _ = shutdown.cancelled() => {
                    tracing::debug!(%domain, step = before.name(), "shutdown: step abandoned");
                    return;
                }
            };
            let (rest, outcome) = match result {
                Ok(step) => {
                    record.waiting_on_credentials = false;
                    // `attempts` counts consecutive failures of one step.
                    record.attempts = 0;
                    (matches!(step, Step::Rest), "ok")
                }
                Err(failure) => {
                    let outcome = match &failure.cause {
                        Cause::Sectigo(SectigoError::Unauthorized { .. }) => "paused",
                        cause if cause.is_retryable() => "retry",
                        _ => "failed",
                    };
                    self.record_failure(&domain, &mut record, failure).await;
                    (true, outcome)
                }
            };
            metrics::counter!("certline_bridge_steps_total", "step" => before.name(), "result" => outcome)
                .increment(1);
            if let Err(e) = self.save(&domain, &record).await {
                tracing::error!(%domain, error = %e, "saving bridge state failed");
                return;
            }
            if rest {
                break;
            }
            tracing::debug!(%domain, from = before.name(), to = record.phase.name(), "bridge step");
        }
        if let Err(e) = self.store.commit().await {
            tracing::error!(%domain, error = %e, "flushing bridge state failed");
        }
    }

    async fn save(&self, domain: &str, record: &BridgeRecord) -> Result<(), StoreError> {
        self.store.save_bridge(domain, record).await
    }

    /// One step of the state machine: the function for the record's phase.
    async fn step(&self, domain: &str, r: &mut BridgeRecord) -> Result<Step, Failure> {
        let now = now();
        match r.phase {
            BridgePhase::Queued
            | BridgePhase::NotForwarded
            | BridgePhase::AwaitingConfirmation
            | BridgePhase::NotInSectigo
            | BridgePhase::Failed => Ok(self.apply_policy(domain, r)),
            BridgePhase::Lookup => self.lookup(domain, r, now).await,
            BridgePhase::Create => self.create(domain, r).await,
            BridgePhase::Details
            | BridgePhase::Monitoring
            | BridgePhase::AwaitingDelegationApproval
            | BridgePhase::Suspended => self.details(r, now).await,
            BridgePhase::DcvStatus => self.dcv_status(domain, r, now).await,
            BridgePhase::DcvStart => self.dcv_start(domain, r, now).await,
            BridgePhase::DcvSubmit => self.dcv_submit(domain, r, now).await,
            BridgePhase::DcvPublish | BridgePhase::DcvActionRequired => {
                self.dcv_publish(domain, r, now).await
            }
            BridgePhase::DcvWait => self.dcv_wait(domain, r, now).await,
            BridgePhase::DcvCleanup => Ok(self.dcv_cleanup(domain, r, now).await),
            BridgePhase::Synced => {
                r.phase = BridgePhase::Details;
                Ok(Step::Continue)
            }
        }
    }

    /// Queued (or resting for a reason the configuration decides): may it be forwarded?
    fn apply_policy(&self, domain: &str, r: &mut BridgeRecord) -> Step {
        let s = self.settings();
        match s.policy.decide(domain, r.key_confirmed) {
            Ok(()) => {
                // A recheck or requeue after a bounded -700 cycle gets one more bounded cycle.
                r.exists_rounds = 0;
                r.phase = if r.sectigo_id.is_some() {
                    BridgePhase::Details
                } else {
                    BridgePhase::Lookup
                };
                Step::Continue
            }
            Err(skip) => {
                r.phase = match skip {
                    Skip::KeyNotConfirmed => BridgePhase::AwaitingConfirmation,
                    Skip::SuffixNotAllowed | Skip::IpLiteral => BridgePhase::NotForwarded,
                };
                // Re-evaluated when the configuration or the key changes (start-up and
                // confirmation requeue it), never by polling.
                r.next_attempt_at = None;
                Step::Rest
            }
        }
    }

    /// Find the domain in SCM's inventory by name.
    async fn lookup(
        &self,
        domain: &str,
        r: &mut BridgeRecord,
        now: UnixTime,
    ) -> Result<Step, Failure> {
        let s = self.settings();
        match self
            .call(BridgePhase::Lookup, s.client.find_domain(domain))
            .await?
        {
            Some(found) => {
                r.sectigo_id = Some(found.id);
                r.exists_rounds = 0;
                r.phase = BridgePhase::Details;
                Ok(Step::Continue)
            }
            None if !s.policy.may_create(domain) => {
                r.phase = BridgePhase::NotInSectigo;
                r.checked_at = Some(now);
                r.next_attempt_at = Some(now + s.recheck_interval.as_secs() as i64);
                Ok(Step::Rest)
            }
            // SCM said -700 "exists", yet this admin's lookup finds nothing: the domain
            // belongs to an organisation the admin cannot see, or SCM stores another
            // spelling. Creating again at once would loop; rest, and give up after a few
            // rounds with what to check.
            None if r.exists_rounds >= MAX_EXISTS_ROUNDS => Err(Failure {
                step: BridgePhase::Create,
                cause: Cause::Invisible(format!(
                    "Sectigo answers -700 'Such domain already exists' to a create, but this admin's \
                     lookup finds no domain named {domain} ({} rounds): it probably belongs to an \
                     organisation or department this admin cannot see, or SCM stores it in \
                     another spelling (Unicode, a '*.' prefix); check the domain's delegations \
                     in SCM and the admin's organisation, then `certline requeue`",
                    r.exists_rounds
                )),
            }),
            None if r.exists_rounds > 0 => {
                let jitter = rand::random_range(0.5..=1.0);
                let rest = s.backoff.delay(r.exists_rounds - 1, jitter, None);
                r.phase = BridgePhase::Create;
                r.next_attempt_at = Some(now + rest.as_secs().max(1) as i64);
                Ok(Step::Rest)
            }
            None => {
                r.phase = BridgePhase::Create;
                Ok(Step::Continue)
            }
        }
    }

    /// Create the domain in SCM (the policy allows it; lookup found nothing).
    async fn create(&self, domain: &str, r: &mut BridgeRecord) -> Result<Step, Failure> {
        let s = self.settings();
        let Some(request) = s.policy.create_request(domain) else {
            r.phase = BridgePhase::Lookup;
            return Ok(Step::Continue);
        };
        match self
            .call(BridgePhase::Create, s.client.create_domain(&request))
            .await?
        {
            CreateOutcome::Created { id } => {
                tracing::info!(%domain, id, "created in Sectigo");
                r.sectigo_id = Some(id);
                r.created_by_certline = true;
                r.exists_rounds = 0;
                r.phase = BridgePhase::Details;
            }
            // An earlier attempt got through but its answer was lost: find the id. Counted,
            // because the same answer also comes for domains this admin cannot see.
            CreateOutcome::AlreadyExists => {
                r.exists_rounds = r.exists_rounds.saturating_add(1);
                r.phase = BridgePhase::Lookup;
            }
        }
        Ok(Step::Continue)
    }

    /// Read the domain's details: its state and delegation (suspended and awaiting-approval
    /// domains rest, visibly), then CT-log monitoring.
    async fn details(&self, r: &mut BridgeRecord, now: UnixTime) -> Result<Step, Failure> {
        let s = self.settings();
        let Some(id) = r.sectigo_id else {
            r.phase = BridgePhase::Lookup;
            return Ok(Step::Continue);
        };
        let info = match s.client.domain_info(id).await {
            Ok(info) => info,
            // Deleted in Sectigo since we saw it: look it up (or create it) again.
            Err(SectigoError::Api { status: 404, .. }) => {
                r.sectigo_id = None;
                r.phase = BridgePhase::Lookup;
                return Ok(Step::Continue);
            }
            Err(e) => return Err(Failure::sectigo(BridgePhase::Details, e)),
        };
        self.resumed().await;
        r.ct_monitoring = info.ct_log_monitoring.as_ref().map(|c| c.enabled);
        if matches!(info.state, Some(DomainState::Suspended)) {
            return Ok(self.rest_visibly(r, BridgePhase::Suspended, now));
        }
        let requested: Vec<u64> = info
            .delegations
            .iter()
            .filter(|d| awaits_approval(d.status.as_ref()))
            .map(|d| d.org_id)
            .collect();
        let overall_requested = awaits_approval(info.delegation_status.as_ref());
        if !requested.is_empty() || overall_requested {
            if !s.approve_delegations || requested.is_empty() {
                return Ok(self.rest_visibly(r, BridgePhase::AwaitingDelegationApproval, now));
            }
            for org_id in requested {
                if let Err(e) = s.client.approve_delegation(id, org_id).await {
                    if !matches!(e, SectigoError::Api { .. }) {
                        return Err(Failure::sectigo(BridgePhase::AwaitingDelegationApproval, e));
                    }
                    // Refused (not an MRAO, or approved meanwhile): show it and wait for a
                    // person, with Sectigo's reason.
                    let step = self.rest_visibly(r, BridgePhase::AwaitingDelegationApproval, now);
                    r.last_error = Some(
                        Failure::sectigo(BridgePhase::AwaitingDelegationApproval, e)
                            .into_error(now),
                    );
                    return Ok(step);
                }
                self.audit_id(id, "delegation-approved", &org_id.to_string(), now)
                    .await;
            }
            // Read the details again: the approval should show.
            r.phase = BridgePhase::Details;
            return Ok(Step::Continue);
        }
        if let Some(update) = s.policy.monitoring_update(&info) {
            self.call(
                BridgePhase::Monitoring,
                s.client.set_ct_monitoring(id, &update),
            )
            .await?;
            r.ct_monitoring = Some(update.enabled);
        }
        r.phase = BridgePhase::DcvStatus;
        Ok(Step::Continue)
    }

    /// A state only a person in SCM can change: shown by `status` and `--needs-action`,
    /// looked at again within the hour.
    fn rest_visibly(&self, r: &mut BridgeRecord, phase: BridgePhase, now: UnixTime) -> Step {
        let s = self.settings();
        r.phase = phase;
        r.attempts = 0;
        r.checked_at = Some(now);
        r.next_attempt_at = Some(now + s.recheck_interval.min(PERSON_RECHECK).as_secs() as i64);
        Step::Rest
    }

    /// Read the DCV status and decide whether certline runs DCV. A domain that validates at
    /// another name (its registrable domain) takes that domain's DCV state; the run happens
    /// once, on the validation domain's own record.
    async fn dcv_status(
        &self,
        domain: &str,
        r: &mut BridgeRecord,
        now: UnixTime,
    ) -> Result<Step, Failure> {
        let s = self.settings();
        let validation_domain = s.validation_domains.for_domain(domain);
        r.dcv_domain = Some(validation_domain.clone());
        if validation_domain != domain && s.dcv.method != DcvMethod::None {
            return self
                .follow_validation_domain(&validation_domain, r, now)
                .await;
        }
        match s.client.dcv_status(domain).await {
            Ok(dcv) => {
                self.resumed().await;
                note_dcv(r, &dcv);
                r.last_error = None;
                if let Some(record_type) = self.dcv_due(r) {
                    r.dcv = Some(DcvProgress::new(record_type, now));
                    r.phase = match record_type {
                        DcvRecordType::Cname => BridgePhase::DcvStart,
                        DcvRecordType::Txt => BridgePhase::DcvSubmit,
                    };
                    self.audit(domain, "dcv-begin", record_type.as_str(), now)
                        .await;
                    return Ok(Step::Continue);
                }
            }
            // SCM may not know DCV for a name (-727), or refuse a non-high-level one (-723,
            // with dcv_method none): the domain is in the inventory all the same, so it is
            // synced, with the refusal kept for the operator to see.
            Err(e @ SectigoError::Api { .. }) => {
                r.dcv_status = None;
                r.last_error = Some(Failure::sectigo(BridgePhase::DcvStatus, e).into_error(now));
            }
            Err(e) => return Err(Failure::sectigo(BridgePhase::DcvStatus, e)),
        }
        self.synced(r, now);
        Ok(Step::Rest)
    }

    /// A subdomain's DCV is its validation domain's: make sure that domain is on its way
    /// into SCM (under the same policy) and copy its DCV state. Until it is validated, look
    /// again every `dcv_max_poll_secs` (its validation wakes this record sooner).
    async fn follow_validation_domain(
        &self,
        validation_domain: &str,
        r: &mut BridgeRecord,
        now: UnixTime,
    ) -> Result<Step, Failure> {
        let s = self.settings();
        let store_failed = |e: StoreError| Failure {
            step: BridgePhase::DcvStatus,
            cause: Cause::Store(e.to_string()),
        };
        if self
            .store
            .ensure_bridge_record(validation_domain, r.key_confirmed, now)
            .await
            .map_err(store_failed)?
        {
            tracing::info!(domain = validation_domain, "queued as a validation domain");
        }
        let parent = self
            .store
            .bridge(validation_domain)
            .await
            .map_err(store_failed)?;
        r.dcv_status = parent.as_ref().and_then(|p| p.dcv_status.clone());
        r.dcv_expires = parent.as_ref().and_then(|p| p.dcv_expires);
        r.last_error = None;
        self.synced(r, now);
        if self.dcv_due(r).is_some() {
            r.next_attempt_at = Some(now + s.dcv.max_poll.as_secs() as i64);
        }
        Ok(Step::Rest)
    }

    /// DCV (CNAME): ask Sectigo which record to publish.
    async fn dcv_start(
        &self,
        domain: &str,
        r: &mut BridgeRecord,
        now: UnixTime,
    ) -> Result<Step, Failure> {
        let s = self.settings();
        let challenge = self
            .call(BridgePhase::DcvStart, s.client.start_cname(domain))
            .await?;
        let progress = r
            .dcv
            .get_or_insert_with(|| DcvProgress::new(DcvRecordType::Cname, now));
        progress.host = Some(challenge.host);
        progress.point = Some(challenge.point);
        r.phase = BridgePhase::DcvPublish;
        Ok(Step::Continue)
    }

    /// DCV: tell Sectigo to check (CNAME after publishing; TXT first, which names the record).
    async fn dcv_submit(
        &self,
        domain: &str,
        r: &mut BridgeRecord,
        now: UnixTime,
    ) -> Result<Step, Failure> {
        let s = self.settings();
        let Some(progress) = r.dcv.as_mut() else {
            r.phase = BridgePhase::DcvStatus;
            return Ok(Step::Continue);
        };
        match progress.record_type {
            DcvRecordType::Cname => {
                self.call(BridgePhase::DcvSubmit, s.client.submit_cname(domain))
                    .await?;
                progress.submitted_at = Some(now);
                r.phase = BridgePhase::DcvWait;
            }
            DcvRecordType::Txt => {
                let answer = self
                    .call(BridgePhase::DcvSubmit, s.client.submit_txt(domain))
                    .await?;
                progress.host = Some(answer.host);
                progress.point = Some(answer.point);
                progress.submitted_at = Some(now);
                r.phase = BridgePhase::DcvPublish;
            }
        }
        self.audit(domain, "dcv-submit", progress.record_type.as_str(), now)
            .await;
        Ok(Step::Continue)
    }

    /// DCV: publish the record through the DNS hook, or wait for a person to.
    async fn dcv_publish(
        &self,
        domain: &str,
        r: &mut BridgeRecord,
        now: UnixTime,
    ) -> Result<Step, Failure> {
        let s = self.settings();
        let Some(progress) = r.dcv.as_mut() else {
            r.phase = BridgePhase::DcvStatus;
            return Ok(Step::Continue);
        };
        let due_again = r.phase == BridgePhase::DcvActionRequired;
        match &s.dcv.hook {
            Some(hook) if !progress.published => {
                let (Some(host), Some(value)) = (&progress.host, &progress.point) else {
                    r.phase = BridgePhase::DcvStatus;
                    return Ok(Step::Continue);
                };
                let record = DnsRecord {
                    domain,
                    record_type: progress.record_type,
                    host,
                    value,
                };
                dns_hook::run(
                    hook,
                    HookAction::Publish,
                    &record,
                    &s.dcv.hook_env,
                    s.dcv.hook_timeout,
                )
                .await
                .map_err(|e| Failure::hook(BridgePhase::DcvPublish, e))?;
                self.audit(domain, "dcv-publish", host, now).await;
                progress.published = true;
            }
            Some(_) => {}
            // No hook: a person publishes. Show the record and come back later; once
            // due again, assume it may be there and let Sectigo check.
            None if !due_again => {
                r.phase = BridgePhase::DcvActionRequired;
                r.next_attempt_at = Some(now + s.dcv.max_poll.as_secs() as i64);
                return Ok(Step::Rest);
            }
            None => progress.published = true,
        }
        r.phase = match (progress.record_type, progress.submitted_at) {
            (DcvRecordType::Cname, None) => BridgePhase::DcvSubmit,
            _ => BridgePhase::DcvWait,
        };
        Ok(Step::Continue)
    }

    /// DCV: poll Sectigo (at its announced `nextCheck`, within bounds) until validated.
    async fn dcv_wait(
        &self,
        domain: &str,
        r: &mut BridgeRecord,
        now: UnixTime,
    ) -> Result<Step, Failure> {
        let s = self.settings();
        let dcv = self
            .call(BridgePhase::DcvWait, s.client.dcv_status(domain))
            .await?;
        note_dcv(r, &dcv);
        if matches!(dcv.status, Some(ValidationStatus::Validated)) && !self.expires_soon(r) {
            r.phase = BridgePhase::DcvCleanup;
            return Ok(Step::Continue);
        }
        let progress = r
            .dcv
            .get_or_insert_with(|| DcvProgress::new(DcvRecordType::Txt, now));
        if matches!(dcv.order_status, Some(OrderStatus::Rejected)) {
            return Err(Failure::final_dcv("Sectigo rejected the DCV order"));
        }
        let submitted = progress.submitted_at.unwrap_or(progress.started_at);
        if now - submitted > s.dcv.max_wait.as_secs() as i64 {
            return Err(Failure::final_dcv(&format!(
                "DCV not validated within {} hours of submission",
                s.dcv.max_wait.as_secs() / 3600
            )));
        }
        // Sectigo says when it checks next; poll then (within our bounds).
        let wait = dcv
            .next_check
            .map(|t| (t.timestamp() - now).max(1) as u64)
            .unwrap_or(s.dcv.max_poll.as_secs())
            .min(s.dcv.max_poll.as_secs());
        r.next_attempt_at = Some(now + wait as i64);
        if s.dcv.hook.is_none() {
            r.phase = BridgePhase::DcvActionRequired;
        }
        Ok(Step::Rest)
    }

    /// DCV: validated. Remove the published record and let the subdomains know.
    async fn dcv_cleanup(&self, domain: &str, r: &mut BridgeRecord, now: UnixTime) -> Step {
        let s = self.settings();
        if let (Some(hook), Some(progress)) = (&s.dcv.hook, &r.dcv)
            && let (Some(host), Some(value), true) =
                (&progress.host, &progress.point, progress.published)
        {
            let record = DnsRecord {
                domain,
                record_type: progress.record_type,
                host,
                value,
            };
            // The domain is validated: a failed cleanup leaves a stale record, which is
            // worth a log line but not a retry loop.
            match dns_hook::run(
                hook,
                HookAction::Cleanup,
                &record,
                &s.dcv.hook_env,
                s.dcv.hook_timeout,
            )
            .await
            {
                Ok(()) => self.audit(domain, "dcv-cleanup", host, now).await,
                Err(e) => {
                    tracing::warn!(%domain, error = %e, "DNS hook cleanup failed");
                    self.audit(domain, "dcv-cleanup-failed", &e.to_string(), now)
                        .await;
                }
            }
        }
        r.dcv = None;
        let expires = r.dcv_expires.map(|d| d.to_string());
        self.audit(
            domain,
            "dcv-validated",
            expires.as_deref().unwrap_or("-"),
            now,
        )
        .await;
        self.synced(r, now);
        match self.store.wake_dcv_dependents(domain, now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(%domain, subdomains = n, "DCV validated; subdomains follow"),
            Err(e) => tracing::error!(%domain, error = %e, "waking subdomains failed"),
        }
        Step::Rest
    }

    /// Marks a record synced and schedules its recheck: sooner when DCV expires soon.
    fn synced(&self, r: &mut BridgeRecord, now: UnixTime) {
        let s = self.settings();
        let today = Utc::now().date_naive();
        let after = s.policy.recheck_after(r.dcv_expires, today);
        r.phase = BridgePhase::Synced;
        r.attempts = 0;
        r.checked_at = Some(now);
        r.next_attempt_at = Some(now + after.as_secs() as i64);
    }

    /// Which DCV run a domain needs now, if any: the operator's method, when DCV is missing,
    /// expired, or expires within the window.
    fn dcv_due(&self, r: &BridgeRecord) -> Option<DcvRecordType> {
        let s = self.settings();
        let record_type = match s.dcv.method {
            DcvMethod::None => return None,
            DcvMethod::Cname => DcvRecordType::Cname,
            DcvMethod::Txt => DcvRecordType::Txt,
        };
        let validated = r.dcv_status == Some(DcvState::Validated);
        (!validated || self.expires_soon(r)).then_some(record_type)
    }

    fn expires_soon(&self, r: &BridgeRecord) -> bool {
        let s = self.settings();
        let today = Utc::now().date_naive();
        match r.dcv_expires {
            Some(expires) => (expires - today).num_days() <= s.dcv.expiry_window_days,
            None => false,
        }
    }

    /// Audit-trail entry for a bridge action; a failure to write it is logged, not fatal.
    async fn audit(&self, domain: &str, step: &str, detail: &str, now: UnixTime) {
        let kind = AuditKind::Bridge {
            domain: domain.to_owned(),
            step: step.to_owned(),
            detail: detail.to_owned(),
        };
        if let Err(e) = self.store.record_event(kind, now).await {
            tracing::error!(%domain, error = %e, "writing the audit trail failed");
        }
    }

    /// Audit-trail entry for an action on a Sectigo id (the domain name is in the log).
    async fn audit_id(&self, id: u64, step: &str, detail: &str, now: UnixTime) {
        self.audit(&format!("sectigo-id-{id}"), step, detail, now)
            .await;
    }

    /// Awaits a Sectigo call, tagging its error with the step.
    async fn call<T>(
        &self,
        step: BridgePhase,
        call: impl Future<Output = Result<T, SectigoError>>,
    ) -> Result<T, Failure> {
        let result = call.await;
        if result.is_ok() {
            self.resumed().await;
        }
        result.map_err(|e| Failure::sectigo(step, e))
    }

    /// Applies a failed step to the record: when to try again, and what to show.
    async fn record_failure(&self, domain: &str, r: &mut BridgeRecord, failure: Failure) {
        let s = self.settings();
        let now = now();
        match &failure.cause {
            Cause::Sectigo(error @ SectigoError::Unauthorized { .. }) => {
                if !self.handle.paused.swap(true, Ordering::SeqCst) {
                    tracing::error!(
                        error = %error,
                        retry_secs = s.unauthorized_retry.as_secs(),
                        "BRIDGE PAUSED: Sectigo rejected certline's credentials; no domain is \
                         forwarded until [sectigo.auth] is fixed (certline retries by itself)"
                    );
                }
                r.waiting_on_credentials = true;
                r.next_attempt_at = Some(now + s.unauthorized_retry.as_secs() as i64);
            }
            cause
                if cause.is_retryable()
                    && !(cause.is_decode() && r.attempts + 1 >= MAX_DECODE_ATTEMPTS) =>
            {
                let jitter = rand::random_range(0.5..=1.0);
                let delay = s.backoff.delay(r.attempts, jitter, cause.retry_after());
                r.attempts = r.attempts.saturating_add(1);
                r.next_attempt_at = Some(now + delay.as_secs().max(1) as i64);
                tracing::info!(%domain, step = failure.step.name(), attempt = r.attempts,
                    retry_in_secs = delay.as_secs(), error = %cause, "bridge step failed; will retry");
                if let Cause::Hook(e) = cause {
                    self.audit(domain, "dns-hook-failed", &e.to_string(), now)
                        .await;
                }
            }
            cause => {
                tracing::warn!(%domain, step = failure.step.name(), error = %cause,
                    "bridge step refused; kept as failed until the next recheck");
                if r.dcv.is_some() {
                    self.audit(domain, "dcv-failed", &cause.to_string(), now)
                        .await;
                }
                r.phase = BridgePhase::Failed;
                r.attempts = 0;
                r.dcv = None;
                r.next_attempt_at = Some(now + s.recheck_interval.as_secs() as i64);
            }
        }
        let mut error = failure.into_error(now);
        // A retryable cause given up on (undecodable answers, N times) is final.
        error.transient &= r.phase != BridgePhase::Failed;
        r.last_error = Some(error);
    }
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
enum Cause {
    #[error(transparent)]
    Sectigo(SectigoError),
    #[error(transparent)]
    Hook(HookError),
    /// DCV ended without validation (rejected, or not validated in time). Final for the run.
    #[error("{0}")]
    DcvGaveUp(String),
    /// SCM says the domain exists but this admin cannot find it (bounded -700 cycle).
    #[error("{0}")]
    Invisible(String),
    /// certline's own store failed; retried.
    #[error("store: {0}")]
    Store(String),
}

impl Cause {
    fn is_retryable(&self) -> bool {
        match self {
            Cause::Sectigo(e) => e.is_retryable(),
            // A hook that failed or hung may work next time (DNS API down, rate limits).
            Cause::Hook(_) | Cause::Store(_) => true,
            Cause::DcvGaveUp(_) | Cause::Invisible(_) => false,
        }
    }

    fn is_decode(&self) -> bool {
        matches!(self, Cause::Sectigo(SectigoError::Decode { .. }))
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Cause::Sectigo(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// A failed step.
struct Failure {
    step: BridgePhase,
    cause: Cause,
}

impl Failure {
    fn sectigo(step: BridgePhase, error: SectigoError) -> Self {
        Self {
            step,
            cause: Cause::Sectigo(error),
        }
    }

    fn hook(step: BridgePhase, error: HookError) -> Self {
        Self {
            step,
            cause: Cause::Hook(error),
        }
    }

    fn final_dcv(text: &str) -> Self {
        Self {
            step: BridgePhase::DcvWait,
            cause: Cause::DcvGaveUp(text.to_owned()),
        }
    }

    fn into_error(self, at: UnixTime) -> BridgeError {
        let transient = self.cause.is_retryable();
        let (code, text) = match &self.cause {
            Cause::Sectigo(SectigoError::Api {
                code, description, ..
            }) => (*code, description.clone()),
            Cause::Sectigo(other) => (other.code(), other.to_string()),
            other => (None, other.to_string()),
        };
        BridgeError {
            step: self.step,
            code,
            text,
            transient,
            at,
        }
    }
}

/// Does a delegation status mean "waiting for someone's approval"? `AWAITING_ME` is only
/// seen in a client library (unconfirmed): treated like `REQUESTED`, which fails safe (the
/// domain is shown waiting rather than synced).
fn awaits_approval(status: Option<&DelegationStatus>) -> bool {
    matches!(
        status,
        Some(DelegationStatus::Requested | DelegationStatus::AwaitingMe)
    )
}

/// Copies what a DCV status says into the record.
fn note_dcv(r: &mut BridgeRecord, dcv: &DcvStatus) {
    r.dcv_status = dcv.status.as_ref().map(|s| DcvState::parse(s.as_str()));
    r.dcv_expires = dcv.expiration_date;
}

fn now() -> UnixTime {
    Utc::now().timestamp()
}
