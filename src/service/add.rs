//! `command add apikey K domain D`: register a domain (protocol.md §7).

use super::{Context, Service, ServiceError, parse_domain};
use crate::protocol::Reply;
use crate::store::AddOutcome;

pub(super) async fn run(
    svc: &Service,
    apikey: &str,
    domain: &str,
    ctx: Context,
) -> Result<Reply, ServiceError> {
    let key = Service::parse_key(apikey)?;
    let domain = parse_domain(domain)?;
    let (hash, _) = svc.authorize(&key)?;
    let outcome = svc.store.add_domain(&hash, &domain, ctx.peer, ctx.now)?;
    // Also for "already registered": another connection's add of the same domain may not be
    // on disk yet, and `ok` must mean durable.
    svc.store.commit().await?;
    let text = match outcome {
        AddOutcome::Added => "domain added",
        AddOutcome::AlreadyRegistered => "domain already registered",
        AddOutcome::UnknownKey => return Err(ServiceError::UnknownKey),
    };
    Ok(Reply::ok_with_data(domain.to_string(), text))
}
