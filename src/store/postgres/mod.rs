//! The PostgreSQL store: the same records and promises as the sled store, in a database that
//! several certline instances share (issue 16; the interface is the one the sled store
//! keeps, method for method).
//!
//! # Schema
//!
//! `migrations/0001_initial.sql`, applied at start-up by `migrations.rs`: typed tables for
//! keys, their domains, domains, the audit trail, claim caps, link tokens and the mail outbox;
//! the bridge's and the ACME worker's records as versioned JSONB (the same `Stored*` enums the
//! sled store writes with postcard) beside the columns their queries need (`due`, `phase`,
//! the lease).
//!
//! # Every write commits before it returns
//!
//! Each write method is one transaction: its reads, checks and writes, the audit events it
//! causes, the work it queues (bridge, ACME, mail) and a `pg_notify` for the other instances'
//! workers. A method returns only after `COMMIT` returned, so [`PgStore::mark`],
//! [`PgStore::commit_since`] and [`PgStore::commit`] have nothing left to wait for, and no read
//! ever sees an uncommitted change. Audit log lines are written after the commit.
//!
//! # Locking (several callers, several instances)
//!
//! Read-check-write sequences lock what they decide on, in one order (key row, then e-mail
//! row, then bridge rows by name, then the ACME row), so that no two transactions wait for
//! each other in a circle; a deadlock or serialisation failure the server reports anyway is
//! retried (`RETRIES` times).
//!
//! * A key's row (`SELECT … FOR UPDATE`) serialises claims, adds and removes of one key, so
//!   `domain_count` always equals its domains.
//! * An address's `claim_emails` row serialises its claims, so the unconfirmed-keys cap is
//!   counted with every other claim of that address finished; the per-day counter of new
//!   addresses is one conditional upsert (`… ON CONFLICT DO UPDATE … WHERE count < cap`).
//! * The bridge's and the ACME worker's outboxes are taken with `FOR UPDATE SKIP LOCKED` and a
//!   lease (owner, until): see `bridge.rs`. The mail outbox is leased the same way, so two
//!   instances do not send one claim mail twice.
//! * Each instance writes a heartbeat row (`instances.rs`), so that every instance knows how
//!   many share the database and takes its share of the Sectigo request budget.
//!
//! # Where this differs from the sled store
//!
//! * `audit_events` pages by a sequence number handed out at insert, while rows become
//!   visible at commit: a reader paging with `after` can miss an event whose transaction
//!   committed after a later-numbered one it already read.
//! * `due_bridge_jobs`/`due_acme_keys`/`due_mail` write (the lease) and skip rows another
//!   instance holds; `next_*_due` answers when a held row's lease ends rather than its due
//!   time. A save that leaves the record due now keeps (renews) the lease instead of
//!   releasing it: the worker goes on with the same domain's next step at once.
//! * `DueMail::outbox_key` carries the job's row id (8 bytes, big-endian), not a sled key;
//!   jobs due at the same second are taken in key-hash then insertion order.
//! * `key_domains` at a deep offset costs an index scan of `offset` entries (no rank index).
//! * Connections use TLS as `sslmode` in the URL says, with libpq's meanings (`tls.rs`).

pub mod config;
mod health;
mod instances;
mod key_queue;
mod migrations;
mod sql;
pub mod tls;
mod wakeups;

pub use config::PostgresConfig;

use crate::store::Mark;

/// Runs `$body` (a block evaluating to `Result<T, StoreError>`, with `$w: &mut Work` in
/// scope; `return` leaves the block) in a transaction of `$store` and commits it; then
/// writes the audit log lines and wakes the workers. A deadlock or serialisation failure
/// runs the block again from the start, so it must not consume what it captures. (A macro
/// rather than a method taking an async closure: the futures of async closures that borrow
/// their arguments are not provably `Send`, and callers spawn the store's futures.)
macro_rules! in_tx {
    ($store:expr, $w:ident, $body:block) => {{
        let store: &$crate::store::postgres::PgStore = $store;
        let mut attempt = 0usize;
        loop {
            let outcome: Result<_, $crate::store::StoreError> = async {
                let mut client = store.client().await?;
                let mut work = store.begin(&mut client).await?;
                let value = {
                    let $w = &mut work;
                    let body: Result<_, $crate::store::StoreError> = async { $body }.await;
                    body?
                };
                let committed = store.finish(work).await?;
                Ok((value, committed))
            }
            .await;
            if let Some(result) = store.settle(outcome, &mut attempt) {
                break result;
            }
        }
    }};
}

