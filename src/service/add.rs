//! `command add apikey K domain D`: register a domain (protocol.md §7).

use super::{Context, Registered, Service, ServiceError, register};
use crate::protocol::Reply;

pub(super) async fn run(
    svc: &Service,
    apikey: &str,
    domain: &str,
    ctx: Context,
) -> Result<Reply, ServiceError> {
    let (hash, domain) = svc.key_and_domain(apikey, domain).await?;
    let outcome = register(&svc.store, &hash, &domain, ctx).await?;
    // Also for "already registered": another connection's add of the same domain may not be
    // on disk yet, and `ok` must mean durable.
    svc.store.commit().await?;
    let text = match outcome {
        Registered::Added => "domain added",
        Registered::AlreadyRegistered => "domain already registered",
    };
    Ok(Reply::ok_with_data(domain.to_string(), text))
}
