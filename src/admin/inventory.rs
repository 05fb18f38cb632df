//! `GET /api/domains`: the registered domains with their bridge state, the keys holding
//! them, and why each needs an operator, if it does, a page at a time ([`super::paging`]).
//! `GET /api/domains/count` answers how many match the same filters (reading the whole
//! inventory, a page at a time). Filters (query string, all optional), applied before
//! paging:
//!
//! * `state=S`: the bridge state as `command status` names it (`synced`, `failed`, …, `off`);
//! * `suffix=X`: the domain is `X` or ends in `.X`;
//! * `needs_action=true`: only domains with at least one reason (see [`reasons`]).
//!
//! Paging: `limit=N` and `cursor=C` (the previous page's `next_cursor`).

use super::extract::ApiQuery;
use super::paging::{self, Listing};
use super::views::{DomainCount, DomainList, DomainView, ErrorView, HolderView, Reason};
use super::{AdminState, ApiError};
use crate::store::rfc3339;
use crate::store::{BridgePhase, BridgeRecord, DcvState, InventoryRow};
use axum::Json;
use axum::extract::State;
use chrono::NaiveDate;
use serde::Deserialize;
use std::sync::Arc;

/// The listing's query string.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub state: Option<String>,
    pub suffix: Option<String>,
    #[serde(default)]
    pub needs_action: bool,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

/// The count's query string: the listing's filters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountQuery {
    pub state: Option<String>,
    pub suffix: Option<String>,
    #[serde(default)]
    pub needs_action: bool,
}

/// The filters, and what a row's view needs to know about the bridge.
struct Filter {
    state: Option<String>,
    /// Lower-case, without a leading `*.` or surrounding dots.
    suffix: Option<String>,
    needs_action: bool,
    bridge_on: bool,
    paused: bool,
    today: NaiveDate,
    dcv_window_days: i64,
}

impl Filter {
    fn new(
        admin: &AdminState,
        state: Option<String>,
        suffix: Option<String>,
        needs_action: bool,
    ) -> Self {
        Self {
            state,
            suffix: suffix.map(|s| {
                s.trim()
                    .trim_start_matches("*.")
                    .trim_matches('.')
                    .to_ascii_lowercase()
            }),
            needs_action,
            bridge_on: admin.bridge.is_some(),
            paused: admin.bridge_paused(),
            today: chrono::Utc::now().date_naive(),
            dcv_window_days: admin.dcv_window_days,
        }
    }

