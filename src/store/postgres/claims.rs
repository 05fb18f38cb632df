//! Claim caps, confirm/revoke links and operator confirmation (the sled store's
//! `claims.rs`, with row locks where sled holds its writers' lock).
//!
//! The caps must hold across concurrent claims on several instances. A claim locks its
//! address's `claim_emails` row (inserting it for an address never seen: a concurrent claim of
//! the same address waits for the insert to commit or roll back) and counts the address's
//! unconfirmed keys only then, so two claims of one address are counted one after the other.
//! The per-day count of new addresses per source address is a single conditional upsert,
//! which PostgreSQL applies one transaction at a time per row.

use super::keys::lock_key;
use super::{PgStore, Work, acme, bridge, sql};
use crate::apikey::KeyHash;
use crate::store::{
    AuditKind, CapExceeded, ClaimCaps, KeyRecord, LinkAction, LinkOutcome, LinkToken,
    OperatorConfirmOutcome, StoreError, UnixTime,
};
use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

const SECONDS_PER_DAY: i64 = 86_400;

pub(super) fn action_name(action: LinkAction) -> &'static str {
    match action {
        LinkAction::Confirm => "confirm",
        LinkAction::Revoke => "revoke",
    }
}

/// Runs a new claim's cap checks in `w` and, when they pass, records the address and counts
/// it against the source address's day. On a refusal the caller discards the transaction.
pub(super) async fn claim_checks(
    w: &mut Work<'_>,
    email: &str,
    caps: &ClaimCaps,
    ip: IpAddr,
    now: UnixTime,
) -> Result<Result<(), CapExceeded>, StoreError> {
    let norm = email.to_ascii_lowercase();
    let new_address = sql::execute(
        &w.tx,
        "INSERT INTO claim_emails (email_norm, first_claimed_at) VALUES ($1, $2)
         ON CONFLICT DO NOTHING",
        &[&norm, &now],
    )
    .await?
        == 1;
    if !new_address {
        sql::execute(
            &w.tx,
            "SELECT 1 FROM claim_emails WHERE email_norm = $1 FOR UPDATE",
            &[&norm],
        )
        .await?;
    }
    // With the address locked, every other claim of it has committed or waits.
    let unconfirmed: i64 = sql::row(
        &w.tx,
        "SELECT count(*) FROM keys
         WHERE email_norm = $1 AND confirmed_at IS NULL AND revoked_at IS NULL",
        &[&norm],
    )
    .await?
    .map_or(0, |r| r.get(0));
    if unconfirmed >= i64::from(caps.max_unconfirmed_keys_per_email) {
        return Ok(Err(CapExceeded::UnconfirmedKeys));
    }
    if new_address {
        let day = now.div_euclid(SECONDS_PER_DAY).max(0);
        if caps.max_new_emails_per_address_per_day == 0 {
            return Ok(Err(CapExceeded::NewEmails));
        }
        let cap = i32::try_from(caps.max_new_emails_per_address_per_day).unwrap_or(i32::MAX);
        let counted = sql::row(
            &w.tx,
            "INSERT INTO claim_new_emails (day, ip, count) VALUES ($1, $2, 1)
             ON CONFLICT (day, ip) DO UPDATE SET count = claim_new_emails.count + 1
             WHERE claim_new_emails.count < $3
             RETURNING count",
            &[&day, &ip, &cap],
        )
        .await?;
        if counted.is_none() {
            return Ok(Err(CapExceeded::NewEmails));
        }
        // Earlier days' counters are no longer needed. SKIP LOCKED: a counter another
        // cleaner holds is left to it, and no claim ever waits for this.
        sql::execute(
            &w.tx,
            "DELETE FROM claim_new_emails WHERE (day, ip) IN (
                 SELECT day, ip FROM claim_new_emails WHERE day < $1 FOR UPDATE SKIP LOCKED)",
            &[&day],
        )
        .await?;
    }
    Ok(Ok(()))
}

impl PgStore {
    /// Stores link tokens under their hashes (replacing a token of the same hash).
    pub async fn save_link_tokens(
        &self,
        tokens: &[([u8; 32], LinkToken)],
    ) -> Result<(), StoreError> {
        in_tx!(self, w, {
            for (hash, token) in tokens {
                sql::execute(
                    &w.tx,
                    "INSERT INTO link_tokens (token_hash, key_hash, action, created_at, expires_at, used_at)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (token_hash) DO UPDATE SET key_hash = EXCLUDED.key_hash,
                         action = EXCLUDED.action, created_at = EXCLUDED.created_at,
                         expires_at = EXCLUDED.expires_at, used_at = EXCLUDED.used_at",
                    &[
                        &hash.as_slice(),
                        &token.key_hash.as_slice(),
                        &action_name(token.action),
                        &token.created_at,
                        &token.expires_at,
                        &token.used_at,
                    ],
                )
                .await?;
            }
            Ok(())
        })
    }

