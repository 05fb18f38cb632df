//! `GET /api/backup`: an online backup of the embedded store, streamed as it is read
//! ([`crate::store::backup`] says what the file holds and why it is consistent while the
//! server keeps taking writes). `certline backup FILE` calls it.
//!
//! The body is produced by a task of its own through a small channel, so the store is read
//! no faster than the client takes it and never held in memory whole. Not behind the
//! durable-reply layer: the backup waits for the commit rounds it covers itself, and once
//! streaming has begun a failure can only be told inside the body (an `E` frame, which
//! the CLI reports; it never keeps a file without the closing checksum).
//!
//! On PostgreSQL the answer is `501` with what to use instead (`pg_dump`).

use super::{AdminState, ApiError};
use crate::store::backup::BackupError;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Chunks of the body in flight between the backup task and the client.
const IN_FLIGHT: usize = 8;

pub async fn backup(State(state): State<Arc<AdminState>>) -> Response {
    if let Err(e) = state.store.backup_supported() {
        return ApiError::new(StatusCode::NOT_IMPLEMENTED, e.to_string()).into_response();
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(IN_FLIGHT);
    let store = state.store.clone();
    tokio::spawn(async move {
        match store.backup(tx).await {
            Ok(trailer) => tracing::info!(
                items = trailer.total_items(),
                changes = trailer.log_records,
                "online backup sent"
            ),
            Err(BackupError::ClientGone) => {
                tracing::warn!("online backup abandoned: the client went away")
            }
            Err(e) => tracing::error!(error = %e, "online backup failed"),
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|chunk| chunk.map(Ok::<_, std::convert::Infallible>))
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"certline.backup\""),
    );
    response
}
