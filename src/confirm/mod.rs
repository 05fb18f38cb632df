//! Claim confirmation, the KeyChest way (reference/keychest.md §2): when an e-mail address
//! claims a key, certline mails that address two single-use links, one to confirm the key
//! and one to revoke it, valid for `claims.link_validity_secs` (7 days by default).
//!
//! * The mail goes through a durable outbox ([`crate::store::DueMail`]): the claim writes the
//!   job in its own batch, so an acknowledged claim gets its mail even after a `kill -9`.
//!   [`Confirmations::run`] sends due jobs in the background, so the claim's reply never waits
//!   for SMTP, and retries a relay that is down with exponential backoff (counted in
//!   `certline_confirmation_mails_total{result="failed"}`, pending in
//!   `certline_confirmation_mail_outbox`).
//! * A link's token is 128 random bits; only its SHA-256 is stored (`Store::use_link`), so
//!   the database alone cannot confirm or revoke anything.
//! * Without `[smtp]`, the links are logged at `info` for the operator to pass on: that log
//!   line then carries a credential for one key, which is the point of it.
//! * The links are served by the admin listener (`admin::confirm`) under `admin.public_url`.
//!
//! Confirming matters for `require_confirmed_key`: the key's domains wait in
//! `awaiting_confirmation` until then.

pub mod config;
pub mod mailer;

pub use config::{SmtpConfig, SmtpTls};
pub use mailer::{MailError, Mailer};

use crate::apikey::KeyHash;
use crate::store::{DueMail, LinkAction, LinkToken, Store, StoreError, UnixTime};
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use url::Url;

/// The first retry of a failed send comes after this; each further one waits twice as long.
const FIRST_RETRY_SECS: i64 = 1;
/// The longest wait between two attempts.
const MAX_RETRY_SECS: i64 = 3600;
/// After this many failed sends (about a day at the longest wait) the job is dropped and the
/// operator told: the key still works unconfirmed, and `certline keys` shows it.
const MAX_ATTEMPTS: u32 = 36;
/// With nothing due, look at the outbox at least this often (a retry's due time passing).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Mints links and sends them. Shared by the service (claims) and nothing else.
pub struct Confirmations {
    store: Arc<Store>,
    base: Url,
    validity_secs: i64,
    mailer: Option<Mailer>,
    /// Woken by a new claim, so its mail goes out at once.
    wakeup: Notify,
}

impl Confirmations {
    /// Links under `base` (the admin listener's public URL, ending in `/`), valid
    /// `validity_secs`, mailed through `mailer` or, without one, logged.
    pub fn new(store: Arc<Store>, base: Url, validity_secs: u64, mailer: Option<Mailer>) -> Self {
        Self {
            store,
            base,
            validity_secs: i64::try_from(validity_secs).unwrap_or(i64::MAX / 2),
            mailer,
            wakeup: Notify::new(),
        }
    }

    /// A new claim was acknowledged: its mail job is in the outbox; send it now.
    pub fn key_claimed(&self) {
        self.wakeup.notify_one();
    }

