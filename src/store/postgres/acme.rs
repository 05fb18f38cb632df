//! The ACME worker's state: one row per key in `acme_keys`, whose `due` column is the
//! outbox, leased to one instance at a time exactly like the bridge's (see [`super::bridge`]).

use super::bridge::taken_over;
use super::keys::count;
use super::rows::{acme_json, acme_record, key_hash};
use super::{PgStore, Work, sql};
use crate::apikey::KeyHash;
use crate::store::{AcmeKeyRecord, StoreError, UnixTime};
use std::sync::atomic::Ordering;

/// Records in `w` that `hash` needs the ACME worker now: its touch count goes up and it is
/// due at `now`. Does nothing while ACME is off. The lease is left alone: the holder's save
/// sees the newer touch count and keeps the key due.
pub(super) async fn touch_key(
    store: &PgStore,
    w: &mut Work<'_>,
    hash: &KeyHash,
    now: UnixTime,
) -> Result<(), StoreError> {
    if !store.acme_enabled() {
        return Ok(());
    }
    // A row to lock even for a key never touched, so two touches count twice.
    let blank = acme_json(&AcmeKeyRecord::default());
    sql::execute(
        &w.tx,
        "INSERT INTO acme_keys (key_hash, due, record) VALUES ($1, NULL, $2)
         ON CONFLICT DO NOTHING",
        &[&hash.0.as_slice(), &blank],
    )
    .await?;
    let row = sql::row(
        &w.tx,
        "SELECT record FROM acme_keys WHERE key_hash = $1 FOR UPDATE",
        &[&hash.0.as_slice()],
    )
    .await?;
    let mut record = match row {
        Some(row) => acme_record(&row, 0)?,
        None => AcmeKeyRecord::default(),
    };
    record.touches += 1;
    record.attempts = 0;
    record.next_attempt_at = Some(now);
    sql::execute(
        &w.tx,
        "UPDATE acme_keys SET due = $2, record = $3 WHERE key_hash = $1",
        &[&hash.0.as_slice(), &now, &acme_json(&record)],
    )
    .await?;
    w.wake_acme();
    Ok(())
}

impl PgStore {
    /// Turns ACME bookkeeping on (at start-up, when `[sectigo.acme]` is configured).
    pub fn enable_acme(&self) {
        self.acme_enabled.store(true, Ordering::SeqCst);
    }

    /// Is ACME bookkeeping on?
    pub fn acme_enabled(&self) -> bool {
        self.acme_enabled.load(Ordering::SeqCst)
    }

    /// A key's ACME record.
    pub async fn acme_key(&self, hash: &KeyHash) -> Result<Option<AcmeKeyRecord>, StoreError> {
        on_conn!(self, c, {
            let row = sql::row(
                c,
                "SELECT record FROM acme_keys WHERE key_hash = $1",
                &[&hash.0.as_slice()],
            )
            .await?;
            row.map(|r| acme_record(&r, 0)).transpose()
        })
    }

