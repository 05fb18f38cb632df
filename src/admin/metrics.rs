//! Prometheus metrics: the `metrics` facade with `metrics-exporter-prometheus` as the
//! recorder, rendered by an axum route (no listener of its own).
//!
//! | metric | type | labels | set by |
//! |---|---|---|---|
//! | `certline_requests_total` | counter | `command`, `code` | server/connection.rs |
//! | `certline_open_connections` | gauge | | server/listener.rs |
//! | `certline_rate_limited_total` | counter | `command` | service/rate_limit.rs |
//! | `certline_flush_seconds` | histogram | | store/sled/durable.rs (one flush + fsync round) |
//! | `certline_storage_failures_total` | counter | `stage` (`log_write`, `recovery`, `checkpoint`, `database`) | store/sled/durable.rs |
//! | `certline_store_writable` | gauge | | at scrape time |
//! | `certline_outbox_depth` | gauge | | at scrape time |
//! | `certline_bridge_steps_total` | counter | `step`, `result` (`ok`, `retry`, `failed`, `paused`) | bridge/worker.rs |
//! | `certline_domains` | gauge | `state` (the bridge phase) | at scrape time |
//! | `certline_bridge_paused` | gauge | | at scrape time |
//! | `certline_confirmation_mails_total` | counter | `result` (`sent`, `logged`, `failed`) | confirm |
//!
//! The recorder is process-global (the `metrics` facade has one slot), installed the first
//! time a server with an `[admin]` section starts. Without one every metric call is a no-op.

use super::AdminState;
use crate::store::BridgePhase;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};

/// Flush + fsync takes from well under a millisecond (cache) to seconds (a dying disk).
const FLUSH_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Every phase, so each `certline_domains{state=…}` series exists, zero or not.
const PHASES: &[BridgePhase] = &[
    BridgePhase::Queued,
    BridgePhase::Lookup,
    BridgePhase::Create,
    BridgePhase::Details,
    BridgePhase::Monitoring,
    BridgePhase::DcvStatus,
    BridgePhase::Synced,
    BridgePhase::NotForwarded,
    BridgePhase::NotInSectigo,
    BridgePhase::AwaitingConfirmation,
    BridgePhase::AwaitingDelegationApproval,
    BridgePhase::Suspended,
    BridgePhase::Failed,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("certline_flush_seconds".into()),
                    FLUSH_BUCKETS,
                )
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics stays empty");
            }
            describe();
            // Shown from the first scrape on, not only after the first connection.
            metrics::gauge!("certline_open_connections").set(0.0);
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "certline_requests_total",
        "Line-protocol requests answered, by command and status code."
    );
    describe_gauge!(
        "certline_open_connections",
        "Open line-protocol connections."
    );
    describe_counter!(
        "certline_rate_limited_total",
        "Requests refused by the per-address rate limits, by command."
    );
    describe_histogram!(
        "certline_flush_seconds",
        metrics::Unit::Seconds,
        "Duration of one group-commit round (one write-ahead log write + fdatasync)."
    );
    describe_counter!(
        "certline_storage_failures_total",
        "Storage operations that failed, by stage: log_write, recovery (a retry while writes are refused), checkpoint, database (fatal: the process exits)."
    );
    describe_gauge!(
        "certline_store_writable",
        "1 while the store takes writes; 0 while it refuses them (failed log write, low disk space, failed database)."
    );
    describe_gauge!(
        "certline_outbox_depth",
        "Domains waiting in the bridge outbox."
    );
    describe_counter!(
        "certline_bridge_steps_total",
        "Sectigo bridge steps, by step and result."
    );
    describe_gauge!("certline_domains", "Domains by Sectigo bridge state.");
    describe_gauge!(
        "certline_bridge_paused",
        "1 while Sectigo rejects certline's credentials."
    );
    describe_counter!(
        "certline_confirmation_mails_total",
        "Claim confirmation messages, by result."
    );
}

/// `GET /metrics`: refreshes the gauges computed from the store, then renders everything.
pub async fn render(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    // Scans of the store (the store runs them off the async threads).
    match state.store.outbox_len().await {
        Ok(outbox) => metrics::gauge!("certline_outbox_depth").set(outbox as f64),
        Err(e) => tracing::error!(error = %e, "metrics: counting the bridge outbox failed"),
    }
    match state.store.bridge_phase_counts().await {
        Ok(phases) => {
            for phase in PHASES {
                let n = phases.get(phase).copied().unwrap_or(0);
                metrics::gauge!("certline_domains", "state" => phase.name()).set(n as f64);
            }
        }
        Err(e) => tracing::error!(error = %e, "metrics: counting domains by state failed"),
    }
    metrics::gauge!("certline_bridge_paused").set(if state.bridge_paused() { 1.0 } else { 0.0 });
    let writable = state.store.writable().is_ok();
    metrics::gauge!("certline_store_writable").set(if writable { 1.0 } else { 0.0 });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