/// Runs `$body` (a block evaluating to `Result<T, StoreError>`) with `$c`, a pooled
/// connection of `$store`: reads, each statement seeing what was committed when it started.
macro_rules! on_conn {
    ($store:expr, $c:ident, $body:block) => {{
        let store: &$crate::store::postgres::PgStore = $store;
        let result: Result<_, $crate::store::StoreError> = async {
            let client = store.client().await?;
            let $c = &client;
            $body
        }
        .await;
        if let Err(e) = &result {
            store.observe(e);
        }
        result
    }};
}

// After the macros: these modules use them.
mod acme;
mod bridge;
mod claims;
mod keys;
mod mail;
mod operator;
mod rows;
mod transfer;

use super::records::AuditEvent;
use super::{AuditKind, GroupCommit, StoreError, UnixTime};
use health::Health;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wakeups::{Channels, Wakeups};

/// How often a transaction the server aborted for a deadlock or a serialisation failure is
/// tried again before the error is returned.
const RETRIES: usize = 5;

/// How often the running instance checks that no newer certline migrated the schema.
const SCHEMA_CHECK: Duration = Duration::from_secs(10);

/// The PostgreSQL store. Share it behind an `Arc`.
pub struct PgStore {
    pool: deadpool_postgres::Pool,
    /// This instance's name on the leases it takes.
    instance: String,
    lease_secs: i64,
    channels: Channels,
    bridge_enabled: AtomicBool,
    mail_enabled: AtomicBool,
    acme_enabled: AtomicBool,
    wakeups: Arc<Wakeups>,
    health: Arc<Health>,
    closed: AtomicBool,
    /// Stops the listener and the probe.
    stop: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// One key's writes queue here before they take a connection ([`key_queue`]).
    key_queue: key_queue::KeyQueue,
    /// How many instances share the database now, as the heartbeat last counted
    /// ([`instances`]).
    live: tokio::sync::watch::Receiver<usize>,
}

/// What a committed transaction leaves to do.
#[derive(Default)]
struct Committed {
    audit: Vec<AuditEvent>,
    wake_bridge: bool,
    wake_acme: bool,
}

/// One write transaction and what it does once committed.
pub(super) struct Work<'c> {
    pub(super) tx: deadpool_postgres::Transaction<'c>,
    audit: Vec<AuditEvent>,
    wake_bridge: bool,
    wake_acme: bool,
    discard: bool,
}

impl Work<'_> {
    /// Rolls the transaction back instead of committing it (a refused claim writes
    /// nothing, though its checks may have written before deciding).
    pub(super) fn discard(&mut self) {
        self.discard = true;
    }

    /// Appends an audit event in this transaction; its log line follows the commit.
    pub(super) async fn audit(
        &mut self,
        at: UnixTime,
        ip: IpAddr,
        key_id: String,
        kind: AuditKind,
    ) -> Result<(), StoreError> {
        let detail = serde_json::to_value(&kind).expect("an audit kind serialises to JSON");
        sql::execute(
            &self.tx,
            "INSERT INTO audit (at, ip, key_id, event, kind) VALUES ($1, $2, $3, $4, $5)",
            &[&at, &ip, &key_id, &kind.name(), &detail],
        )
        .await?;
        self.audit.push(AuditEvent {
            at,
            ip,
            key_id,
            kind,
        });
        Ok(())
    }

    /// The bridge workers (of every instance) should look at the outbox after the commit.
    pub(super) fn wake_bridge(&mut self) {
        self.wake_bridge = true;
    }

    /// The ACME workers should look at their outbox after the commit.
    pub(super) fn wake_acme(&mut self) {
        self.wake_acme = true;
    }
}

