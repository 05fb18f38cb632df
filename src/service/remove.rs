//! `command remove apikey K domain D`: unregister a domain from a key (protocol.md §7).

use super::{Context, Service, ServiceError};
use crate::protocol::Reply;

pub(super) async fn run(
    svc: &Service,
    apikey: &str,
    domain: &str,
    ctx: Context,
) -> Result<Reply, ServiceError> {
    let (hash, domain) = svc.key_and_domain(apikey, domain).await?;
    let removed = svc
        .store
        .remove_domain(&hash, &domain, ctx.peer, ctx.now)
        .await?;
    svc.store.commit().await?;
    let text = if removed {
        "domain removed"
    } else {
        "domain was not registered"
    };
    Ok(Reply::ok_with_data(domain.to_string(), text))
}
