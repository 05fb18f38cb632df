//! The mail outbox (`Q`, in due order; keys: [`super::keyspace`]): claim confirmation
//! e-mails still to be sent. A claim writes its job in the same batch as the
//! claim itself (ARCHITECTURE.md §4), so once a claim is acknowledged its mail survives a
//! crash; the sender (`confirm::Confirmations::run`) takes due jobs in time order, and either
//! deletes a job once its mail is out or moves it to a later due time.

use super::keyspace::mail_outbox;
use super::{SledStore, WriteBatch, count_prefix};
use crate::apikey::KeyHash;
use crate::store::records::{MailJob, Record, UnixTime};
use crate::store::{DueMail, StoreError};
use std::net::IpAddr;
use std::sync::atomic::Ordering;

impl SledStore {
    /// From now on, claims queue a confirmation e-mail. Called once at start-up when the
    /// admin listener (which serves the links) is configured.
    pub fn enable_confirmation_mail(&self) {
        self.mail_enabled.store(true, Ordering::SeqCst);
    }

    /// Adds a claim's mail job to the claim's own batch, when mail is on.
    pub(super) fn queue_confirmation_mail(
        &self,
        batch: &mut WriteBatch,
        key: &KeyHash,
        email: &str,
        ip: IpAddr,
        now: UnixTime,
    ) {
        if !self.mail_enabled.load(Ordering::SeqCst) {
            return;
        }
        let job = MailJob {
            email: email.to_owned(),
            ip,
            claimed_at: now,
            attempts: 0,
        };
        batch.insert(mail_outbox::encode(now, key), job.encode());
    }

    /// Up to `limit` jobs due at or before `now`, earliest first.
    pub async fn due_mail(&self, now: UnixTime, limit: usize) -> Result<Vec<DueMail>, StoreError> {
        let mut out = Vec::new();
        for entry in self.db.scan_prefix([mail_outbox::PREFIX]) {
            let (k, v) = entry?;
            let (due, key) = mail_outbox::decode(&k);
            if due > now || out.len() >= limit {
                break;
            }
            out.push(DueMail {
                outbox_key: k.to_vec(),
                key,
                job: MailJob::decode(&v)?,
            });
        }
        Ok(out)
    }

    /// The mail is out (or given up on): the job leaves the outbox. Commit afterwards.
    pub async fn finish_mail(&self, mail: &DueMail) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.remove(mail.outbox_key.clone());
        self.write(batch)
    }

    /// The send failed: the job, with its attempt counted, moves to `due`. Commit afterwards.
    pub async fn retry_mail(&self, mail: &DueMail, due: UnixTime) -> Result<(), StoreError> {
        let mut job = mail.job.clone();
        job.attempts += 1;
        let mut batch = WriteBatch::default();
        batch.remove(mail.outbox_key.clone());
        batch.insert(mail_outbox::encode(due, &mail.key), job.encode());
        self.write(batch)
    }

    /// How many mails are waiting (for metrics). A scan, off the runtime: call rarely.
    pub async fn mail_outbox_len(&self) -> Result<usize, StoreError> {
        self.off_runtime(|db| count_prefix(db, mail_outbox::PREFIX))
            .await
    }
}