impl PgStore {
    /// Connects, applies the schema migrations this database lacks (under an advisory lock:
    /// instances starting together apply them once), and starts the notification listener
    /// and the health probe. Refuses a database whose schema is newer than this binary.
    pub async fn connect(config: &PostgresConfig) -> Result<PgStore, StoreError> {
        let (pg, tls_settings) = config.connection()?;
        let server = config::describe(&pg);
        let connector = tls::connector(&tls_settings)?;
        let manager = deadpool_postgres::Manager::from_config(
            pg.clone(),
            connector.clone(),
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let wait = config.statement_timeout().max(Duration::from_secs(1));
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(wait))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Pool(format!("building the connection pool: {e}")))?;
        let mut client = pool.get().await.map_err(|e| {
            let tls = match &e {
                deadpool_postgres::PoolError::Backend(e) => tls::explain(e, &tls_settings),
                _ => None,
            };
            match tls {
                Some(why) => {
                    StoreError::Pool(format!("cannot connect to PostgreSQL at {server}: {why}"))
                }
                None => StoreError::Pool(format!(
                    "cannot connect to PostgreSQL at {server}: {e}; check that it runs, that \
                     [store.postgres] url names it, and that this host may connect"
                )),
            }
        })?;
        migrations::apply(&mut client, &config.schema)
            .await
            .map_err(|e| match e {
                StoreError::Postgres(e) => {
                    StoreError::Pool(format!("applying the schema migrations at {server}: {e}"))
                }
                other => other,
            })?;
        let heartbeat = instances::Heartbeat {
            name: config.instance.clone(),
            interval: config.heartbeat(),
        };
        let live_now = heartbeat.beat(&client).await.map_err(|e| {
            StoreError::Pool(format!(
                "writing this instance's heartbeat at {server}: {e}"
            ))
        })?;
        drop(client);
        let (live_tx, live) = tokio::sync::watch::channel(live_now);
        tracing::info!(server = %server, sslmode = tls_settings.mode.name(), "connected to PostgreSQL");
        let health = Arc::new(Health::new(server));
        let wakeups = Arc::new(Wakeups::default());
        let channels = Channels::new(&config.schema);
        let stop = CancellationToken::new();
        let listener = tokio::spawn(wakeups::listen(
            pg,
            connector,
            channels.clone(),
            wakeups.clone(),
            stop.clone(),
        ));
        let probe = tokio::spawn(probe(
            pool.clone(),
            health.clone(),
            config.schema.clone(),
            stop.clone(),
        ));
        let beating = tokio::spawn(instances::run(
            pool.clone(),
            heartbeat,
            live_tx,
            stop.clone(),
        ));
        Ok(PgStore {
            pool,
            instance: config.instance.clone(),
            lease_secs: config.lease_secs.min(i64::MAX as u64) as i64,
            channels,
            bridge_enabled: AtomicBool::new(false),
            mail_enabled: AtomicBool::new(false),
            acme_enabled: AtomicBool::new(false),
            wakeups,
            health,
            closed: AtomicBool::new(false),
            stop,
            tasks: Mutex::new(vec![listener, probe, beating]),
            key_queue: key_queue::KeyQueue::new(),
            live,
        })
    }

    /// This instance's name, as written on the leases it holds.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Nothing to record: every write committed before it returned.
    pub fn mark(&self) -> Mark {
        // Nothing to record: every write committed before it returned.
        Mark::default()
    }

    /// Every write committed before it returned; `Ok` unless the store is closed.
    pub async fn commit_since(&self, _since: Mark) -> Result<(), StoreError> {
        self.open()
    }

    /// Every write committed before it returned; `Ok` unless the store is closed.
    pub async fn commit(&self) -> Result<(), StoreError> {
        self.open()
    }

    /// `Ok` while the database took the last write (or the probe's); otherwise why not and
    /// what to do (for `/readyz`).
    pub fn writable(&self) -> Result<(), StoreError> {
        self.open()?;
        self.health.check()
    }

    /// Cancelled only when the database's schema turned out newer than this binary.
    pub fn fatal(&self) -> &CancellationToken {
        &self.health.fatal
    }

    /// Nothing is buffered: `Ok` unless the store is closed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.open()
    }

    /// How many instances share the database now (this one included), following the
    /// heartbeats ([`instances`]): the Sectigo client divides the deployment's request budget
    /// by it.
    pub fn live_instances(&self) -> tokio::sync::watch::Receiver<usize> {
        self.live.clone()
    }

    /// Stops the listener, the probe and the heartbeat, takes this instance off the live
    /// ones (the others take its share of the Sectigo budget at their next heartbeat) and
    /// closes the pool; later calls fail.
    pub async fn close(&self) -> Result<(), StoreError> {
        let was_closed = self.closed.swap(true, Ordering::SeqCst);
        self.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
        if !was_closed {
            let left = match self.pool.get().await {
                Ok(client) => instances::leave(&client, &self.instance).await,
                Err(e) => Err(StoreError::Pool(e.to_string())),
            };
            if let Err(e) = left {
                tracing::warn!(error = %e, "could not take this instance off the live ones; the others count it until its heartbeat is three beats old");
            }
        }
        self.pool.close();
        Ok(())
    }

    /// There is no group commit on PostgreSQL (the server's own commit does it).
    pub fn group_commit(&self) -> Option<&GroupCommit> {
        None
    }

    /// Resolves when a domain was queued for the bridge (here or by another instance) since
    /// the last call.
    pub async fn bridge_queued(&self) {
        self.wakeups.bridge.notified().await
    }

    /// Resolves when a key was touched for the ACME worker since the last call.
    pub async fn acme_queued(&self) {
        self.wakeups.acme.notified().await
    }

    fn open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::SeqCst) {
            Err(StoreError::Flush(super::FlushError(
                "the store is closed".into(),
            )))
        } else {
            Ok(())
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.open()?;
        self.pool
            .get()
            .await
            .map_err(|e| health::pool_unavailable(&self.health, e))
    }

    /// Begins a write transaction (see [`in_tx!`]).
    async fn begin<'c>(
        &self,
        client: &'c mut deadpool_postgres::Client,
    ) -> Result<Work<'c>, StoreError> {
        Ok(Work {
            tx: client.transaction().await?,
            audit: Vec::new(),
            wake_bridge: false,
            wake_acme: false,
            discard: false,
        })
    }

    /// Commits `work` (or rolls it back when discarded), after the `pg_notify` of the
    /// workers it wakes (delivered only at COMMIT).
    async fn finish(&self, work: Work<'_>) -> Result<Committed, StoreError> {
        if work.discard {
            work.tx.rollback().await?;
            return Ok(Committed::default());
        }
        for (wake, channel) in [
            (work.wake_bridge, &self.channels.bridge),
            (work.wake_acme, &self.channels.acme),
        ] {
            if wake {
                sql::execute(&work.tx, "SELECT pg_notify($1, '')", &[channel]).await?;
            }
        }
        let Work {
            tx,
            audit,
            wake_bridge,
            wake_acme,
            discard: _,
        } = work;
        tx.commit().await?;
        Ok(Committed {
            audit,
            wake_bridge,
            wake_acme,
        })
    }

    /// What follows one run of a transaction: after a commit the audit log lines and the
    /// local wake-ups, `Some(value)`; after a deadlock or serialisation failure with runs
    /// left, `None` (run it again); after another error, `Some(error)`.
    fn settle<T>(
        &self,
        outcome: Result<(T, Committed), StoreError>,
        attempt: &mut usize,
    ) -> Option<Result<T, StoreError>> {
        match outcome {
            Ok((value, committed)) => {
                self.health.up();
                for event in &committed.audit {
                    tracing::info!(event = event.kind.name(), key = %event.key_id, ip = %event.ip, kind = ?event.kind, "audit");
                }
                if committed.wake_bridge {
                    self.wakeups.bridge.notify_one();
                }
                if committed.wake_acme {
                    self.wakeups.acme.notify_one();
                }
                Some(Ok(value))
            }
            Err(e) if *attempt < RETRIES && retryable(&e) => {
                *attempt += 1;
                tracing::debug!(error = %e, attempt = *attempt, "transaction retried");
                None
            }
            Err(e) => {
                self.health.observe(&e);
                Some(Err(e))
            }
        }
    }

    /// A read failed: the server may be unreachable.
    fn observe(&self, error: &StoreError) {
        self.health.observe(error);
    }

    /// The lease a transaction takes now: this instance, for `lease_secs`.
    pub(super) fn lease_secs(&self) -> f64 {
        self.lease_secs as f64
    }
}

