//! `command acme apikey K`: the External Account Binding of the key's Sectigo ACME account,
//! so the host can register certbot with Sectigo's ACME server (protocol.md §7).
//!
//! Off unless the operator set `hand_out_eab = true`: the line port is plain TCP, and the
//! HMAC key is a credential for every name in the account. The reply is built from the
//! store only (no SCM call on the request path); the worker fetched the EAB when it set the
//! account up.

use super::{Service, ServiceError};
use crate::protocol::{ErrorCode, Reply};

/// What the command needs from `[sectigo.acme]`.
#[derive(Debug, Clone)]
pub struct AcmeHandOut {
    /// The ACME directory URL hosts give certbot as `--server`.
    pub server: String,
    /// Hand out EAB only to confirmed keys (`[sectigo] require_confirmed_key`).
    pub require_confirmed_key: bool,
}

pub(super) async fn run(svc: &Service, apikey: &str) -> Result<Reply, ServiceError> {
    let key = Service::parse_key(apikey)?;
    let (hash, record) = svc.authorize(&key).await?;
    let Some(hand_out) = &svc.acme else {
        return Ok(Reply::error(
            ErrorCode::NotFound,
            "acme eab not offered by this server",
        ));
    };
    if hand_out.require_confirmed_key && record.confirmed_at.is_none() {
        return Ok(Reply::error(
            ErrorCode::Conflict,
            "api key not confirmed; follow the link in the claim e-mail",
        ));
    }
    let eab = svc.store.acme_key(&hash).await?.and_then(|a| a.eab);
    let Some(eab) = eab else {
        return Ok(Reply::error(
            ErrorCode::Conflict,
            "no acme account yet; it is created once a domain is validated, retry later",
        ));
    };
    // The HMAC key is in the reply only: never in a log line or the audit trail.
    let data = format!(
        "server={} kid={} hmac={}",
        hand_out.server, eab.kid, eab.hmac
    );
    if !fits(&data) {
        return Ok(Reply::error(
            ErrorCode::Internal,
            "acme account data from Sectigo does not fit a reply",
        ));
    }
    Ok(Reply::ok_with_data(data, "ok"))
}

/// The data must be one line of printable, space-separated tokens well under the reply
/// limit; SCM's values are URLs and base64url, so anything else is refused, not echoed.
fn fits(data: &str) -> bool {
    data.len() <= 900 && data.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}
