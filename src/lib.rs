//! certline: a KeyChest-compatible TCP line-protocol server that registers hosts' domains
//! and bridges them into Sectigo Certificate Manager. `ARCHITECTURE.md` has the layer map,
//! the keyspace, the bridge state machine and the durability contract.
//!
//! # Map
//!
//! ```text
//!  client ── TCP :10023 ── server ── protocol ── service ── store ── bridge ── Sectigo
//!                          (accept,   (frame,     (one fn    (facade over a
//!                           limits,    parse,      per        backend: sled,    confirm ── SMTP
//!                           shutdown)  reply)      command)   log, group commit)
//!  operator ── HTTP ── admin (health, metrics, inventory, revoke, links) ── store
//! ```
//!
//! - [`app`]: the wiring; reads the whole configuration ([`app::config`]), refuses settings
//!   that cannot work together ([`app::requirements`], also used by `check-config`), builds
//!   every part from it and runs them; [`app::reload`]: `SIGHUP` applies a re-read
//!   configuration and its secrets to the running app.
//! - [`protocol`]: bytes ↔ requests and replies; no I/O. The contract is `protocol.md`.
//! - [`server`]: sockets (its own, or systemd's: [`server::activation`]), limits, timeouts,
//!   shutdown.
//! - [`service`]: the rules of each command.
//! - [`store`]: durable state behind one facade, [`store::Store`]; an `ok` is sent only after
//!   [`store::Store::commit`].
//! - [`domain`], [`apikey`]: the two value types the protocol carries.
//! - [`bridge`]: the Sectigo Certificate Manager client, policy and worker.
//! - [`config`]: what every section shares: [`config::ConfigError`] and secret loading
//!   ([`config::Secret`]); a leaf that imports nothing else from the crate.
//! - [`admin`]: the operator's HTTP face (health, Prometheus metrics, inventory, revoke,
//!   requeue, import, claim links); [`cli`] is its command-line client.
//! - [`confirm`]: claim confirmation e-mails with single-use confirm/revoke links.

pub mod acme;
pub mod admin;
pub mod apikey;
pub mod app;
pub mod bridge;
pub mod cli;
pub mod config;
pub mod confirm;
pub mod domain;
pub mod protocol;
pub mod server;
pub mod service;
pub mod store;

pub use app::App;
pub use app::Config;