/// A store dropped without [`PgStore::close`] (a test's stand-in for a crash) stops its
/// background tasks but leaves its heartbeat row, as a killed process would.
impl Drop for PgStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A deadlock, a serialisation failure, or a unique violation (two transactions inserted
/// the same new row; the loser finds it on the next run): the transaction can run again.
fn retryable(error: &StoreError) -> bool {
    use tokio_postgres::error::SqlState;
    match error {
        StoreError::Postgres(e) => e.code().is_some_and(|c| {
            *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::UNIQUE_VIOLATION
        }),
        _ => false,
    }
}

/// Once a second while the store is unwritable (or at once after a failure): does the
/// server take writes again? Every [`SCHEMA_CHECK`]: has a newer certline migrated the schema?
async fn probe(
    pool: deadpool_postgres::Pool,
    health: Arc<Health>,
    schema: String,
    stop: CancellationToken,
) {
    let mut last_schema_check = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = health.kick.notified() => {
                // Let the failure settle a moment; a probe right away finds the same.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = stop.cancelled() => return,
        }
        let check_schema = last_schema_check.elapsed() >= SCHEMA_CHECK;
        if health.is_writable() && !check_schema {
            continue;
        }
        let client = match pool.get().await {
            Ok(client) => client,
            Err(e) => {
                health::pool_unavailable(&health, e);
                continue;
            }
        };
        if check_schema {
            last_schema_check = tokio::time::Instant::now();
            match migrations::recorded(&client).await {
                Ok(found) if found > migrations::latest() => {
                    let e = migrations::newer_schema(&schema, found);
                    tracing::error!(error = %e, "stopping: the database schema is newer than this binary");
                    health.down(e.to_string());
                    health.fatal.cancel();
                    return;
                }
                Ok(_) => {}
                Err(e) => health.observe(&e),
            }
        }
        if !health.is_writable() {
            let takes_writes = sql::row(
                &client,
                "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'",
                &[],
            )
            .await;
            match takes_writes {
                Ok(Some(row)) if row.get::<_, bool>(0) => health.up(),
                Ok(_) => health.down(format!(
                    "PostgreSQL at {} is read-only (a standby, or default_transaction_read_only); \
                     point [store.postgres] url at the primary",
                    health.server()
                )),
                Err(e) => health.observe(&e),
            }
        }
    }
}