    /// Sends the outbox's due mails until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.send_due().await {
                tracing::error!(error = %e, "mail outbox: storage failure; retrying");
            }
            match self.store.mail_outbox_len().await {
                Ok(waiting) => {
                    metrics::gauge!("certline_confirmation_mail_outbox").set(waiting as f64)
                }
                Err(e) => {
                    tracing::error!(error = %e, "mail outbox: counting the waiting mails failed")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wakeup.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
    }

    /// Sends every due mail once; a failure moves its job to a later time.
    async fn send_due(&self) -> Result<(), StoreError> {
        let now = chrono::Utc::now().timestamp();
        for mail in self.store.due_mail(now, 64).await? {
            let key_id = mail.key.id();
            match self
                .notify(mail.key, &mail.job.email, mail.job.ip, now)
                .await
            {
                Ok(how) => {
                    metrics::counter!("certline_confirmation_mails_total", "result" => how)
                        .increment(1);
                    self.store.finish_mail(&mail).await?;
                }
                Err(e) => {
                    metrics::counter!("certline_confirmation_mails_total", "result" => "failed")
                        .increment(1);
                    self.failed(&mail, now, &key_id, &e).await?;
                }
            }
            self.store.commit().await?;
        }
        Ok(())
    }

    async fn failed(
        &self,
        mail: &DueMail,
        now: UnixTime,
        key_id: &str,
        e: &NotifyError,
    ) -> Result<(), StoreError> {
        let attempts = mail.job.attempts + 1;
        if attempts >= MAX_ATTEMPTS {
            tracing::error!(key = %key_id, attempts, error = %e,
                "giving up on the claim confirmation e-mail; the key works unconfirmed (check [smtp])");
            metrics::counter!("certline_confirmation_mails_total", "result" => "abandoned")
                .increment(1);
            return self.store.finish_mail(mail).await;
        }
        let wait = retry_delay(mail.job.attempts);
        tracing::warn!(key = %key_id, attempts, retry_in_secs = wait, error = %e,
            "could not send the claim confirmation e-mail; will retry (check [smtp])");
        self.store.retry_mail(mail, now.saturating_add(wait)).await
    }

    async fn notify(
        &self,
        hash: KeyHash,
        email: &str,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<&'static str, NotifyError> {
        let expires_at = now.saturating_add(self.validity_secs);
        let confirm = new_token();
        let revoke = new_token();
        let token = |action| LinkToken {
            key_hash: hash.0,
            action,
            created_at: now,
            expires_at,
            used_at: None,
        };
        self.store
            .save_link_tokens(&[
                (token_hash(&confirm), token(LinkAction::Confirm)),
                (token_hash(&revoke), token(LinkAction::Revoke)),
            ])
            .await?;
        self.store.commit().await?;
        let confirm_url = self.link(LinkAction::Confirm, &confirm);
        let revoke_url = self.link(LinkAction::Revoke, &revoke);
        let key_id = hash.id();
        match &self.mailer {
            None => {
                tracing::info!(key = %key_id, email, confirm = %confirm_url, revoke = %revoke_url,
                    "no [smtp] configured: pass these claim confirmation links to the key's owner");
                Ok("logged")
            }
            Some(mailer) => {
                let body = message_body(&key_id, email, ip, expires_at, &confirm_url, &revoke_url);
                mailer
                    .send(email, "Confirm your certline API key", body)
                    .await?;
                tracing::info!(key = %key_id, "claim confirmation e-mail sent");
                Ok("sent")
            }
        }
    }

    /// The URL of a link.
    pub fn link(&self, action: LinkAction, token: &str) -> Url {
        self.base
            .join(&format!("{}/{token}", link_path(action)))
            .expect("a hex token is a valid path segment")
    }
}

/// Seconds before retry number `attempt` (0 = the first): doubling, capped.
fn retry_delay(attempt: u32) -> i64 {
    FIRST_RETRY_SECS
        .saturating_mul(1i64 << attempt.min(30))
        .min(MAX_RETRY_SECS)
}

/// The path of a link route, relative to the public URL.
pub fn link_path(action: LinkAction) -> &'static str {
    match action {
        LinkAction::Confirm => "link/confirm",
        LinkAction::Revoke => "link/revoke",
    }
}

/// The SHA-256 of a link token: what the store keys it by.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// 128 bits from the OS CSPRNG, as 32 lower-case hex digits.
fn new_token() -> String {
    let mut bytes = [0u8; 16];
    OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random source failed");
    hex::encode(bytes)
}

/// The message. Lines stay short and ASCII so the links travel unencoded (7bit).
fn message_body(
    key_id: &str,
    email: &str,
    ip: IpAddr,
    expires_at: UnixTime,
    confirm: &Url,
    revoke: &Url,
) -> String {
    let expires = crate::store::rfc3339(expires_at);
    let mut b = String::new();
    let _ = writeln!(b, "Hello,\n");
    let _ = writeln!(b, "a host at {ip} claimed the certline API key {key_id}");
    let _ = writeln!(b, "for {email}.\n");
    let _ = writeln!(
        b,
        "If that was you or your machine, confirm the key:\n\n{confirm}\n"
    );
    let _ = writeln!(
        b,
        "If not, revoke the key (it stops working at once):\n\n{revoke}\n"
    );
    let _ = writeln!(b, "Each link works once, until {expires}.");
    let _ = writeln!(
        b,
        "The key works unconfirmed meanwhile, but this server may wait"
    );
    let _ = writeln!(
        b,
        "for the confirmation before it forwards its domains to Sectigo."
    );
    b
}

#[derive(Debug, thiserror::Error)]
enum NotifyError {
    #[error("storing the link tokens: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Mail(#[from] MailError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_doubling_up_to_an_hour() {
        let delays: Vec<i64> = (0..4).map(retry_delay).collect();
        assert_eq!(delays, [1, 2, 4, 8]);
        assert_eq!(retry_delay(12), MAX_RETRY_SECS);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY_SECS);
    }

    #[test]
    fn tokens_are_128_bit_hex_and_distinct() {
        let a = new_token();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_token());
        assert_ne!(token_hash(&a), token_hash(&new_token()));
    }

    #[test]
    fn message_lines_are_short_ascii() {
        let url =
            Url::parse("http://127.0.0.1:10080/link/confirm/0123456789abcdef0123456789abcdef")
                .unwrap();
        let body = message_body(
            "abcdef012345",
            "a@b.org",
            [192, 0, 2, 1].into(),
            0,
            &url,
            &url,
        );
        assert!(body.is_ascii());
        assert!(body.lines().all(|l| l.len() <= 78), "{body}");
        assert!(body.contains(url.as_str()));
    }
}