    /// Follows a link: checks the token (known, meant for `action`, unused, not expired at
    /// `now`), uses it up, and confirms or revokes its key, in one transaction (the token's
    /// row lock makes a second use of it wait and then find it used).
    pub async fn use_link(
        &self,
        token_hash: &[u8; 32],
        action: LinkAction,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<LinkOutcome, StoreError> {
        in_tx!(self, w, {
            let Some(token) = sql::row(
                &w.tx,
                "SELECT key_hash, action, expires_at, used_at FROM link_tokens
                 WHERE token_hash = $1 FOR UPDATE",
                &[&token_hash.as_slice()],
            )
            .await?
            else {
                return Ok(LinkOutcome::Unknown);
            };
            if token.get::<_, &str>(1) != action_name(action) {
                return Ok(LinkOutcome::Unknown);
            }
            if token.get::<_, Option<i64>>(3).is_some() {
                return Ok(LinkOutcome::AlreadyUsed);
            }
            if now >= token.get::<_, i64>(2) {
                return Ok(LinkOutcome::Expired);
            }
            let hash = super::rows::key_hash(&token, 0)?;
            let Some(key) = lock_key(w, &hash).await? else {
                return Ok(LinkOutcome::Unknown);
            };
            let key_id = hash.id();
            if action == LinkAction::Confirm && key.revoked_at.is_some() {
                return Ok(LinkOutcome::KeyRevoked);
            }
            sql::execute(
                &w.tx,
                "UPDATE link_tokens SET used_at = $2 WHERE token_hash = $1",
                &[&token_hash.as_slice(), &now],
            )
            .await?;
            let outcome = match action {
                LinkAction::Confirm => {
                    let requeued = confirm_into(w, &hash, &key, ip, now).await?;
                    // A confirmed key's names may now go into its ACME account.
                    acme::touch_key(self, w, &hash, now).await?;
                    LinkOutcome::Confirmed { key_id, requeued }
                }
                LinkAction::Revoke => {
                    if key.revoked_at.is_none() {
                        sql::execute(
                            &w.tx,
                            "UPDATE keys SET revoked_at = $2 WHERE hash = $1",
                            &[&hash.0.as_slice(), &now],
                        )
                        .await?;
                        w.audit(now, ip, hash.id(), AuditKind::KeyRevoked).await?;
                    }
                    // Its ACME account must go, so the host's EAB stops working.
                    acme::touch_key(self, w, &hash, now).await?;
                    LinkOutcome::Revoked { key_id }
                }
            };
            Ok(outcome)
        })
    }

    /// An operator confirms a key by hand (`certline confirm`): what the confirm link does,
    /// audited the same way. A revoked key stays revoked.
    pub async fn confirm_key(
        &self,
        hash: &KeyHash,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<OperatorConfirmOutcome, StoreError> {
        // Queue behind this key's other writes here, not holding a connection (key_queue.rs).
        let _turn = self.key_queue.turn(hash).await;
        in_tx!(self, w, {
            let Some(key) = lock_key(w, hash).await? else {
                return Ok(OperatorConfirmOutcome::Unknown);
            };
            if key.revoked_at.is_some() {
                return Ok(OperatorConfirmOutcome::KeyRevoked);
            }
            let already = key.confirmed_at;
            let requeued = confirm_into(w, hash, &key, ip, now).await?;
            Ok(OperatorConfirmOutcome::Confirmed {
                confirmed_at: already.unwrap_or(now),
                already: already.is_some(),
                requeued,
            })
        })
    }

    /// The host names (no port) registered under at least one confirmed, unrevoked key: what
    /// `key_confirmed` should say for each domain (the bridge's backfill).
    pub(super) async fn hosts_of_confirmed_keys(&self) -> Result<HashSet<String>, StoreError> {
        on_conn!(self, c, {
            let rows = sql::rows(
                c,
                "SELECT kd.domain FROM key_domains kd JOIN keys k ON k.hash = kd.key_hash
                 WHERE k.confirmed_at IS NOT NULL AND k.revoked_at IS NULL",
                &[],
            )
            .await?;
            Ok(rows
                .iter()
                .filter_map(|r| crate::domain::normalize(r.get(0)).ok())
                .map(|d| d.host().to_owned())
                .collect())
        })
    }
}

/// Confirms an unrevoked key in `w` (unless it is confirmed already) with its audit event,
/// and releases its waiting domains. Returns how many domains were requeued.
async fn confirm_into(
    w: &mut Work<'_>,
    hash: &KeyHash,
    key: &KeyRecord,
    ip: IpAddr,
    now: UnixTime,
) -> Result<usize, StoreError> {
    if key.confirmed_at.is_none() {
        sql::execute(
            &w.tx,
            "UPDATE keys SET confirmed_at = $2 WHERE hash = $1",
            &[&hash.0.as_slice(), &now],
        )
        .await?;
        w.audit(now, ip, hash.id(), AuditKind::KeyConfirmed).await?;
    }
    let names = sql::rows(
        &w.tx,
        "SELECT domain FROM key_domains WHERE key_hash = $1",
        &[&hash.0.as_slice()],
    )
    .await?;
    let hosts: BTreeSet<String> = names
        .iter()
        .filter_map(|r| crate::domain::normalize(r.get(0)).ok())
        .map(|d| d.host().to_owned())
        .collect();
    let hosts: Vec<String> = hosts.into_iter().collect();
    let mut changed = Vec::new();
    let mut requeued = 0;
    for (host, record) in bridge::lock_bridges(w, &hosts).await? {
        if let Some((record, released)) = bridge::mark_key_confirmed(record, now) {
            requeued += usize::from(released);
            changed.push((host, record));
        }
    }
    bridge::write_bridges(w, &changed).await?;
    if requeued > 0 {
        w.wake_bridge();
    }
    Ok(requeued)
}
