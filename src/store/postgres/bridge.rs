//! The bridge's state: one row per host name in `bridge`, whose `due` column is the outbox.
//!
//! # Leases: one instance works on a domain at a time
//!
//! [`PgStore::due_bridge_jobs`] takes due rows with `FOR UPDATE SKIP LOCKED` (two instances
//! asking at once get different rows) and writes a lease on each: this instance's name and
//! `now + lease_secs` by the database's clock. A row under another instance's unexpired lease
//! is not handed out; this instance's own leased rows are (its worker skips what it has in
//! flight, as with sled). A lease expires by itself, so the domains of an instance that died
//! are taken over after `lease_secs`.
//!
//! [`PgStore::save_bridge`] is refused while another instance holds the lease (it took the
//! work over after this one's lease expired: this instance's step result is dropped, and the
//! other instance repeats the step, which every step tolerates). A save releases the lease
//! when the saved record rests (due later, or never); a record saved still due now keeps
//! it, renewed, because the worker goes on to the next step of the same domain at once
//! and no other instance may start that step meanwhile.
//!
//! Changes that are not the worker's step (a confirmation, a requeue, the credential and DCV
//! wake-ups, the backfill) update the record under its row lock and leave the lease alone;
//! `save_bridge`'s rule that `key_confirmed` only goes from false to true keeps a
//! confirmation that the lease holder's older copy would undo.

use super::keys::count;
use super::rows::{bridge_json, bridge_record};
use super::{PgStore, Work, sql};
use crate::store::{BridgePhase, BridgeRecord, FlushError, StoreError, UnixTime};

/// How many earliest outbox rows `next_bridge_due` looks at to skip other instances' leases.
pub(super) const NEXT_DUE_WINDOW: i64 = 64;

/// The columns of `bridge` kept beside the record, from the record.
struct Columns {
    phase: &'static str,
    due: Option<i64>,
    waiting: bool,
    dcv_domain: Option<String>,
    record: serde_json::Value,
}

fn columns(record: &BridgeRecord) -> Columns {
    Columns {
        phase: record.phase.name(),
        due: record.next_attempt_at,
        waiting: record.waiting_on_credentials,
        dcv_domain: record.dcv_domain.clone(),
        record: bridge_json(record),
    }
}

/// Inserts a record unless the domain has one; returns whether it was inserted.
pub(super) async fn insert_bridge(
    w: &Work<'_>,
    domain: &str,
    record: &BridgeRecord,
) -> Result<bool, StoreError> {
    let c = columns(record);
    let inserted = sql::execute(
        &w.tx,
        "INSERT INTO bridge (domain, phase, due, waiting_on_credentials, dcv_domain, record)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        &[
            &domain,
            &c.phase,
            &c.due,
            &c.waiting,
            &c.dcv_domain,
            &c.record,
        ],
    )
    .await?;
    Ok(inserted == 1)
}

/// Replaces a domain's record (its row exists and is locked by `w`), leaving its lease.
pub(super) async fn write_bridge(
    w: &Work<'_>,
    domain: &str,
    record: &BridgeRecord,
) -> Result<(), StoreError> {
    let c = columns(record);
    sql::execute(
        &w.tx,
        "UPDATE bridge SET phase = $2, due = $3, waiting_on_credentials = $4, dcv_domain = $5,
             record = $6
         WHERE domain = $1",
        &[
            &domain,
            &c.phase,
            &c.due,
            &c.waiting,
            &c.dcv_domain,
            &c.record,
        ],
    )
    .await?;
    Ok(())
}

/// [`write_bridge`] for many records in one statement.
pub(super) async fn write_bridges(
    w: &Work<'_>,
    records: &[(String, BridgeRecord)],
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut domains = Vec::with_capacity(records.len());
    let mut phases = Vec::with_capacity(records.len());
    let mut dues = Vec::with_capacity(records.len());
    let mut waiting = Vec::with_capacity(records.len());
    let mut dcv_domains = Vec::with_capacity(records.len());
    let mut jsons = Vec::with_capacity(records.len());
    for (domain, record) in records {
        let c = columns(record);
        domains.push(domain.as_str());
        phases.push(c.phase);
        dues.push(c.due);
        waiting.push(c.waiting);
        dcv_domains.push(c.dcv_domain);
        jsons.push(c.record);
    }
    sql::execute(
        &w.tx,
        "UPDATE bridge AS b SET phase = v.phase, due = v.due, waiting_on_credentials = v.waiting,
             dcv_domain = v.dcv_domain, record = v.record
         FROM unnest($1::text[], $2::text[], $3::int8[], $4::bool[], $5::text[], $6::jsonb[])
             AS v(domain, phase, due, waiting, dcv_domain, record)
         WHERE b.domain = v.domain",
        &[&domains, &phases, &dues, &waiting, &dcv_domains, &jsons],
    )
    .await?;
    Ok(())
}

