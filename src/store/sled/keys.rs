//! API keys (`K`): minting one (optionally claimed at once), claiming, revoking.

use super::keyspace::api_key;
use super::{SledStore, WriteBatch, acme_state};
use crate::apikey::KeyHash;
use crate::store::records::{AuditKind, KeyRecord, Record, UnixTime};
use crate::store::{ClaimCaps, ClaimOutcome, StoreError};
use std::net::IpAddr;

impl SledStore {
    /// The record of a key, if the key is known.
    /// Its `domain_count` is the number of its domain entries ([`super::domain_counts`]).
    pub async fn key(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        let Some(mut record) = self.get::<KeyRecord>(&api_key::encode(hash))? else {
            return Ok(None);
        };
        record.domain_count = self.domain_count(hash)?;
        Ok(Some(record))
    }

    /// [`SledStore::key`], for code that holds the writers' lock.
    pub(super) fn read_key(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        let Some(mut record) = self.get::<KeyRecord>(&api_key::encode(hash))? else {
            return Ok(None);
        };
        record.domain_count = self.domain_count_locked(hash)?;
        Ok(Some(record))
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
    pub async fn claim_key(
        &self,
        hash: &KeyHash,
        may_create: bool,
        email: &str,
        caps: &ClaimCaps,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<ClaimOutcome, StoreError> {
        let _guard = self.lock();
        let existing = self.read_key(hash)?;
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
    pub async fn revoke_key(
        &self,
        hash: &KeyHash,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let _guard = self.lock();
        let Some(mut record) = self.read_key(hash)? else {
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
}
