//! The single-use confirm/revoke links of claim e-mails (`T`, by the SHA-256 of the token;
//! keys: [`super::keyspace`]): stored when the mail is prepared, used up when followed.

use super::keyspace::{api_key, link_token};
use super::{SledStore, WriteBatch, acme_state};
use crate::apikey::KeyHash;
use crate::store::records::{AuditKind, LinkAction, LinkToken, Record, UnixTime};
use crate::store::{LinkOutcome, StoreError};
use std::net::IpAddr;

impl SledStore {
    /// Stores link tokens under their hashes.
    pub async fn save_link_tokens(
        &self,
        tokens: &[([u8; 32], LinkToken)],
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (hash, token) in tokens {
            batch.insert(link_token::encode(hash), token.encode());
        }
        self.write(batch)
    }

    /// Follows a link: checks the token (known, meant for `action`, unused, not expired at
    /// `now`), uses it up, and confirms or revokes its key, all in one batch (one log record).
    ///
    /// Confirming also sets `key_confirmed` on the bridge records of every domain the key
    /// holds and sends the ones waiting in `awaiting_confirmation` back to `queued`, due now,
    /// so the worker forwards them. Commit before telling the user.
    pub async fn use_link(
        &self,
        token_hash: &[u8; 32],
        action: LinkAction,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<LinkOutcome, StoreError> {
        let _guard = self.lock();
        let Some(mut token) = self.get::<LinkToken>(&link_token::encode(token_hash))? else {
            return Ok(LinkOutcome::Unknown);
        };
        if token.action != action {
            return Ok(LinkOutcome::Unknown);
        }
        if token.used_at.is_some() {
            return Ok(LinkOutcome::AlreadyUsed);
        }
        if now >= token.expires_at {
            return Ok(LinkOutcome::Expired);
        }
        let hash = KeyHash(token.key_hash);
        let Some(mut key) = self.read_key(&hash)? else {
            return Ok(LinkOutcome::Unknown);
        };
        let mut batch = WriteBatch::default();
        token.used_at = Some(now);
        batch.insert(link_token::encode(token_hash), token.encode());
        let key_id = hash.id();
        let outcome = match action {
            LinkAction::Confirm => {
                if key.revoked_at.is_some() {
                    return Ok(LinkOutcome::KeyRevoked);
                }
                let requeued = self.confirm_into(&mut batch, &hash, key, ip, now)?;
                // A confirmed key's names may now go into its ACME account.
                acme_state::touch_key(self, &mut batch, &hash, now)?;
                LinkOutcome::Confirmed { key_id, requeued }
            }
            LinkAction::Revoke => {
                if key.revoked_at.is_none() {
                    key.revoked_at = Some(now);
                    batch.insert(api_key::encode(&hash), key.encode());
                    self.audit(&mut batch, now, ip, &hash, AuditKind::KeyRevoked)?;
                }
                // Its ACME account must go, so the host's EAB stops working.
                acme_state::touch_key(self, &mut batch, &hash, now)?;
                LinkOutcome::Revoked { key_id }
            }
        };
        self.write(batch)?;
        self.acme_wakeup.notify_one();
        if let LinkOutcome::Confirmed { requeued: 1.., .. } = outcome {
            self.bridge_wakeup.notify_one();
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{IP, open};
    use super::*;
    use crate::apikey::ApiKey;
    use crate::store::ClaimCaps;

    #[tokio::test]
    async fn links_work_once_and_not_after_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let ip: IpAddr = IP.parse().unwrap();
        let key = ApiKey::generate();
        let caps = ClaimCaps::default();
        store
            .create_key(&key.hash(), Some("a@x.org"), &caps, ip, 0)
            .await
            .unwrap();
        let token = |action, n: u8| {
            (
                [n; 32],
                LinkToken {
                    key_hash: key.hash().0,
                    action,
                    created_at: 0,
                    expires_at: 100,
                    used_at: None,
                },
            )
        };
        store
            .save_link_tokens(&[token(LinkAction::Confirm, 1), token(LinkAction::Revoke, 2)])
            .await
            .unwrap();
        assert_eq!(
            store
                .use_link(&[1; 32], LinkAction::Revoke, ip, 5)
                .await
                .unwrap(),
            LinkOutcome::Unknown,
            "a confirm token does not revoke"
        );
        assert_eq!(
            store
                .use_link(&[1; 32], LinkAction::Confirm, ip, 100)
                .await
                .unwrap(),
            LinkOutcome::Expired
        );
        assert!(matches!(
            store
                .use_link(&[1; 32], LinkAction::Confirm, ip, 99)
                .await
                .unwrap(),
            LinkOutcome::Confirmed { requeued: 0, .. }
        ));
        assert_eq!(
            store.key(&key.hash()).await.unwrap().unwrap().confirmed_at,
            Some(99)
        );
        assert_eq!(
            store
                .use_link(&[1; 32], LinkAction::Confirm, ip, 99)
                .await
                .unwrap(),
            LinkOutcome::AlreadyUsed
        );
        assert!(matches!(
            store
                .use_link(&[2; 32], LinkAction::Revoke, ip, 50)
                .await
                .unwrap(),
            LinkOutcome::Revoked { .. }
        ));
        assert_eq!(
            store.key(&key.hash()).await.unwrap().unwrap().revoked_at,
            Some(50)
        );
        assert_eq!(
            store
                .use_link(&[3; 32], LinkAction::Revoke, ip, 50)
                .await
                .unwrap(),
            LinkOutcome::Unknown
        );
    }

    #[tokio::test]
    async fn a_confirmation_is_not_undone_by_a_worker_saving_an_older_copy() {
        use crate::domain::normalize;
        use crate::store::BridgePhase;
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.enable_bridge();
        let ip: IpAddr = IP.parse().unwrap();
        let key = ApiKey::generate();
        let caps = ClaimCaps::default();
        store
            .create_key(&key.hash(), Some("a@x.org"), &caps, ip, 0)
            .await
            .unwrap();
        store
            .add_domain(&key.hash(), &normalize("www.x.org").unwrap(), ip, 0)
            .await
            .unwrap();
        // The worker read the record before the confirmation...
        let stale = store.bridge("www.x.org").await.unwrap().unwrap();
        assert!(!stale.key_confirmed);
        store
            .save_link_tokens(&[(
                [9; 32],
                LinkToken {
                    key_hash: key.hash().0,
                    action: LinkAction::Confirm,
                    created_at: 0,
                    expires_at: i64::MAX,
                    used_at: None,
                },
            )])
            .await
            .unwrap();
        assert!(matches!(
            store
                .use_link(&[9; 32], LinkAction::Confirm, ip, 5)
                .await
                .unwrap(),
            LinkOutcome::Confirmed { requeued: 0, .. }
        ));
        // ...and parks it awaiting confirmation after it.
        let mut parked = stale;
        parked.phase = BridgePhase::AwaitingConfirmation;
        parked.next_attempt_at = None;
        store.save_bridge("www.x.org", &parked).await.unwrap();
        let saved = store.bridge("www.x.org").await.unwrap().unwrap();
        assert!(saved.key_confirmed);
        assert_eq!(saved.phase, BridgePhase::Queued);
        let due = store.due_bridge_jobs(i64::MAX, 10).await.unwrap();
        assert_eq!(due.len(), 1, "requeued in the outbox");
    }
}
