//! No admin answer shows a change that is not on disk: the same rule the line protocol keeps
//! in `Service::handle` (protocol.md §8), applied to every admin route at once.
//!
//! A handler reads the store while other writers' changes may be applied in memory but not
//! yet in the write-ahead log. This layer takes the store's [`Mark`](crate::store::Mark)
//! before the handler runs and, before the answer leaves, waits for the commit round that
//! covers everything the handler could have seen. If that round failed (the change was undone),
//! the answer is replaced by a `500`: what it showed was never stored.

use super::{AdminState, ApiError};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The middleware (see the module docs).
pub async fn only_durable_state(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    let since = state.store.mark();
    let response = next.run(request).await;
    match state.store.commit_since(since).await {
        Ok(()) => response,
        Err(e) => {
            tracing::debug!(error = %e, "admin API: the answer read a change that was not stored");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage failure: a change this answer would show was not stored; retry once the store takes writes (see /readyz)",
            )
            .into_response()
        }
    }
}
