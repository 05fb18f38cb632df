//! Health for probes, open without a token: `/healthz` (alive) and `/readyz` (able to do
//! its work: the store takes a write and a commit, the bridge is not paused).

use super::AdminState;
use axum::extract::State;
use axum::http::StatusCode;
use std::sync::Arc;

/// The process answers.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready to acknowledge registrations and forward them. 503 with the reason otherwise.
pub async fn readyz(State(state): State<Arc<AdminState>>) -> (StatusCode, String) {
    let unavailable = |why: String| (StatusCode::SERVICE_UNAVAILABLE, why + "\n");
    if state.shutdown.is_cancelled() {
        return unavailable("shutting down".into());
    }
    let now = chrono::Utc::now().timestamp();
    let writable = match state.store.probe_write(now) {
        Ok(()) => state.store.commit().await,
        Err(e) => Err(e),
    };
    if let Err(e) = writable {
        tracing::error!(error = %e, "readiness: the store does not take writes");
        return unavailable(format!(
            "store not writable: {e}; check the disk holding data_dir"
        ));
    }
    if state.bridge_paused() {
        return unavailable(
            "bridge paused: Sectigo rejects certline's credentials; fix [sectigo.auth]".into(),
        );
    }
    (StatusCode::OK, "ready\n".into())
}
