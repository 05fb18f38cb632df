//! What every layer's configuration section shares: the error a bad setting produces
//! ([`ConfigError`], in [`error`]) and how secrets are read and kept out of logs
//! ([`Secret`], [`load_secret`], in [`secret`]).
//!
//! This module is a leaf of the module graph: it imports nothing else from the crate, so any
//! layer can use it without depending on the layers above. Each section's type lives with the
//! layer that uses it; the whole file (`Config`), its validation and the cross-section
//! requirements are assembled in the wiring, [`crate::app::config`] and
//! [`crate::app::requirements`].

pub mod error;
pub mod secret;

pub use error::ConfigError;
pub use secret::{Secret, check_secret_source, load_secret};
