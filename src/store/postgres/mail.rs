//! The mail outbox: claim confirmation e-mails still to be sent, written in the claim's own
//! transaction. Several instances' senders share it: [`PgStore::due_mail`] leases the jobs it
//! returns like the bridge's outbox, so one mail is not sent by two instances at once.

use super::bridge::taken_over;
use super::keys::count;
use super::rows::key_hash;
use super::{PgStore, Work, sql};
use crate::apikey::KeyHash;
use crate::store::{DueMail, MailJob, StoreError, UnixTime};
use std::net::IpAddr;
use std::sync::atomic::Ordering;

/// The job's row id, as [`DueMail::outbox_key`] carries it (8 bytes, big-endian).
fn id_of(mail: &DueMail) -> Result<i64, StoreError> {
    <[u8; 8]>::try_from(mail.outbox_key.as_slice())
        .map(i64::from_be_bytes)
        .map_err(|_| StoreError::Pool("a mail job's outbox key is not a PostgreSQL row id".into()))
}

impl PgStore {
    /// From now on, claims queue a confirmation e-mail.
    pub fn enable_confirmation_mail(&self) {
        self.mail_enabled.store(true, Ordering::SeqCst);
    }

    /// Adds a claim's mail job to the claim's own transaction, when mail is on.
    pub(super) async fn queue_confirmation_mail(
        &self,
        w: &Work<'_>,
        key: &KeyHash,
        email: &str,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        if !self.mail_enabled.load(Ordering::SeqCst) {
            return Ok(());
        }
        sql::execute(
            &w.tx,
            "INSERT INTO mail_outbox (due, key_hash, email, ip, claimed_at, attempts)
             VALUES ($1, $2, $3, $4, $1, 0)",
            &[&now, &key.0.as_slice(), &email, &ip],
        )
        .await?;
        Ok(())
    }

    /// Up to `limit` jobs due at or before `now`, earliest first, each leased to this
    /// instance until it finishes or retries it (or the lease ends).
    pub async fn due_mail(&self, now: UnixTime, limit: usize) -> Result<Vec<DueMail>, StoreError> {
        let lease = self.lease_secs();
        let mut jobs = in_tx!(self, w, {
            let rows = sql::rows(
                &w.tx,
                "WITH picked AS (
                         SELECT id FROM mail_outbox
                         WHERE due <= $1
                           AND (lease_until IS NULL OR lease_until <= clock_timestamp()
                                OR lease_owner = $3)
                         ORDER BY due, key_hash, id
                         LIMIT $2
                         FOR UPDATE SKIP LOCKED)
                     UPDATE mail_outbox AS m
                     SET lease_owner = $3,
                         lease_until = clock_timestamp() + make_interval(secs => $4)
                     FROM picked WHERE m.id = picked.id
                     RETURNING m.due, m.key_hash, m.id, m.email, m.ip, m.claimed_at, m.attempts",
                &[&now, &count(limit), &self.instance, &lease],
            )
            .await?;
            rows.iter()
                .map(|r| {
                    let due: i64 = r.try_get(0)?;
                    let id: i64 = r.try_get(2)?;
                    let attempts: i32 = r.try_get(6)?;
                    let mail = DueMail {
                        outbox_key: id.to_be_bytes().to_vec(),
                        key: key_hash(r, 1)?,
                        job: MailJob {
                            email: r.try_get(3)?,
                            ip: r.try_get(4)?,
                            claimed_at: r.try_get(5)?,
                            attempts: attempts.max(0) as u32,
                        },
                    };
                    Ok((due, id, mail))
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })?;
        jobs.sort_by_key(|a| (a.0, a.2.key.0, a.1));
        Ok(jobs.into_iter().map(|(_, _, m)| m).collect())
    }

    /// The mail is out (or given up on): the job leaves the outbox. Refused when another
    /// instance took the job over.
    pub async fn finish_mail(&self, mail: &DueMail) -> Result<(), StoreError> {
        let id = id_of(mail)?;
        in_tx!(self, w, {
            self.check_mail_lease(w, id, mail).await?;
            sql::execute(&w.tx, "DELETE FROM mail_outbox WHERE id = $1", &[&id]).await?;
            Ok(())
        })
    }

    /// The send failed: the job, with its attempt counted, moves to `due` (and its lease is
    /// released). Refused when another instance took the job over.
    pub async fn retry_mail(&self, mail: &DueMail, due: UnixTime) -> Result<(), StoreError> {
        let id = id_of(mail)?;
        let attempts = i32::try_from(mail.job.attempts.saturating_add(1)).unwrap_or(i32::MAX);
        in_tx!(self, w, {
            self.check_mail_lease(w, id, mail).await?;
            sql::execute(
                &w.tx,
                "UPDATE mail_outbox SET due = $2, attempts = $3, lease_owner = NULL,
                     lease_until = NULL
                 WHERE id = $1",
                &[&id, &due, &attempts],
            )
            .await?;
            Ok(())
        })
    }

    /// Locks the job's row; an error if another instance holds its lease now.
    async fn check_mail_lease(
        &self,
        w: &Work<'_>,
        id: i64,
        mail: &DueMail,
    ) -> Result<(), StoreError> {
        let row = sql::row(
            &w.tx,
            "SELECT lease_owner, lease_until > clock_timestamp() FROM mail_outbox
             WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?;
        if let Some(row) = row {
            let owner: Option<String> = row.try_get(0)?;
            let held: Option<bool> = row.try_get(1)?;
            if let Some(owner) = owner
                && held == Some(true)
                && owner != self.instance
            {
                return Err(taken_over(
                    &format!("the claim mail of key {}", mail.key.id()),
                    &owner,
                ));
            }
        }
        Ok(())
    }

    /// How many mails are waiting (for metrics).
    pub async fn mail_outbox_len(&self) -> Result<usize, StoreError> {
        on_conn!(self, c, {
            let row = sql::row(c, "SELECT count(*) FROM mail_outbox", &[]).await?;
            Ok(row.map_or(0, |r| r.get::<_, i64>(0)) as usize)
        })
    }
}