    /// The row's view, if it passes the filters. The suffix is checked first: it needs no
    /// view.
    fn apply(&self, row: InventoryRow) -> Option<DomainView> {
        if let Some(suffix) = &self.suffix {
            let host = row.domain.split(':').next().unwrap_or(&row.domain);
            let matches = host
                .strip_suffix(suffix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'));
            if !matches {
                return None;
            }
        }
        let d = view(
            row,
            self.bridge_on,
            self.paused,
            self.today,
            self.dcv_window_days,
        );
        let state_ok = self.state.as_deref().is_none_or(|s| d.sectigo == s);
        (state_ok && (!self.needs_action || !d.needs_action.is_empty())).then_some(d)
    }

    fn bridge(&self) -> String {
        match (self.bridge_on, self.paused) {
            (false, _) => "off",
            (true, false) => "on",
            (true, true) => "paused",
        }
        .into()
    }
}

/// `GET /api/domains`.
pub async fn list(
    State(state): State<Arc<AdminState>>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<DomainList>, ApiError> {
    let limit = paging::limit(query.limit)?;
    let after = paging::resume_after(Listing::Domains, query.cursor.as_deref())?;
    let filter = Filter::new(&state, query.state, query.suffix, query.needs_action);
    let page = paging::collect(
        after,
        limit,
        |after, n| rows_after(&state, after, n),
        position,
        |row| filter.apply(row),
    )
    .await?;
    Ok(Json(DomainList {
        bridge: filter.bridge(),
        next_cursor: page.next_cursor(Listing::Domains),
        domains: page.items,
    }))
}

/// `GET /api/domains/count`: how many domains the filters match (a full scan, one record in
/// memory at a time).
pub async fn count(
    State(state): State<Arc<AdminState>>,
    ApiQuery(query): ApiQuery<CountQuery>,
) -> Result<Json<DomainCount>, ApiError> {
    let filter = Filter::new(&state, query.state, query.suffix, query.needs_action);
    let count = paging::count(
        |after, n| rows_after(&state, after, n),
        position,
        |row| filter.apply(row).is_some(),
    )
    .await?;
    Ok(Json(DomainCount {
        bridge: filter.bridge(),
        count,
    }))
}

/// Up to `n` inventory rows after the position `after` (a domain name).
async fn rows_after(
    state: &AdminState,
    after: Option<Vec<u8>>,
    n: usize,
) -> Result<Vec<InventoryRow>, crate::store::StoreError> {
    let after = after.map(|a| String::from_utf8_lossy(&a).into_owned());
    state.store.inventory_after(after.as_deref(), n).await
}

/// A row's place in the listing, for the next read and the cursor.
fn position(row: &InventoryRow) -> Vec<u8> {
    row.domain.as_bytes().to_vec()
}

fn view(
    row: InventoryRow,
    bridge_on: bool,
    paused: bool,
    today: NaiveDate,
    dcv_window_days: i64,
) -> DomainView {
    let key = if row.holders.is_empty() {
        "none"
    } else if row.holders.iter().any(|h| h.confirmed && !h.revoked) {
        "confirmed"
    } else {
        "unconfirmed"
    };
    let sectigo = match (&row.bridge, bridge_on) {
        (Some(r), _) => r.phase.name(),
        (None, true) => "queued",
        (None, false) => "off",
    };
    let b = row.bridge.as_ref();
    let unconfirmed: Vec<&str> = row
        .holders
        .iter()
        .filter(|h| !h.confirmed && !h.revoked)
        .map(|h| h.key_id.as_str())
        .collect();
    let needs_action = match b {
        Some(r) => reasons(r, paused, today, dcv_window_days, &unconfirmed),
        None => Vec::new(),
    };
    DomainView {
        domain: row.domain,
        registered: rfc3339(row.registered_at),
        sectigo: sectigo.into(),
        key: key.into(),
        keys: row
            .holders
            .into_iter()
            .map(|h| HolderView {
                id: h.key_id,
                confirmed: h.confirmed,
                revoked: h.revoked,
            })
            .collect(),
        id: b.and_then(|r| r.sectigo_id),
        dcv: b
            .and_then(|r| r.dcv_status.as_ref())
            .map(|d| d.as_str().to_owned()),
        dcv_expires: b.and_then(|r| r.dcv_expires).map(|d| d.to_string()),
        dcv_domain: b.and_then(|r| r.dcv_domain.clone()),
        ct: b.and_then(|r| r.ct_monitoring),
        checked: b.and_then(|r| r.checked_at).map(rfc3339),
        next_attempt: b
            .filter(|r| r.phase != BridgePhase::Synced)
            .and_then(|r| r.next_attempt_at)
            .map(rfc3339),
        error: b.and_then(|r| r.last_error.as_ref()).map(|e| ErrorView {
            step: e.step.name().into(),
            code: e.code,
            text: e.text.clone(),
            transient: e.transient,
            at: rfc3339(e.at),
        }),
        needs_action,
    }
}

/// Why a domain needs an operator, each with what to do. `unconfirmed` are the ids of the
/// unrevoked keys holding it that are not confirmed: confirming any one releases it.
pub fn reasons(
    r: &BridgeRecord,
    paused: bool,
    today: NaiveDate,
    dcv_window_days: i64,
    unconfirmed: &[&str],
) -> Vec<Reason> {
    let mut out = Vec::new();
    let mut add = |reason: &str, detail: String| {
        out.push(Reason {
            reason: reason.into(),
            detail,
        })
    };
    match r.phase {
        BridgePhase::Failed => {
            let detail = match &r.last_error {
                Some(e) => format!(
                    "Sectigo refused step {}{}: {}; fix it in Sectigo or the policy, then `certline requeue`",
                    e.step.name(),
                    e.code.map(|c| format!(" ({c})")).unwrap_or_default(),
                    e.text
                ),
                None => "a bridge step failed; see the server log, then `certline requeue`".into(),
            };
            add("failed", detail);
        }
        BridgePhase::NotInSectigo => add(
            "not_in_sectigo",
            "Sectigo does not have it and this server may not create it: add it in Sectigo or set sectigo.create_missing".into(),
        ),
        BridgePhase::AwaitingDelegationApproval => add(
            "awaiting_delegation_approval",
            "its delegation in Sectigo waits for approval: an MRAO approves it in SCM (Domains → Delegations), or set sectigo.approve_delegations = true if certline's admin is an MRAO".into(),
        ),
        BridgePhase::Suspended => add(
            "suspended",
            "the domain is suspended (inactive) in Sectigo: an administrator activates it in SCM".into(),
        ),
        BridgePhase::AwaitingConfirmation => add(
            "awaiting_confirmation",
            format!(
                "no key holding it is confirmed: its owner follows the confirm link of the claim e-mail, or you run `certline confirm {}` once you know whose key it is{}",
                unconfirmed.first().copied().unwrap_or("KEY-ID"),
                match unconfirmed.len() {
                    0 | 1 => String::new(),
                    _ => format!(" (keys holding it: {})", unconfirmed.join(", ")),
                }
            ),
        ),
        BridgePhase::DcvActionRequired => {
            let record = r.dcv.as_ref().and_then(|d| {
                Some(format!(
                    "{} {} \"{}\"",
                    d.record_type.as_str(),
                    d.host.as_deref()?,
                    d.point.as_deref()?
                ))
            });
            add(
                "dcv_action_required",
                format!(
                    "no sectigo.dcv_hook publishes DNS records here: publish {} by hand (certline keeps checking), or configure sectigo.dcv_hook",
                    record.as_deref().unwrap_or("the record Sectigo asks for")
                ),
            )
        }
        BridgePhase::Queued
        | BridgePhase::Lookup
        | BridgePhase::Create
        | BridgePhase::Details
        | BridgePhase::Monitoring
        | BridgePhase::DcvStatus
            if paused =>
        {
            add(
                "paused",
                "the bridge is paused: Sectigo rejects certline's credentials; fix [sectigo.auth]".into(),
            )
        }
        _ => {}
    }
    match &r.dcv_status {
        Some(DcvState::Validated) => {
            if let Some(expires) = r.dcv_expires
                && (expires - today).num_days() <= dcv_window_days
            {
                add(
                    "dcv_expiring",
                    format!("DCV expires {expires}: revalidate the domain in Sectigo"),
                );
            }
        }
        Some(other) => add(
            "dcv_not_validated",
            format!(
                "DCV of {} is {}: complete domain control validation in Sectigo",
                r.dcv_domain.as_deref().unwrap_or("the domain"),
                other.as_str()
            ),
        ),
        None => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BridgeError;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
    }

    fn names(r: &BridgeRecord, paused: bool) -> Vec<String> {
        reasons(r, paused, today(), 30, &[])
            .into_iter()
            .map(|r| r.reason)
            .collect()
    }

    #[test]
    fn each_reason_is_found() {
        let mut r = BridgeRecord::queued(0, false);
        assert!(names(&r, false).is_empty());
        assert_eq!(names(&r, true), ["paused"]);
        r.phase = BridgePhase::AwaitingConfirmation;
        assert_eq!(names(&r, true), ["awaiting_confirmation"]);
        let waiting = reasons(&r, false, today(), 30, &["3f9a1c0d2b4e", "77aa00112233"]);
        assert!(
            waiting[0]
                .detail
                .contains("`certline confirm 3f9a1c0d2b4e`")
                && waiting[0]
                    .detail
                    .ends_with("(keys holding it: 3f9a1c0d2b4e, 77aa00112233)"),
            "{}",
            waiting[0].detail
        );
        r.phase = BridgePhase::DcvActionRequired;
        let mut dcv = crate::store::DcvProgress::new(crate::store::DcvRecordType::Txt, 0);
        dcv.host = Some("_pki-validation.www.example.edu.".into());
        dcv.point = Some("abc123".into());
        r.dcv = Some(dcv);
        let publish = reasons(&r, false, today(), 30, &[]);
        assert_eq!(publish[0].reason, "dcv_action_required");
        assert!(
            publish[0]
                .detail
                .contains("publish TXT _pki-validation.www.example.edu. \"abc123\" by hand"),
            "{}",
            publish[0].detail
        );
        r.dcv = None;
        r.phase = BridgePhase::NotInSectigo;
        assert_eq!(names(&r, false), ["not_in_sectigo"]);
        r.phase = BridgePhase::AwaitingDelegationApproval;
        assert_eq!(names(&r, false), ["awaiting_delegation_approval"]);
        r.phase = BridgePhase::Suspended;
        assert_eq!(names(&r, false), ["suspended"]);
        r.phase = BridgePhase::Failed;
        r.last_error = Some(BridgeError {
            step: BridgePhase::Create,
            code: Some(-712),
            text: "too short".into(),
            transient: false,
            at: 0,
        });
        let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let detail = &reasons(&r, false, today, 30, &[])[0].detail;
        assert!(detail.contains("create (-712): too short"), "{detail}");
        r.phase = BridgePhase::Synced;
        r.dcv_status = Some(DcvState::NotValidated);
        assert_eq!(names(&r, false), ["dcv_not_validated"]);
        r.dcv_status = Some(DcvState::Validated);
        r.dcv_expires = NaiveDate::from_ymd_opt(2026, 12, 1);
        assert_eq!(names(&r, false), ["dcv_expiring"]);
        r.dcv_expires = NaiveDate::from_ymd_opt(2027, 6, 1);
        assert!(names(&r, false).is_empty());
    }
}