    /// Up to `limit` keys due at or before `now`, earliest first, each now leased to this
    /// instance; keys another instance holds are skipped.
    pub async fn due_acme_keys(
        &self,
        now: UnixTime,
        limit: usize,
    ) -> Result<Vec<KeyHash>, StoreError> {
        let lease = self.lease_secs();
        let mut keys = in_tx!(self, w, {
            let rows = sql::rows(
                &w.tx,
                "WITH picked AS (
                         SELECT key_hash FROM acme_keys
                         WHERE due IS NOT NULL AND due <= $1
                           AND (lease_until IS NULL OR lease_until <= clock_timestamp()
                                OR lease_owner = $3)
                         ORDER BY due, key_hash
                         LIMIT $2
                         FOR UPDATE SKIP LOCKED)
                     UPDATE acme_keys AS a
                     SET lease_owner = $3,
                         lease_until = clock_timestamp() + make_interval(secs => $4)
                     FROM picked WHERE a.key_hash = picked.key_hash
                     RETURNING a.due, a.key_hash",
                &[&now, &count(limit), &self.instance, &lease],
            )
            .await?;
            rows.iter()
                .map(|r| Ok((r.try_get::<_, i64>(0)?, key_hash(r, 1)?)))
                .collect::<Result<Vec<_>, StoreError>>()
        })?;
        keys.sort_by_key(|a| (a.0, a.1.0));
        Ok(keys.into_iter().map(|(_, k)| k).collect())
    }

    /// The earliest time a key in the ACME outbox may be taken by this instance.
    pub async fn next_acme_due(&self) -> Result<Option<UnixTime>, StoreError> {
        on_conn!(self, c, {
            let rows = sql::rows(
                c,
                "SELECT CASE WHEN lease_owner IS NOT NULL AND lease_owner <> $1
                                  AND lease_until > clock_timestamp()
                             THEN greatest(due, ceil(extract(epoch FROM lease_until))::bigint)
                             ELSE due END
                 FROM acme_keys WHERE due IS NOT NULL ORDER BY due, key_hash LIMIT $2",
                &[&self.instance, &super::bridge::NEXT_DUE_WINDOW],
            )
            .await?;
            Ok(rows.iter().map(|r| r.get::<_, i64>(0)).min())
        })
    }

    /// Saves the worker's view of a key. If the key was touched since the worker read it
    /// (`record.touches` is behind), the key stays due now and the newer count is kept.
    /// Refused while another instance holds the key's lease; releases this instance's lease
    /// unless the key is still due at `now`.
    pub async fn save_acme_key(
        &self,
        hash: &KeyHash,
        record: &AcmeKeyRecord,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let lease = self.lease_secs();
        in_tx!(self, w, {
            let mut record = record.clone();
            let old = sql::row(
                &w.tx,
                "SELECT record, lease_owner, lease_until > clock_timestamp() FROM acme_keys
                 WHERE key_hash = $1 FOR UPDATE",
                &[&hash.0.as_slice()],
            )
            .await?;
            if let Some(row) = &old {
                let owner: Option<String> = row.try_get(1)?;
                let held: Option<bool> = row.try_get(2)?;
                if let Some(owner) = owner
                    && held == Some(true)
                    && owner != self.instance
                {
                    return Err(taken_over(&format!("key {}", hash.id()), &owner));
                }
                let old = acme_record(row, 0)?;
                if old.touches > record.touches {
                    record.touches = old.touches;
                    record.next_attempt_at = Some(now);
                    w.wake_acme();
                }
            }
            let keep_lease = record.next_attempt_at.is_some_and(|due| due <= now);
            let owner = keep_lease.then_some(self.instance.as_str());
            sql::execute(
                &w.tx,
                "INSERT INTO acme_keys (key_hash, due, record, lease_owner, lease_until)
                 VALUES ($1, $2, $3, $4,
                         CASE WHEN $4::text IS NULL THEN NULL
                              ELSE clock_timestamp() + make_interval(secs => $5) END)
                 ON CONFLICT (key_hash) DO UPDATE SET due = EXCLUDED.due,
                     record = EXCLUDED.record, lease_owner = EXCLUDED.lease_owner,
                     lease_until = EXCLUDED.lease_until",
                &[
                    &hash.0.as_slice(),
                    &record.next_attempt_at,
                    &acme_json(&record),
                    &owner,
                    &lease,
                ],
            )
            .await?;
            Ok(())
        })
    }

    /// Queues `hash` for the ACME worker now (a transaction of its own; for the admin API and
    /// tests). Nothing happens while ACME is off.
    pub async fn touch_acme_key(&self, hash: &KeyHash, now: UnixTime) -> Result<(), StoreError> {
        in_tx!(self, w, { touch_key(self, w, hash, now).await })
    }

    /// Run when the ACME worker starts: queues every key that holds domains or has an ACME
    /// record (unless its account was retired). Returns how many keys were queued.
    pub async fn backfill_acme(&self, now: UnixTime) -> Result<usize, StoreError> {
        let candidates: Vec<KeyHash> = on_conn!(self, c, {
            let rows = sql::rows(
                c,
                "SELECT k.hash, k.domain_count, k.revoked_at IS NOT NULL, a.record
                     FROM keys k LEFT JOIN acme_keys a ON a.key_hash = k.hash
                     ORDER BY k.hash",
                &[],
            )
            .await?;
            let mut out = Vec::new();
            for r in &rows {
                let acme = match r.try_get::<_, Option<serde_json::Value>>(3)? {
                    Some(_) => Some(acme_record(r, 3)?),
                    None => None,
                };
                let done = acme.as_ref().is_some_and(|a| a.account_deleted);
                let idle = r.get::<_, i64>(1) == 0 || r.get::<_, bool>(2);
                if done || (idle && acme.is_none()) {
                    continue;
                }
                out.push(key_hash(r, 0)?);
            }
            Ok(out)
        })?;
        for hash in &candidates {
            self.touch_acme_key(hash, now).await?;
        }
        Ok(candidates.len())
    }
}
