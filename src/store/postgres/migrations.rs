//! Schema migrations: a numbered list of SQL files, applied at start-up in one transaction
//! under an advisory lock, so that two instances starting together do not race (the second
//! waits, then finds everything applied). `schema_migrations` records what was applied.
//!
//! A database that holds a migration this binary does not know was upgraded by a newer
//! certline: this one refuses to start rather than write rows the newer schema may read
//! differently.

use super::sql;
use crate::store::StoreError;
use deadpool_postgres::GenericClient;

/// Every migration, in order; a new one is appended with the next number, never edited.
pub(super) const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "initial", include_str!("migrations/0001_initial.sql")),
    (
        2,
        "instances",
        include_str!("migrations/0002_instances.sql"),
    ),
];

/// The newest migration this binary knows.
pub(super) fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |(version, _, _)| *version)
}

/// The advisory lock key of `schema`'s migrations (one per schema, so tests in their own
/// schemas do not wait for each other).
const LOCK_KEY: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('certline:migrate:' || $1, 0))";

/// Creates `schema` if needed and applies the migrations it lacks. Returns how many were
/// applied.
pub(super) async fn apply(
    client: &mut deadpool_postgres::Client,
    schema: &str,
) -> Result<usize, StoreError> {
    let tx = client.transaction().await?;
    tx.execute(LOCK_KEY, &[&schema]).await?;
    // `schema` is a plain identifier (checked by PostgresConfig::validate).
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
             version     integer PRIMARY KEY,
             name        text NOT NULL,
             applied_at  timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await?;
    let newest: i32 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations"),
            &[],
        )
        .await?
        .get(0);
    if newest > latest() {
        return Err(newer_schema(schema, newest));
    }
    let mut applied = 0;
    for (version, name, text) in MIGRATIONS.iter().filter(|(v, _, _)| *v > newest) {
        tx.batch_execute(text).await.map_err(|e| {
            StoreError::Pool(format!(
                "applying schema migration {version} ({name}) to schema {schema} failed: {e}"
            ))
        })?;
        tx.execute(
            &format!("INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)"),
            &[version, name],
        )
        .await?;
        applied += 1;
    }
    tx.commit().await?;
    if applied > 0 {
        tracing::info!(
            schema,
            applied,
            version = latest(),
            "applied schema migrations"
        );
    }
    Ok(applied)
}

/// The newest migration recorded in the database (for the running check).
pub(super) async fn recorded<C: GenericClient>(client: &C) -> Result<i32, StoreError> {
    let row = sql::row(
        client,
        "SELECT coalesce(max(version), 0) FROM schema_migrations",
        &[],
    )
    .await?;
    Ok(row.map_or(0, |r| r.get(0)))
}

pub(super) fn newer_schema(schema: &str, found: i32) -> StoreError {
    StoreError::Pool(format!(
        "schema {schema} is at migration {found}, newer than this certline knows ({}): a newer \
         certline upgraded the database; run that version here too (downgrading the schema is \
         not supported)",
        latest()
    ))
}
