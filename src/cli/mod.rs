//! The operator's command-line client for the admin API (`certline domains`, `keys`,
//! `revoke`, `confirm`, `requeue`, `import`, `backup`), and `migrate` and `restore`, which
//! open the stores themselves (no server may run on them). `main.rs` only parses arguments
//! and calls in here.
//!
//! Where the admin API is and its token come from, first found wins: the flags
//! (`--admin-url`, `--admin-token`), the environment (`CERTLINE_ADMIN_URL`,
//! `CERTLINE_ADMIN_TOKEN`, read by clap), then the `--config` file's `[admin]` section
//! (`listen` for the URL, `token_env`/`token_file` for the token).

pub mod backup;
pub mod check;
mod client;
mod commands;
pub mod migrate;
mod table;

pub use client::{AdminClient, CliError, Endpoint};
pub use commands::ImportReport;
pub use commands::{DomainFilter, confirm, domains, import, keys, requeue, revoke};
pub use table::Format;
