//! `command status apikey K domain D`: what certline knows about a domain (protocol.md §7).

use super::{Service, ServiceError, parse_domain};
use crate::protocol::Reply;
use chrono::{DateTime, SecondsFormat};

pub(super) async fn run(svc: &Service, apikey: &str, domain: &str) -> Result<Reply, ServiceError> {
    let key = Service::parse_key(apikey)?;
    let domain = parse_domain(domain)?;
    let (hash, _) = svc.authorize(&key)?;
    let entry = svc
        .store
        .key_domain(&hash, &domain)?
        .ok_or(ServiceError::NotRegistered)?;
    let data = format!(
        "domain={} registered={} sectigo=off",
        domain,
        rfc3339(entry.added_at)
    );
    Ok(Reply::ok_with_data(data, "ok"))
}

/// `2026-11-23T10:00:00Z`.
pub(crate) fn rfc3339(t: i64) -> String {
    DateTime::from_timestamp(t, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}
