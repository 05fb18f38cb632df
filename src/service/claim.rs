//! `command claim apikey K email E`: bind a key to an e-mail address (protocol.md §7).

use super::{Context, Service, ServiceError, parse_email};
use crate::protocol::Reply;
use crate::store::ClaimOutcome;

pub(super) async fn run(
    svc: &Service,
    apikey: &str,
    email: &str,
    ctx: Context,
) -> Result<Reply, ServiceError> {
    let key = Service::parse_key(apikey)?;
    let email = parse_email(email)?;
    if !svc.limiters.allow_claim(ctx.peer) {
        return Err(ServiceError::RateLimited);
    }
    let outcome = svc
        .store
        .claim_key(
            &key.hash(),
            key.is_long_enough_to_create(),
            email,
            &svc.caps,
            ctx.peer,
            ctx.now,
        )
        .await?;
    match outcome {
        // Too short to be created by a client: say so rather than "unknown", since that is
        // what the client can fix.
        ClaimOutcome::Unknown => Err(ServiceError::InvalidApiKey),
        ClaimOutcome::Revoked => Err(ServiceError::Revoked),
        ClaimOutcome::ClaimedByOther => Err(ServiceError::ClaimedByOther),
        ClaimOutcome::Capped(cap) => Err(cap.into()),
        ClaimOutcome::Claimed => {
            svc.store.commit().await?;
            svc.claimed();
            Ok(Reply::ok("api key claimed"))
        }
        ClaimOutcome::AlreadyClaimed => {
            // The earlier claim may still be in flight to disk: wait for it before saying so.
            svc.store.commit().await?;
            Ok(Reply::ok("api key already claimed"))
        }
    }
}
