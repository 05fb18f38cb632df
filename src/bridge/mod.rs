//! The Sectigo bridge: how certline gets registered domains into Sectigo Certificate Manager.
//!
//! * [`sectigo`] is the typed SCM REST client (domain inventory, CT-log monitoring, DCV) with
//!   both authentication modes and an error type that sorts failures by what to do next.
//! * [`config`] is the `[sectigo]` TOML section, including where secrets come from.
//! * [`policy`] holds the operator's decisions (which domains may be forwarded, created,
//!   monitored) as pure functions, so they are tested without a network.
//!
//! * [`worker`] drives each registered domain through lookup → create → monitoring → DCV
//!   status, fed by the store's durable outbox (ARCHITECTURE.md §5).
//!
//! Facts about the API are in `shared/reference/sectigo-scm-api.md`.

pub mod config;
pub mod dcv_domain;
pub mod dns_hook;
pub mod policy;
pub mod sectigo;
pub mod worker;

pub use config::{AuthConfig, SectigoConfig};
pub use policy::{Policy, Skip};
pub use sectigo::{ClientOptions, Credentials, SectigoClient, SectigoError};
pub use worker::{BridgeHandle, Worker};
