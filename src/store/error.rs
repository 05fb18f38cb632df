//! What can go wrong in the store, whichever backend holds the data.

use super::FlushError;
use thiserror::Error;

/// Store failures. All of them become `500 storage failure` on the wire.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("opening the database at {path}: {source}")]
    Open { path: String, source: ::sled::Error },
    #[error("database error: {0}")]
    Db(#[from] ::sled::Error),
    #[error("a stored record is corrupt: {0}")]
    Corrupt(#[from] postcard::Error),
    #[error(transparent)]
    Flush(#[from] FlushError),
    #[error("opening {path} for fsync: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL: {0}")]
    Pool(String),
    /// A record that cannot be copied (`certline migrate`, backups): what and where.
    #[error("{0}")]
    Transfer(String),
}
