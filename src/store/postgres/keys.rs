//! Keys, their domains, domains and the audit trail.

use super::key_queue::{KeyWrite, KeyWriteOutcome};
use super::rows::{KEY_COLUMNS, key_hash, key_record};
use super::{PgStore, Work, acme, bridge, claims, sql};
use crate::apikey::KeyHash;
use crate::domain::Domain;
use crate::store::{
    AddOutcome, AuditEvent, AuditKind, BridgeRecord, ClaimCaps, ClaimOutcome, DomainRecord,
    KeyDomain, KeyRecord, StoreError, UnixTime,
};
use std::net::IpAddr;
use tokio_postgres::types::Json;

/// A page size or offset as PostgreSQL takes it.
pub(super) fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Reads a key's row and locks it until the transaction ends.
pub(super) async fn lock_key(
    w: &Work<'_>,
    hash: &KeyHash,
) -> Result<Option<KeyRecord>, StoreError> {
    let row = sql::row(
        &w.tx,
        &format!("SELECT {KEY_COLUMNS} FROM keys WHERE hash = $1 FOR UPDATE"),
        &[&hash.0.as_slice()],
    )
    .await?;
    row.map(|r| key_record(&r, 0)).transpose()
}

impl PgStore {
    /// The record of a key, if the key is known.
    pub async fn key(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        on_conn!(self, c, {
            let row = sql::row(
                c,
                &format!("SELECT {KEY_COLUMNS} FROM keys WHERE hash = $1"),
                &[&hash.0.as_slice()],
            )
            .await?;
            row.map(|r| key_record(&r, 0)).transpose()
        })
    }