/// A domain's record, locked until `w` ends.
pub(super) async fn lock_bridge(
    w: &Work<'_>,
    domain: &str,
) -> Result<Option<BridgeRecord>, StoreError> {
    let row = sql::row(
        &w.tx,
        "SELECT record FROM bridge WHERE domain = $1 FOR UPDATE",
        &[&domain],
    )
    .await?;
    row.map(|r| bridge_record(&r, 0)).transpose()
}

/// The records of `domains` that exist, locked in name order (the one order every
/// transaction locks several bridge rows in).
pub(super) async fn lock_bridges(
    w: &Work<'_>,
    domains: &[String],
) -> Result<Vec<(String, BridgeRecord)>, StoreError> {
    if domains.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sql::rows(
        &w.tx,
        "SELECT domain, record FROM bridge WHERE domain = ANY($1) ORDER BY domain FOR UPDATE",
        &[&domains],
    )
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, bridge_record(r, 1)?)))
        .collect()
}

/// The records matching `filter` (SQL over the `bridge` columns), locked in name order.
async fn lock_bridges_where(
    w: &Work<'_>,
    filter: &str,
    params: sql::Params<'_>,
) -> Result<Vec<(String, BridgeRecord)>, StoreError> {
    let rows = sql::rows(
        &w.tx,
        &format!("SELECT domain, record FROM bridge WHERE {filter} ORDER BY domain FOR UPDATE"),
        params,
    )
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, bridge_record(r, 1)?)))
        .collect()
}

/// The change that a confirmed key now holds the domain: `key_confirmed` is set, and a
/// record waiting in `awaiting_confirmation` goes back to `queued`, due now. `None` when
/// there is nothing to change; else the record and whether it was requeued.
pub(super) fn mark_key_confirmed(
    mut record: BridgeRecord,
    now: UnixTime,
) -> Option<(BridgeRecord, bool)> {
    let waiting = record.phase == BridgePhase::AwaitingConfirmation;
    if record.key_confirmed && !waiting {
        return None;
    }
    record.key_confirmed = true;
    if waiting {
        record.phase = BridgePhase::Queued;
        record.attempts = 0;
        record.next_attempt_at = Some(now);
    }
    Some((record, waiting))
}

/// The refusal of a save whose lease another instance holds now (`subject`: the domain or
/// the key id).
pub(super) fn taken_over(subject: &str, owner: &str) -> StoreError {
    StoreError::Flush(FlushError(
        format!(
            "another instance ({owner}) took the work on {subject} over after this instance's \
             lease expired; this instance's result is dropped and that instance repeats the \
             step (raise [store.postgres] lease_secs if steps outlast it)"
        )
        .into(),
    ))
}

