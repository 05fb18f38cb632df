//! `command status apikey K domain D`: what certline knows about a domain, including where it
//! stands with Sectigo (protocol.md §7).

use super::{Service, ServiceError, parse_domain};
use crate::protocol::Reply;
use crate::store::{AcmeKeyRecord, AcmeMapping, BridgePhase, BridgeRecord, rfc3339};
use std::fmt::Write;

/// The longest Sectigo error text shown; the reply must stay under 1000 bytes.
const MAX_ERROR_TEXT: usize = 300;

pub(super) async fn run(svc: &Service, apikey: &str, domain: &str) -> Result<Reply, ServiceError> {
    let key = Service::parse_key(apikey)?;
    let domain = parse_domain(domain)?;
    let (hash, record) = svc.authorize(&key).await?;
    let entry = svc
        .store
        .key_domain(&hash, &domain)
        .await?
        .ok_or(ServiceError::NotRegistered)?;
    let confirmed = if record.confirmed_at.is_some() {
        "confirmed"
    } else {
        "unconfirmed"
    };
    let mut data = format!(
        "domain={} registered={} key={confirmed}",
        domain,
        rfc3339(entry.added_at)
    );
    match &svc.bridge {
        None => data.push_str(" sectigo=off"),
        Some(bridge) => {
            let record = svc.store.bridge(domain.host()).await?;
            describe_bridge(&mut data, record.as_ref(), bridge.is_paused());
        }
    }
    if svc.store.acme_enabled() {
        describe_acme(
            &mut data,
            svc.store.acme_key(&hash).await?.as_ref(),
            domain.host(),
        );
    }
    Ok(Reply::ok_with_data(data, "ok"))
}

/// Appends the bridge fields, in protocol.md's order.
fn describe_bridge(out: &mut String, record: Option<&BridgeRecord>, paused: bool) {
    let Some(r) = record else {
        // Registered before the bridge was switched on; the worker queues it at start.
        out.push_str(" sectigo=queued");
        return;
    };
    let _ = write!(out, " sectigo={}", r.phase.name());
    if let Some(why) = waiting_on(r.phase) {
        let _ = write!(out, " waiting={why}");
    }
    if paused {
        out.push_str(" bridge=paused");
    }
    if let Some(id) = r.sectigo_id {
        let _ = write!(out, " id={id}");
    }
    if let Some(dcv) = &r.dcv_status {
        let _ = write!(out, " dcv={}", token(dcv.as_str()));
    }
    if let Some(expires) = r.dcv_expires {
        let _ = write!(out, " dcv_expires={expires}");
    }
    if let Some(dcv_domain) = &r.dcv_domain {
        let _ = write!(out, " dcv_domain={}", token(dcv_domain));
    }
    if let Some(ct) = r.ct_monitoring {
        let _ = write!(out, " ct={}", if ct { "on" } else { "off" });
    }
    if let Some(checked) = r.checked_at {
        let _ = write!(out, " checked={}", rfc3339(checked));
    }
    if let Some(dcv) = &r.dcv
        && let (Some(host), Some(value)) = (&dcv.host, &dcv.point)
    {
        let _ = write!(
            out,
            " dcv_record_type={} dcv_host={} dcv_value={}",
            dcv.record_type.as_str(),
            token(host),
            quoted(value)
        );
    }
    let waiting = !matches!(r.phase, BridgePhase::Synced);
    if let (true, Some(next)) = (waiting, r.next_attempt_at) {
        let _ = write!(out, " next_attempt={}", rfc3339(next));
    }
    if let Some(e) = &r.last_error {
        let _ = write!(out, " error_step={}", e.step.name());
        if let Some(code) = e.code {
            let _ = write!(out, " error_code={code}");
        }
        let text: String = e
            .text
            .chars()
            .take(MAX_ERROR_TEXT)
            .map(|c| match c {
                '"' => '\'',
                c if c.is_ascii_graphic() || c == ' ' => c,
                _ => '?',
            })
            .collect();
        let _ = write!(out, " error=\"{text}\"");
    }
}

/// Appends `acme=` (mapped, pending, failed) and, once the key has one, `acme_account=`.
fn describe_acme(out: &mut String, record: Option<&AcmeKeyRecord>, host: &str) {
    let state = record
        .and_then(|r| r.domains.get(host))
        .map_or("pending", AcmeMapping::name);
    let _ = write!(out, " acme={state}");
    if let Some(id) = record.and_then(|r| r.account_id) {
        let _ = write!(out, " acme_account={id}");
    }
}

/// Whom a domain waits for, when that is not the bridge itself: a host that sees
/// `sectigo=awaiting_confirmation` alone cannot tell that it is its own key's e-mail link
/// (or the operator's `certline confirm`) that would release it.
fn waiting_on(phase: BridgePhase) -> Option<&'static str> {
    match phase {
        BridgePhase::AwaitingConfirmation => Some("key_confirmation"),
        _ => None,
    }
}

/// A value shown exactly, in double quotes: `\` and `"` are escaped with a backslash, so
/// `"a\\b"` stands for `a\b`. Non-printable characters (never seen in Sectigo's values)
/// become `?`.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().take(256) {
        match c {
            '\\' | '"' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii_graphic() || c == ' ' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

/// A value from Sectigo made safe for a space-separated field.
fn token(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect()
}