    /// Records a freshly minted key, optionally already claimed by `email` (subject to the
    /// claim `caps`; then nothing is written and the outcome says which cap refused it).
    /// As on sled, a record under the same hash is replaced (its domains and their count
    /// stay); hashes of minted keys do not collide.
    pub async fn create_key(
        &self,
        hash: &KeyHash,
        email: Option<&str>,
        caps: &ClaimCaps,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<ClaimOutcome, StoreError> {
        // Queue behind this key's other writes here, not holding a connection (key_queue.rs).
        let _turn = self.key_queue.turn(hash).await;
        in_tx!(self, w, {
            if let Some(email) = email
                && let Err(cap) = claims::claim_checks(w, email, caps, ip, now).await?
            {
                w.discard();
                return Ok(ClaimOutcome::Capped(cap));
            }
            let norm = email.map(str::to_ascii_lowercase);
            let claimed_at = email.map(|_| now);
            sql::execute(
                &w.tx,
                "INSERT INTO keys (hash, created_at, creator_ip, email, email_norm, claimed_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (hash) DO UPDATE SET created_at = EXCLUDED.created_at,
                     creator_ip = EXCLUDED.creator_ip, email = EXCLUDED.email,
                     email_norm = EXCLUDED.email_norm, claimed_at = EXCLUDED.claimed_at,
                     confirmed_at = NULL, revoked_at = NULL",
                &[&hash.0.as_slice(), &now, &ip, &email, &norm, &claimed_at],
            )
            .await?;
            w.audit(now, ip, hash.id(), AuditKind::KeyCreated).await?;
            if let Some(email) = email {
                let kind = AuditKind::KeyClaimed {
                    email: email.to_owned(),
                };
                w.audit(now, ip, hash.id(), kind).await?;
                self.queue_confirmation_mail(w, hash, email, ip, now)
                    .await?;
            }
            Ok(ClaimOutcome::Claimed)
        })
    }

    /// Binds a key to an e-mail address, creating the key (a client made it itself) when
    /// `may_create`. E-mail addresses are compared case-insensitively (ASCII). A new claim is
    /// subject to the claim `caps` ([`ClaimOutcome::Capped`]).
    pub async fn claim_key(
        &self,
        hash: &KeyHash,
        may_create: bool,
        email: &str,
        caps: &ClaimCaps,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<ClaimOutcome, StoreError> {
        // Queue behind this key's other writes here, not holding a connection (key_queue.rs).
        let _turn = self.key_queue.turn(hash).await;
        in_tx!(self, w, {
            let existing = lock_key(w, hash).await?;
            match &existing {
                Some(r) if r.revoked_at.is_some() => return Ok(ClaimOutcome::Revoked),
                Some(KeyRecord {
                    email: Some(owner), ..
                }) => {
                    return Ok(if owner.eq_ignore_ascii_case(email) {
                        ClaimOutcome::AlreadyClaimed
                    } else {
                        ClaimOutcome::ClaimedByOther
                    });
                }
                None if !may_create => return Ok(ClaimOutcome::Unknown),
                _ => {}
            }
            if let Err(cap) = claims::claim_checks(w, email, caps, ip, now).await? {
                w.discard();
                return Ok(ClaimOutcome::Capped(cap));
            }
            let norm = email.to_ascii_lowercase();
            if existing.is_some() {
                sql::execute(
                    &w.tx,
                    "UPDATE keys SET email = $2, email_norm = $3, claimed_at = $4 WHERE hash = $1",
                    &[&hash.0.as_slice(), &email, &norm, &now],
                )
                .await?;
            } else {
                // A concurrent claim creating the same key makes this a unique violation;
                // the transaction then runs again and finds the key.
                sql::execute(
                    &w.tx,
                    "INSERT INTO keys (hash, created_at, creator_ip, email, email_norm, claimed_at)
                     VALUES ($1, $2, $3, $4, $5, $2)",
                    &[&hash.0.as_slice(), &now, &ip, &email, &norm],
                )
                .await?;
                w.audit(now, ip, hash.id(), AuditKind::KeyCreated).await?;
            }
            let kind = AuditKind::KeyClaimed {
                email: email.to_owned(),
            };
            w.audit(now, ip, hash.id(), kind).await?;
            self.queue_confirmation_mail(w, hash, email, ip, now)
                .await?;
            Ok(ClaimOutcome::Claimed)
        })
    }

    /// Marks a key revoked: it can no longer add, list or claim. Idempotent. Returns whether
    /// the key exists. Every instance sees it from the commit on (no instance caches keys).
    pub async fn revoke_key(
        &self,
        hash: &KeyHash,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        // Queue behind this key's other writes here, not holding a connection (key_queue.rs).
        let _turn = self.key_queue.turn(hash).await;
        in_tx!(self, w, {
            let Some(record) = lock_key(w, hash).await? else {
                return Ok(false);
            };
            if record.revoked_at.is_none() {
                sql::execute(
                    &w.tx,
                    "UPDATE keys SET revoked_at = $2 WHERE hash = $1",
                    &[&hash.0.as_slice(), &now],
                )
                .await?;
                w.audit(now, ip, hash.id(), AuditKind::KeyRevoked).await?;
                acme::touch_key(self, w, hash, now).await?;
            }
            Ok(true)
        })
    }

    /// Registers `domain` under a key the caller has checked exists and is not revoked; with
    /// the bridge on, a new host is queued for it in the same transaction. Concurrent writes
    /// of one key commit together ([`super::key_queue`]).
    pub async fn add_domain(
        &self,
        hash: &KeyHash,
        domain: &Domain,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<AddOutcome, StoreError> {
        let write = KeyWrite::Add {
            domain: domain.clone(),
            ip,
            now,
        };
        match self.key_queue.write(self, hash, write).await? {
            KeyWriteOutcome::Added(outcome) => Ok(outcome),
            KeyWriteOutcome::Removed(_) => unreachable!("an add answered as a remove"),
        }
    }

    /// Unregisters `domain` from a key. Returns whether it was registered. The domain's own
    /// record (and its Sectigo state) stays: other keys may hold it.
    pub async fn remove_domain(
        &self,
        hash: &KeyHash,
        domain: &Domain,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let write = KeyWrite::Remove {
            domain: domain.clone(),
            ip,
            now,
        };
        match self.key_queue.write(self, hash, write).await? {
            KeyWriteOutcome::Removed(removed) => Ok(removed),
            KeyWriteOutcome::Added(_) => unreachable!("a remove answered as an add"),
        }
    }

    /// Runs a batch of adds and removes in one transaction, in order (see
    /// [`super::key_queue`]).
    pub(super) async fn run_key_writes(
        &self,
        writes: &[(KeyHash, KeyWrite)],
    ) -> Result<Vec<KeyWriteOutcome>, StoreError> {
        in_tx!(self, w, {
            let mut outcomes = Vec::with_capacity(writes.len());
            for (hash, write) in writes {
                outcomes.push(match write {
                    KeyWrite::Add { domain, ip, now } => {
                        KeyWriteOutcome::Added(self.add_in(w, hash, domain, *ip, *now).await?)
                    }
                    KeyWrite::Remove { domain, ip, now } => {
                        KeyWriteOutcome::Removed(self.remove_in(w, hash, domain, *ip, *now).await?)
                    }
                });
            }
            Ok(outcomes)
        })
    }

    /// One registration inside a batch's transaction.
    async fn add_in(
        &self,
        w: &mut Work<'_>,
        hash: &KeyHash,
        domain: &Domain,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<AddOutcome, StoreError> {
        let name = domain.to_string();
        let host = domain.host();
        // The key's lock serialises its adds and removes: the count stays exact.
        let Some(key) = lock_key(w, hash).await? else {
            return Ok(AddOutcome::UnknownKey);
        };
        let added = sql::execute(
            &w.tx,
            "INSERT INTO key_domains (key_hash, domain, added_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&hash.0.as_slice(), &name, &now],
        )
        .await?;
        if added == 0 {
            return Ok(AddOutcome::AlreadyRegistered);
        }
        sql::execute(
            &w.tx,
            "UPDATE keys SET domain_count = domain_count + 1 WHERE hash = $1",
            &[&hash.0.as_slice()],
        )
        .await?;
        sql::execute(
            &w.tx,
            "INSERT INTO domains (name, first_added_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&name, &now],
        )
        .await?;
        if self.bridge_enabled() {
            // Sectigo knows host names, not ports: `www.example.org:8443` is bridged as
            // `www.example.org`.
            let confirmed = key.confirmed_at.is_some();
            let fresh = BridgeRecord::queued(now, confirmed);
            if bridge::insert_bridge(w, host, &fresh).await? {
                w.wake_bridge();
            } else if confirmed
                && let Some(record) = bridge::lock_bridge(w, host).await?
                && let Some((record, released)) = bridge::mark_key_confirmed(record, now)
            {
                // A confirmed key adding a domain an unconfirmed key holds lifts the
                // wait for it.
                bridge::write_bridge(w, host, &record).await?;
                if released {
                    w.wake_bridge();
                }
            }
        }
        let kind = AuditKind::DomainAdded {
            domain: name.clone(),
        };
        w.audit(now, ip, hash.id(), kind).await?;
        acme::touch_key(self, w, hash, now).await?;
        Ok(AddOutcome::Added)
    }

    /// One removal inside a batch's transaction.
    async fn remove_in(
        &self,
        w: &mut Work<'_>,
        hash: &KeyHash,
        domain: &Domain,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let name = domain.to_string();
        if lock_key(w, hash).await?.is_none() {
            return Ok(false);
        }
        let removed = sql::execute(
            &w.tx,
            "DELETE FROM key_domains WHERE key_hash = $1 AND domain = $2",
            &[&hash.0.as_slice(), &name],
        )
        .await?;
        if removed == 0 {
            return Ok(false);
        }
        sql::execute(
            &w.tx,
            "UPDATE keys SET domain_count = greatest(domain_count - 1, 0) WHERE hash = $1",
            &[&hash.0.as_slice()],
        )
        .await?;
        let kind = AuditKind::DomainRemoved {
            domain: name.clone(),
        };
        w.audit(now, ip, hash.id(), kind).await?;
        acme::touch_key(self, w, hash, now).await?;
        Ok(true)
    }

    /// When `domain` was registered under the key, if it is.
    pub async fn key_domain(
        &self,
        hash: &KeyHash,
        domain: &Domain,
    ) -> Result<Option<KeyDomain>, StoreError> {
        let name = domain.to_string();
        on_conn!(self, c, {
            let row = sql::row(
                c,
                "SELECT added_at FROM key_domains WHERE key_hash = $1 AND domain = $2",
                &[&hash.0.as_slice(), &name],
            )
            .await?;
            Ok(row.map(|r| KeyDomain { added_at: r.get(0) }))
        })
    }

    /// Up to `limit` of the domains registered under a key, in lexicographic (byte) order,
    /// skipping `offset`.
    pub async fn key_domains(
        &self,
        hash: &KeyHash,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        on_conn!(self, c, {
            let rows = sql::rows(
                c,
                "SELECT domain FROM key_domains WHERE key_hash = $1
                 ORDER BY domain LIMIT $2 OFFSET $3",
                &[&hash.0.as_slice(), &count(limit), &count(offset)],
            )
            .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    /// The shared record of a domain, if any key registered it.
    pub async fn domain(&self, name: &str) -> Result<Option<DomainRecord>, StoreError> {
        on_conn!(self, c, {
            let row = sql::row(
                c,
                "SELECT first_added_at FROM domains WHERE name = $1",
                &[&name],
            )
            .await?;
            Ok(row.map(|r| DomainRecord {
                first_added_at: r.get(0),
            }))
        })
    }

    /// The keys that hold `domain` now, in the order of their hashes.
    pub async fn holders_of(&self, domain: &str) -> Result<Vec<KeyHash>, StoreError> {
        on_conn!(self, c, {
            let rows = sql::rows(
                c,
                "SELECT key_hash FROM key_domains WHERE domain = $1 ORDER BY key_hash",
                &[&domain],
            )
            .await?;
            rows.iter().map(|r| key_hash(r, 0)).collect()
        })
    }

    /// Appends an event that no client caused (the bridge's own actions) to the audit trail.
    /// The source address is unspecified and the key id is `-`.
    pub async fn record_event(&self, kind: AuditKind, now: UnixTime) -> Result<(), StoreError> {
        in_tx!(self, w, {
            let ip = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
            w.audit(now, ip, "-".to_owned(), kind.clone()).await
        })
    }

    /// Up to `limit` audit events after sequence number `after` (`None`: from the first),
    /// oldest first, with their sequence numbers.
    ///
    /// A sequence number is handed out when the event is written, and the event is visible
    /// once its transaction commits; two transactions may commit in the other order than
    /// their numbers. A reader paging with `after` may therefore miss an event that committed
    /// just after it read a later-numbered one.
    pub async fn audit_events(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, AuditEvent)>, StoreError> {
        let after = after.map_or(0, |a| i64::try_from(a).unwrap_or(i64::MAX));
        on_conn!(self, c, {
            let rows = sql::rows(
                c,
                "SELECT seq, at, ip, key_id, kind FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &count(limit)],
            )
            .await?;
            rows.iter()
                .map(|r| {
                    let seq: i64 = r.try_get(0)?;
                    let Json(kind) = r.try_get::<_, Json<AuditKind>>(4)?;
                    Ok((
                        seq as u64,
                        AuditEvent {
                            at: r.try_get(1)?,
                            ip: r.try_get(2)?,
                            key_id: r.try_get(3)?,
                            kind,
                        },
                    ))
                })
                .collect()
        })
    }
}