impl PgStore {
    /// Turns bridge bookkeeping on: from now on, new domains are queued for the bridge.
    pub fn enable_bridge(&self) {
        self.bridge_enabled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Is the bridge bookkeeping on?
    pub fn bridge_enabled(&self) -> bool {
        self.bridge_enabled
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The bridge record of a domain.
    pub async fn bridge(&self, domain: &str) -> Result<Option<BridgeRecord>, StoreError> {
        on_conn!(self, c, {
            let row =
                sql::row(c, "SELECT record FROM bridge WHERE domain = $1", &[&domain]).await?;
            row.map(|r| bridge_record(&r, 0)).transpose()
        })
    }

    /// Up to `limit` domains due at or before `now`, earliest first, each now leased to this
    /// instance (see the module documentation). Rows another instance holds are skipped.
    pub async fn due_bridge_jobs(
        &self,
        now: UnixTime,
        limit: usize,
    ) -> Result<Vec<(String, BridgeRecord)>, StoreError> {
        let lease = self.lease_secs();
        let mut jobs = in_tx!(self, w, {
            let rows = sql::rows(
                &w.tx,
                "WITH picked AS (
                         SELECT domain FROM bridge
                         WHERE due IS NOT NULL AND due <= $1
                           AND (lease_until IS NULL OR lease_until <= clock_timestamp()
                                OR lease_owner = $3)
                         ORDER BY due, domain
                         LIMIT $2
                         FOR UPDATE SKIP LOCKED)
                     UPDATE bridge AS b
                     SET lease_owner = $3,
                         lease_until = clock_timestamp() + make_interval(secs => $4)
                     FROM picked WHERE b.domain = picked.domain
                     RETURNING b.due, b.domain, b.record",
                &[&now, &count(limit), &self.instance, &lease],
            )
            .await?;
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get::<_, i64>(0)?,
                        r.try_get::<_, String>(1)?,
                        bridge_record(r, 2)?,
                    ))
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })?;
        jobs.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        Ok(jobs.into_iter().map(|(_, d, r)| (d, r)).collect())
    }

    /// The earliest time a domain in the outbox may be taken by this instance: its due time,
    /// or for a due domain another instance holds, when that lease ends.
    pub async fn next_bridge_due(&self) -> Result<Option<UnixTime>, StoreError> {
        on_conn!(self, c, {
            let rows = sql::rows(
                c,
                "SELECT CASE WHEN lease_owner IS NOT NULL AND lease_owner <> $1
                                  AND lease_until > clock_timestamp()
                             THEN greatest(due, ceil(extract(epoch FROM lease_until))::bigint)
                             ELSE due END
                 FROM bridge WHERE due IS NOT NULL ORDER BY due, domain LIMIT $2",
                &[&self.instance, &NEXT_DUE_WINDOW],
            )
            .await?;
            Ok(rows.iter().map(|r| r.get::<_, i64>(0)).min())
        })
    }

    /// How many domains are waiting in the outbox (for metrics).
    pub async fn outbox_len(&self) -> Result<usize, StoreError> {
        on_conn!(self, c, {
            let row = sql::row(c, "SELECT count(*) FROM bridge WHERE due IS NOT NULL", &[]).await?;
            Ok(row.map_or(0, |r| r.get::<_, i64>(0)) as usize)
        })
    }

    /// Replaces a domain's bridge record (the worker's step result). Refused while another
    /// instance holds the domain's lease; releases this instance's lease unless the record
    /// is still due now (see the module documentation).
    ///
    /// `key_confirmed` only ever goes from false to true: a key confirmed while the worker
    /// held an older copy of the record must not be undone by the worker's save, and a
    /// record the worker parks in `awaiting_confirmation` meanwhile is requeued at once.
    pub async fn save_bridge(&self, domain: &str, record: &BridgeRecord) -> Result<(), StoreError> {
        let lease = self.lease_secs();
        in_tx!(self, w, {
            let mut record = record.clone();
            let now = chrono::Utc::now().timestamp();
            let old = sql::row(
                &w.tx,
                "SELECT record, lease_owner, lease_until > clock_timestamp() FROM bridge
                 WHERE domain = $1 FOR UPDATE",
                &[&domain],
            )
            .await?;
            if let Some(row) = &old {
                let owner: Option<String> = row.try_get(1)?;
                let held: Option<bool> = row.try_get(2)?;
                if let Some(owner) = owner
                    && held == Some(true)
                    && owner != self.instance
                {
                    return Err(taken_over(domain, &owner));
                }
                let old = bridge_record(row, 0)?;
                if old.key_confirmed && !record.key_confirmed {
                    record.key_confirmed = true;
                    if record.phase == BridgePhase::AwaitingConfirmation {
                        record.phase = BridgePhase::Queued;
                        record.next_attempt_at = Some(now);
                        w.wake_bridge();
                    }
                }
            }
            let keep_lease = record.next_attempt_at.is_some_and(|due| due <= now);
            let owner = keep_lease.then_some(self.instance.as_str());
            let c = columns(&record);
            sql::execute(
                &w.tx,
                "INSERT INTO bridge (domain, phase, due, waiting_on_credentials, dcv_domain,
                                     record, lease_owner, lease_until)
                 VALUES ($1, $2, $3, $4, $5, $6, $7,
                         CASE WHEN $7::text IS NULL THEN NULL
                              ELSE clock_timestamp() + make_interval(secs => $8) END)
                 ON CONFLICT (domain) DO UPDATE SET phase = EXCLUDED.phase, due = EXCLUDED.due,
                     waiting_on_credentials = EXCLUDED.waiting_on_credentials,
                     dcv_domain = EXCLUDED.dcv_domain, record = EXCLUDED.record,
                     lease_owner = EXCLUDED.lease_owner, lease_until = EXCLUDED.lease_until",
                &[
                    &domain,
                    &c.phase,
                    &c.due,
                    &c.waiting,
                    &c.dcv_domain,
                    &c.record,
                    &owner,
                    &lease,
                ],
            )
            .await?;
            Ok(())
        })
    }

    /// Makes every record parked by a 401 due at `now` (new credentials arrived). The records
    /// keep `waiting_on_credentials` until a step succeeds. Returns how many there are.
    pub async fn release_credential_waiters(&self, now: UnixTime) -> Result<usize, StoreError> {
        in_tx!(self, w, {
            let mut waiting = lock_bridges_where(w, "waiting_on_credentials", &[]).await?;
            for (_, record) in &mut waiting {
                record.next_attempt_at = Some(now);
            }
            write_bridges(w, &waiting).await?;
            if !waiting.is_empty() {
                w.wake_bridge();
            }
            Ok(waiting.len())
        })
    }

    /// Does any record wait on credentials (parked by a 401)?
    pub async fn has_credential_waiters(&self) -> Result<bool, StoreError> {
        on_conn!(self, c, {
            let row = sql::row(
                c,
                "SELECT EXISTS (SELECT 1 FROM bridge WHERE waiting_on_credentials)",
                &[],
            )
            .await?;
            Ok(row.is_some_and(|r| r.get(0)))
        })
    }

    /// Makes every synced domain that validates at `dcv_domain` (but is not it) due at `now`,
    /// so its DCV state follows its validation domain's at once.
    pub async fn wake_dcv_dependents(
        &self,
        dcv_domain: &str,
        now: UnixTime,
    ) -> Result<usize, StoreError> {
        let synced = BridgePhase::Synced.name();
        in_tx!(self, w, {
            let mut dependents = lock_bridges_where(
                w,
                "dcv_domain = $1 AND phase = $2 AND domain <> $1",
                &[&dcv_domain, &synced],
            )
            .await?;
            for (_, record) in &mut dependents {
                record.next_attempt_at = Some(now);
            }
            write_bridges(w, &dependents).await?;
            if !dependents.is_empty() {
                w.wake_bridge();
            }
            Ok(dependents.len())
        })
    }

    /// Gives `domain` a bridge record, queued and due at `now`, unless it has one. Returns
    /// whether one was created.
    pub async fn ensure_bridge_record(
        &self,
        domain: &str,
        key_confirmed: bool,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        in_tx!(self, w, {
            let created =
                insert_bridge(w, domain, &BridgeRecord::queued(now, key_confirmed)).await?;
            if created {
                w.wake_bridge();
            }
            Ok(created)
        })
    }

    /// Run when the bridge starts: queues every registered domain's host that has no bridge
    /// record yet, and requeues the domains whose rest depends on the configuration (outside
    /// the allowed suffixes, awaiting a confirmed key). Returns how many were queued.
    pub async fn backfill_bridge(&self, now: UnixTime) -> Result<usize, StoreError> {
        let confirmed = self.hosts_of_confirmed_keys().await?;
        let names: Vec<String> = on_conn!(self, c, {
            let rows = sql::rows(c, "SELECT name FROM domains ORDER BY name", &[]).await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })?;
        let mut hosts: Vec<String> = names
            .iter()
            .filter_map(|n| crate::domain::normalize(n).ok())
            .map(|d| d.host().to_owned())
            .collect();
        hosts.sort();
        hosts.dedup();
        let mut queued = 0;
        for chunk in hosts.chunks(1000) {
            queued += in_tx!(self, w, {
                let mut inserted = 0;
                for host in chunk {
                    let record = BridgeRecord::queued(now, confirmed.contains(host));
                    inserted += usize::from(insert_bridge(w, host, &record).await?);
                }
                if inserted > 0 {
                    w.wake_bridge();
                }
                Ok(inserted)
            })?;
        }
        let (not_forwarded, awaiting) = (
            BridgePhase::NotForwarded.name(),
            BridgePhase::AwaitingConfirmation.name(),
        );
        queued += in_tx!(self, w, {
            let mut resting =
                lock_bridges_where(w, "phase = $1 OR phase = $2", &[&not_forwarded, &awaiting])
                    .await?;
            for (host, record) in &mut resting {
                record.phase = BridgePhase::Queued;
                record.next_attempt_at = Some(now);
                record.key_confirmed |= confirmed.contains(host.as_str());
            }
            write_bridges(w, &resting).await?;
            if !resting.is_empty() {
                w.wake_bridge();
            }
            Ok(resting.len())
        })?;
        Ok(queued)
    }
}
