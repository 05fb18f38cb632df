//! `POST /api/domains/{domain}/requeue`: the operator fixed something (in Sectigo, in the
//! policy) and wants the bridge to try a domain again now rather than at its next recheck.

use super::views::Requeued;
use super::{AdminState, ApiError};
use crate::store::RequeueOutcome;
use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use std::net::SocketAddr;
use std::sync::Arc;

/// 406 for an invalid name (as on the wire), 404 for a domain no key registered, 409
/// without a bridge.
pub async fn requeue(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(domain): Path<String>,
) -> Result<Json<Requeued>, ApiError> {
    let domain = crate::service::parse_domain(&domain)?;
    let host = domain.host().to_owned();
    let now = chrono::Utc::now().timestamp();
    match state.store.requeue_domain(&host, peer.ip(), now).await? {
        RequeueOutcome::Requeued => {
            state.store.commit().await?;
            tracing::info!(domain = %host, operator = %peer.ip(), "domain requeued for the bridge");
            Ok(Json(Requeued {
                domain: host,
                sectigo: "queued".into(),
            }))
        }
        RequeueOutcome::UnknownDomain => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{host} is not registered under any key"),
        )),
        RequeueOutcome::BridgeOff => Err(ApiError::new(
            StatusCode::CONFLICT,
            "the Sectigo bridge is off (no [sectigo] section): there is nothing to requeue",
        )),
    }
}
