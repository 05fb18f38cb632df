//! `GET /api/keys` (the keys: id, e-mail, times, domain count; a page at a time, see
//! [`super::paging`]), `GET /api/keys/count`, `POST /api/keys/{prefix}/revoke` (revoke the
//! one key whose id starts with `prefix`) and `POST /api/keys/{prefix}/confirm` (confirm it
//! by hand, as its claim e-mail's link would).
//!
//! A revocation is committed before the answer, and the line protocol reads the key on every
//! request, so the key's next request gets `status error 403 api key revoked`. A confirmation
//! is committed before the answer too, and the key's domains that waited for it are back in
//! the bridge's queue by then.

use super::extract::ApiQuery;
use super::paging::{self, Listing};
use super::views::{KeyConfirmed, KeyCount, KeyList, KeyView, Revoked};
use super::{AdminState, ApiError};
use crate::apikey::KeyHash;
use crate::store::{KeyRecord, OperatorConfirmOutcome, StoreError, rfc3339};
use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;

/// The shortest prefix accepted: a typo of one or two digits should not find a key.
pub const MIN_PREFIX: usize = 4;

/// The listing's query string.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

/// `GET /api/keys`.
pub async fn list(
    State(state): State<Arc<AdminState>>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<KeyList>, ApiError> {
    let limit = paging::limit(query.limit)?;
    let after = paging::resume_after(Listing::Keys, query.cursor.as_deref())?;
    let after = match after.map(|a| <[u8; 32]>::try_from(a.as_slice())) {
        None => None,
        Some(Ok(hash)) => Some(KeyHash(hash)),
        Some(Err(_)) => return Err(paging::bad_cursor()),
    };
    let page = paging::collect(
        after.map(|hash| hash.0.to_vec()),
        limit,
        |after, n| keys_after(&state, after, n),
        position,
        |(hash, r)| {
            Some(KeyView {
                id: hash.id(),
                email: r.email,
                created: rfc3339(r.created_at),
                creator_ip: r.creator_ip.to_string(),
                claimed: r.claimed_at.map(rfc3339),
                confirmed: r.confirmed_at.map(rfc3339),
                revoked: r.revoked_at.map(rfc3339),
                domains: r.domain_count,
            })
        },
    )
    .await?;
    Ok(Json(KeyList {
        next_cursor: page.next_cursor(Listing::Keys),
        keys: page.items,
    }))
}

/// `GET /api/keys/count`.
pub async fn count(State(state): State<Arc<AdminState>>) -> Result<Json<KeyCount>, ApiError> {
    let count = paging::count(|after, n| keys_after(&state, after, n), position, |_| true).await?;
    Ok(Json(KeyCount { count }))
}

/// Up to `n` keys after the position `after` (a key hash).
async fn keys_after(
    state: &AdminState,
    after: Option<Vec<u8>>,
    n: usize,
) -> Result<Vec<(KeyHash, KeyRecord)>, StoreError> {
    let after = after.and_then(|a| <[u8; 32]>::try_from(a.as_slice()).ok().map(KeyHash));
    state.store.keys_after(after.as_ref(), n).await
}

/// A key's place in the listing, for the next read and the cursor.
fn position((hash, _): &(KeyHash, KeyRecord)) -> Vec<u8> {
    hash.0.to_vec()
}

/// `POST /api/keys/{prefix}/revoke`: 400 for a malformed prefix, 404 when no key matches,
/// 409 when several do.
pub async fn revoke(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(prefix): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    let (hash, record) = one_key(&state, &prefix).await?;
    let now = chrono::Utc::now().timestamp();
    let already = record.revoked_at;
    state.store.revoke_key(&hash, peer.ip(), now).await?;
    state.store.commit().await?;
    tracing::info!(key = %hash.id(), operator = %peer.ip(), "key revoked through the admin API");
    Ok(Json(Revoked {
        id: hash.id(),
        revoked: rfc3339(already.unwrap_or(now)),
        already: already.is_some(),
    }))
}

/// `POST /api/keys/{prefix}/confirm`: the operator's way out for a key whose owner never got
/// (or never opened) the claim e-mail, under `sectigo.require_confirmed_key`. Audited as the
/// link is (`confirm-apikey`, with the operator's address). 400 for a malformed prefix, 404
/// when no key matches, 409 when several do or the key is revoked.
pub async fn confirm(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(prefix): Path<String>,
) -> Result<Json<KeyConfirmed>, ApiError> {
    let (hash, _) = one_key(&state, &prefix).await?;
    let now = chrono::Utc::now().timestamp();
    let outcome = state.store.confirm_key(&hash, peer.ip(), now).await?;
    let (confirmed_at, already, requeued) = match outcome {
        OperatorConfirmOutcome::Confirmed {
            confirmed_at,
            already,
            requeued,
        } => (confirmed_at, already, requeued),
        OperatorConfirmOutcome::KeyRevoked => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "key {} is revoked and cannot be confirmed; its owner needs a new key",
                    hash.id()
                ),
            ));
        }
        // Found a moment ago; gone only if the database was replaced underneath.
        OperatorConfirmOutcome::Unknown => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("key {} no longer exists", hash.id()),
            ));
        }
    };
    state.store.commit().await?;
    tracing::info!(
        key = %hash.id(),
        operator = %peer.ip(),
        requeued,
        already,
        "key confirmed through the admin API"
    );
    Ok(Json(KeyConfirmed {
        id: hash.id(),
        confirmed: rfc3339(confirmed_at),
        already,
        requeued,
    }))
}

/// The one key whose id starts with `prefix`: 400 for a malformed prefix, 404 when no key
/// matches, 409 when several do.
async fn one_key(state: &AdminState, prefix: &str) -> Result<(KeyHash, KeyRecord), ApiError> {
    let prefix = prefix.to_ascii_lowercase();
    if prefix.len() < MIN_PREFIX
        || prefix.len() > 64
        || !prefix.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "give {MIN_PREFIX} to 64 hex digits of the key id (`certline keys` lists them)"
            ),
        ));
    }
    let mut matches = state.store.keys_with_id_prefix(&prefix).await?;
    match matches.len() {
        0 => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no key id starts with {prefix}; `certline keys` lists them"),
        )),
        1 => Ok(matches.remove(0)),
        n => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{n} key ids start with {prefix}; give more digits"),
        )),
    }
}
