//! A typed async client for the parts of the Sectigo Certificate Manager (SCM) REST API that
//! certline uses: the domain inventory, CT-log monitoring and Domain Control Validation (DCV).
//!
//! Shapes, paths and codes follow `shared/reference/sectigo-scm-api.md`. Three things shape
//! the design:
//!
//! * **Every failure is classified** ([`SectigoError`]) so the worker can decide without
//!   string matching: retry later (transient and undecodable responses), stop everything
//!   (credentials), or record Sectigo's `code`/`description` as final for that step.
//! * **Success bodies are parsed only where SCM sends one.** Create answers `201` with a
//!   `Location` header and no body; monitoring answers `200` with no body. Parsing those is
//!   the classic bug in other clients (python-cert_manager #26).
//! * **Secrets stay out of text.** Passwords and tokens live in [`Secret`]s and in header
//!   values marked sensitive; errors and logs carry paths, statuses and Sectigo's own
//!   messages only. Redirects are not followed, because the `password` header would be
//!   forwarded to wherever the redirect points.
//!
//! The module is split by concern: [`error`] (how failures are sorted), [`types`] (the wire
//! shapes and vocabularies), [`response`] (what an exchange returned, read once for both
//! callers), [`auth`] (header login and the OAuth2 token cache), [`share`] (this instance's
//! share of the deployment's request budget) and [`client`] (the request plumbing and one
//! method per endpoint).

pub mod auth;
pub mod client;
pub mod error;
pub mod response;
pub mod share;
pub mod types;

pub use crate::config::secret::Secret;
pub use auth::Credentials;
pub use client::{ClientOptions, MAX_PAGE_SIZE, SectigoClient};
pub use error::{
    ApiErrorBody, CODE_DOMAIN_EXISTS, CODE_DOMAIN_UNKNOWN, SectigoError, TransientKind,
};
pub use types::*;
