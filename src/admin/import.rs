//! `POST /api/domains`: registers a batch of domains under one API key, exactly as `command
//! add` would (same normalisation, same store call, same audit trail, committed before the
//! answer). `certline import` sends a file through it in batches, for a progress bar.

use super::views::{ImportRequest, ImportResponse, ImportResult};
use super::{AdminState, ApiError};
use crate::apikey::ApiKey;
use crate::store::AddOutcome;
use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use std::net::SocketAddr;
use std::sync::Arc;

/// The most domains one request may carry.
pub const MAX_BATCH: usize = 1000;

/// 400 for too many domains, 422 for a malformed key, 404 unknown key, 403 revoked key.
pub async fn import(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(request): Json<ImportRequest>,
) -> Result<Json<ImportResponse>, ApiError> {
    if request.domains.len() > MAX_BATCH {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("at most {MAX_BATCH} domains per request; split the list"),
        ));
    }
    let key = ApiKey::parse(&request.apikey).map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid api key format: 1-64 characters of A-Z, a-z, 0-9 and -",
        )
    })?;
    let hash = key.hash();
    match state.store.key(&hash)? {
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown api key: mint one with `command apikey` (or claim it) first",
            ));
        }
        Some(r) if r.revoked_at.is_some() => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "the api key is revoked: use another key",
            ));
        }
        Some(_) => {}
    }
    let now = chrono::Utc::now().timestamp();
    let mut results = Vec::with_capacity(request.domains.len());
    for input in request.domains {
        let Ok(domain) = crate::domain::normalize(&input) else {
            results.push(ImportResult {
                input,
                domain: None,
                outcome: "invalid_domain".into(),
            });
            continue;
        };
        let outcome = match state.store.add_domain(&hash, &domain, peer.ip(), now)? {
            AddOutcome::Added => "added",
            AddOutcome::AlreadyRegistered => "already_registered",
            AddOutcome::UnknownKey => {
                return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown api key"));
            }
        };
        results.push(ImportResult {
            input,
            domain: Some(domain.to_string()),
            outcome: outcome.into(),
        });
    }
    // One commit for the batch: every `added` in the answer is on disk.
    state.store.commit().await?;
    Ok(Json(ImportResponse { results }))
}
