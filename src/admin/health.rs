//! Health for probes, open without a token: `/healthz` (alive) and `/readyz` (able to do
//! its work: the store takes writes, and a write and a commit go through; the bridge is not
//! paused).

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
    // The store's own verdict first: while it refuses writes (a failed log write, low
    // space) it says why, and a probe write would only be refused.
    let writable = match state.store.writable() {
        Ok(()) => {
            let since = state.store.mark();
            let now = chrono::Utc::now().timestamp();
            match state.store.probe_write(now).await {
                Ok(()) => state.store.commit_since(since).await,
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    if let Err(e) = writable {
        // The store logs when it stops and resumes taking writes; not once per probe.
        tracing::debug!(error = %e, "readiness: the store does not take writes");
        return unavailable(format!("store not writable: {e}"));
    }
    if state.bridge_paused() {
        return unavailable(
            "bridge paused: Sectigo rejects certline's credentials; fix [sectigo.auth]".into(),
        );
    }
    (StatusCode::OK, "ready\n".into())
}
