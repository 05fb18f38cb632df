//! A claim confirmation e-mail taken from the mail outbox, to be sent, then finished or
//! retried (`confirm::Confirmations::run`).

use super::MailJob;
use crate::apikey::KeyHash;

/// One job taken from the outbox.
#[derive(Debug, Clone)]
pub struct DueMail {
    /// Its place in the outbox (to delete or move it): opaque to everyone but the backend
    /// that handed it out.
    pub outbox_key: Vec<u8>,
    pub key: KeyHash,
    pub job: MailJob,
}
