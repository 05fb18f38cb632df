//! `command apikey [email E]`: mint a key (protocol.md §7).

use super::{Context, Service, ServiceError, parse_email};
use crate::apikey::ApiKey;
use crate::protocol::Reply;
use crate::store::ClaimOutcome;

pub(super) async fn run(
    svc: &Service,
    email: Option<&str>,
    ctx: Context,
) -> Result<Reply, ServiceError> {
    let email = email.map(parse_email).transpose()?;
    if !svc.limiters.allow_apikey(ctx.peer) {
        return Err(ServiceError::RateLimited);
    }
    let key = ApiKey::generate();
    let outcome = svc
        .store
        .create_key(&key.hash(), email, &svc.caps, ctx.peer, ctx.now)
        .await?;
    if let ClaimOutcome::Capped(cap) = outcome {
        return Err(cap.into());
    }
    svc.store.commit().await?;
    if email.is_some() {
        svc.claimed();
    }
    let text = if email.is_some() {
        "api key created and claimed"
    } else {
        "api key created"
    };
    Ok(Reply::ok_with_data(key.expose(), text))
}
