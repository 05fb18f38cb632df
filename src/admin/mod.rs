//! The operator's face: an HTTP listener (axum) beside the line protocol, off unless the
//! configuration has an `[admin]` section.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /healthz` | none | the process answers |
//! | `GET /readyz` | none | the store takes a write + commit, the bridge is not paused |
//! | `GET /metrics` | bearer | Prometheus text format ([`metrics`]) |
//! | `GET /api/domains?state=&suffix=&needs_action=true&limit=&cursor=` | bearer | the inventory, paged ([`inventory`], [`paging`]) |
//! | `GET /api/domains/count?state=&suffix=&needs_action=true` | bearer | how many domains match |
//! | `POST /api/domains` | bearer | register domains under a key (bulk import, [`import`]) |
//! | `POST /api/domains/{domain}/requeue` | bearer | bridge record back to `queued`, due now |
//! | `GET /api/keys?limit=&cursor=` | bearer | the keys, paged ([`keys`]) |
//! | `GET /api/keys/count` | bearer | how many keys there are |
//! | `POST /api/keys/{prefix}/revoke` | bearer | revoke the one key whose id starts so |
//! | `POST /api/keys/{prefix}/confirm` | bearer | confirm it by hand, as its claim link would |
//! | `GET /api/backup` | bearer | an online backup of the embedded store, streamed ([`backup`]) |
//! | `GET`/`POST /link/confirm/{token}`, `/link/revoke/{token}` | the link token | claim confirmation ([`confirm`]) |
//!
//! Every answer but health's and the backup's waits for the commit round covering what it
//! read ([`durable_reply`]); the backup waits for the rounds it covers itself.
//! Health is open so probes need no secret; the claim links carry their own credential.
//! Everything else needs `Authorization: Bearer <token>` with the token from
//! `admin.token_env`/`admin.token_file`, compared in constant time.

mod backup;
pub mod config;
mod confirm;
mod durable_reply;
mod extract;
mod health;
mod import;
mod inventory;
mod keys;
pub mod metrics;
pub mod paging;
mod requeue;
pub mod views;

pub use config::AdminConfig;

use crate::bridge::BridgeHandle;
use crate::config::secret::Secret;
use crate::store::Store;
use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What every admin handler shares.
pub struct AdminState {
    pub store: Arc<Store>,
    /// Present when the Sectigo bridge is configured.
    pub bridge: Option<Arc<BridgeHandle>>,
    /// SHA-256 of the bearer token: comparing digests takes the same time for every guess.
    /// Replaced by a reload (a rotated token works from the next request on).
    token_digest: ArcSwap<[u8; 32]>,
    pub metrics: PrometheusHandle,
    /// DCV expiring within this many days needs action (the bridge's own window).
    pub dcv_window_days: i64,
    pub shutdown: CancellationToken,
}

impl AdminState {
    /// The shared state; `token` is the bearer token every protected route requires.
    pub fn new(
        store: Arc<Store>,
        bridge: Option<Arc<BridgeHandle>>,
        token: &Secret,
        metrics: PrometheusHandle,
        dcv_window_days: u32,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            bridge,
            token_digest: ArcSwap::from_pointee(digest(token)),
            metrics,
            dcv_window_days: i64::from(dcv_window_days),
            shutdown,
        }
    }

    /// Accepts `token` instead of the old one from the next request on (reload).
    pub fn set_token(&self, token: &Secret) {
        self.token_digest.store(Arc::new(digest(token)));
    }

    fn bridge_paused(&self) -> bool {
        self.bridge.as_ref().is_some_and(|b| b.is_paused())
    }
}

/// A bound admin listener.
pub struct AdminServer {
    listener: TcpListener,
    state: Arc<AdminState>,
}

impl AdminServer {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr, state: AdminState) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self {
            listener,
            state: Arc::new(state),
        })
    }

    /// Serves on a listener bound elsewhere (socket activation).
    pub fn from_listener(
        listener: std::net::TcpListener,
        state: AdminState,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener: TcpListener::from_std(listener)?,
            state: Arc::new(state),
        })
    }

    /// The shared state (a reload swaps the token in it).
    pub fn state(&self) -> Arc<AdminState> {
        self.state.clone()
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let handle = self.state.metrics.clone();
        let upkeep_stop = shutdown.clone();
        // Histograms accumulate until drained; drain them even when nobody scrapes.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => handle.run_upkeep(),
                    _ = upkeep_stop.cancelled() => return,
                }
            }
        });
        tracing::info!(addr = %self.local_addr(), "admin API listening");
        let app = router(self.state).into_make_service_with_connect_info::<SocketAddr>();
        let result = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "the admin listener failed");
        }
    }
}

/// The routes (see the module docs).
pub fn router(state: Arc<AdminState>) -> Router {
    // Health answers for itself (readyz runs its own write and commit, and must say why the
    // store is failing, not hide it behind a generic 500).
    let health = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    let links = Router::new()
        .route(
            "/link/confirm/{token}",
            get(confirm::confirm_page).post(confirm::confirm),
        )
        .route(
            "/link/revoke/{token}",
            get(confirm::revoke_page).post(confirm::revoke),
        );
    let protected = Router::new()
        .route("/metrics", get(metrics::render))
        .route("/api/domains", get(inventory::list).post(import::import))
        .route("/api/domains/count", get(inventory::count))
        .route("/api/domains/{domain}/requeue", post(requeue::requeue))
        .route("/api/keys", get(keys::list))
        .route("/api/keys/count", get(keys::count))
        .route("/api/keys/{prefix}/revoke", post(keys::revoke))
        .route("/api/keys/{prefix}/confirm", post(keys::confirm))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let durable = links
        .merge(protected)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            durable_reply::only_durable_state,
        ));
    let backup = Router::new()
        .route("/api/backup", get(backup::backup))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    health
        .merge(durable)
        .merge(backup)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such route; see README.md, \"Operating certline\", for the admin API",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method; see README.md, \"Operating certline\", for the admin API",
            )
        })
        .with_state(state)
}

fn digest(token: &Secret) -> [u8; 32] {
    Sha256::digest(token.expose().as_bytes()).into()
}

/// Lets a request through only with the right bearer token.
async fn require_token(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let ok = presented.is_some_and(|t| {
        let digest: [u8; 32] = Sha256::digest(t.as_bytes()).into();
        digest
            .iter()
            .zip(state.token_digest.load().iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    });
    if ok {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token: send `Authorization: Bearer <token>` with the token from admin.token_env or admin.token_file (the CLI reads CERTLINE_ADMIN_TOKEN)",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// An error answer: a status and a JSON body saying what to do.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A store failure: logged in full, answered in short.
    fn storage(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "admin API: storage failure");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage failure (see the server log); retry later",
        )
    }
}

/// A rule of the line protocol refused: the same code as on the wire (the wire's codes are
/// HTTP's), the same text.
impl From<crate::service::ServiceError> for ApiError {
    fn from(e: crate::service::ServiceError) -> Self {
        match e {
            crate::service::ServiceError::Storage(e) => Self::storage(e),
            other => Self::new(
                StatusCode::from_u16(other.code().as_u16())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                other.to_string(),
            ),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::storage(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = views::ApiErrorBody {
            error: self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}
