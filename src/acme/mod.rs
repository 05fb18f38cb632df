//! Sectigo ACME: makes an API key worth a certificate for exactly its own names.
//!
//! With `[sectigo.acme]`, certline keeps one SCM ACME account per API key (or one shared
//! account) holding the key's eligible domains, and can hand the account's External Account
//! Binding to the host (`command acme apikey K`), which then runs certbot against Sectigo's
//! ACME server.
//!
//! * [`config`]: the `[sectigo.acme]` section.
//! * [`scm`]: SCM's ACME account API on the bridge's client.
//! * [`eligibility`]: which domains may be mapped (one function decides "DCV validated").
//! * [`worker`]: the durable, per-key reconciliation against SCM.

pub mod config;
pub mod eligibility;
pub mod scm;
pub mod worker;

pub use config::{AccountModel, AcmeConfig};
pub use scm::AcmeApi;
pub use worker::AcmeWorker;
