//! `POST /api/domains`: registers a batch of domains under one API key, exactly as `command
//! add` would (same normalisation, same store call, same audit trail, committed before the
//! answer). `certline import` sends a file through it in batches, for a progress bar.

use super::extract::ApiJson;
use super::views::{ImportRequest, ImportResponse, ImportResult};
use super::{AdminState, ApiError};
use crate::service::{self, Context, Registered};
use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use std::net::SocketAddr;
use std::sync::Arc;

/// The most domains one request may carry.
pub const MAX_BATCH: usize = 1000;

/// 400 for too many domains; otherwise the line protocol's answers for the key: 422 for a
/// malformed key, 401 for an unknown one, 403 for a revoked one. Each domain is registered by
/// the rule `command add` uses; an invalid name is reported in its result, not as an error.
pub async fn import(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(request): ApiJson<ImportRequest>,
) -> Result<Json<ImportResponse>, ApiError> {
    if request.domains.len() > MAX_BATCH {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("at most {MAX_BATCH} domains per request; split the list"),
        ));
    }
    let hash = service::authorize_apikey(&state.store, &request.apikey).await?;
    let ctx = Context::now(peer.ip());
    let mut results = Vec::with_capacity(request.domains.len());
    for input in request.domains {
        let Ok(domain) = service::parse_domain(&input) else {
            results.push(ImportResult {
                input,
                domain: None,
                outcome: "invalid_domain".into(),
            });
            continue;
        };
        let outcome = match service::register(&state.store, &hash, &domain, ctx).await? {
            Registered::Added => "added",
            Registered::AlreadyRegistered => "already_registered",
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
