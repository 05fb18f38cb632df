//! `certline migrate`: copies a whole store from one backend to the other (a data
//! directory to PostgreSQL, or back) with the store's transfer
//! ([`crate::store::transfer::copy`]). Runs with no server on either side: the data
//! directory is opened by this process alone (sled's file lock refuses a second one), and the
//! target must be empty.

use crate::app::config::Durability;
use crate::store::postgres::PostgresConfig;
use crate::store::transfer::{self, CopyError, Counts, Section};
use crate::store::{DurabilityMode, Store, StoreConfig, StoreError};
use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One side of a migration: `postgres` (the configuration file's `[store.postgres]`), or a
/// data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Postgres,
    Directory(PathBuf),
}

impl Place {
    /// `postgres`, or anything else as a directory.
    pub fn parse(text: &str) -> Place {
        if text == "postgres" {
            Place::Postgres
        } else {
            Place::Directory(PathBuf::from(text))
        }
    }

    fn describe(&self, pg: &PostgresConfig) -> String {
        match self {
            Place::Postgres => format!("PostgreSQL (schema {})", pg.schema),
            Place::Directory(dir) => dir.display().to_string(),
        }
    }
}

/// Only the `[store]` section of the configuration file: its `[store.postgres]` is read
/// whatever `backend` says, so the file of the deployment being moved (still `sled`) and the
/// file it will start with (`postgres`) both serve.
#[derive(Deserialize)]
struct StoreOnly {
    #[serde(default)]
    store: StoreConfig,
}

fn postgres_settings(config: &Path) -> anyhow::Result<PostgresConfig> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let file: StoreOnly =
        toml::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
    let pg = file.store.postgres.with_context(|| {
        format!(
            "{} has no [store.postgres] section: add one with url_env or url_file (and schema) naming the database to migrate to or from",
            config.display()
        )
    })?;
    pg.validate()?;
    Ok(pg)
}

/// Opens one side. `source`: a directory must hold a data directory already.
async fn open(place: &Place, pg: &PostgresConfig, source: bool) -> anyhow::Result<Store> {
    match place {
        Place::Postgres => Store::open_postgres(pg)
            .await
            .with_context(|| format!("connecting to {}", place.describe(pg))),
        Place::Directory(dir) => {
            if source && !dir.join("db").is_file() {
                anyhow::bail!(
                    "{} is not a certline data directory (it has no `db` file); give the directory the server ran with (`data_dir`, `--data`)",
                    dir.display()
                );
            }
            if !source && dir.exists() && !dir.join("db").is_file() {
                let has_files = std::fs::read_dir(dir)
                    .with_context(|| format!("reading {}", dir.display()))?
                    .next()
                    .is_some();
                if has_files {
                    anyhow::bail!(
                        "{} is not empty and not a certline data directory; give a new or empty directory to migrate into",
                        dir.display()
                    );
                }
            }
            let durability = Durability::default();
            Store::open(dir, DurabilityMode::Durable, durability.timing()).map_err(|e| match e {
                StoreError::Open { .. } => anyhow::anyhow!(
                    "{e}. If a certline server runs on {}, stop it first: only one process may open a data directory, and a migration needs it to itself",
                    dir.display()
                ),
                e => anyhow::Error::from(e).context(format!("opening {}", dir.display())),
            })
        }
    }
}

/// Copies everything from `from` to `to` (exactly one of them `postgres`, whose settings
/// are `config`'s `[store.postgres]`), showing progress on stderr. Returns the summary line.
pub async fn migrate(from: &Place, to: &Place, config: &Path) -> anyhow::Result<String> {
    match (from, to) {
        (Place::Postgres, Place::Directory(_)) | (Place::Directory(_), Place::Postgres) => {}
        _ => anyhow::bail!(
            "migrate copies between a data directory and PostgreSQL: one of --from and --to must be `postgres`, the other a directory"
        ),
    }
    let pg = postgres_settings(config)?;
    let source = open(from, &pg, true).await?;
    let target = open(to, &pg, false).await?;
    // Progress on stderr (indicatif draws nothing when stderr is not a terminal): first a
    // count of the source, so that the copy's bar has its total.
    let counting = ProgressBar::new_spinner();
    counting.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} counting the records: {pos}")
            .expect("a valid progress template"),
    );
    counting.enable_steady_tick(Duration::from_millis(200));
    let total = transfer::count(&source, |counts: &Counts| {
        counting.set_position(counts.total())
    })
    .await;
    counting.finish_and_clear();
    let total = match total {
        Ok(total) => total,
        Err(e) => {
            let _ = (source.close().await, target.close().await);
            return Err(anyhow::Error::from(e).context(format!(
                "reading {} failed; nothing was copied",
                from.describe(&pg)
            )));
        }
    };
    let bar = ProgressBar::new(total.total());
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed} [{wide_bar}] {pos}/{len} records copied ({percent}%, {eta} left), now {msg}",
        )
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let copied = transfer::copy(&source, &target, |counts: &Counts, section: Section| {
        bar.set_position(counts.total());
        bar.set_message(section.name());
    })
    .await;
    bar.finish_and_clear();
    let closed = (source.close().await, target.close().await);
    let counts = match copied {
        Ok(counts) => counts,
        Err(CopyError::TargetNotEmpty) => anyhow::bail!(
            "{} is not empty: migrate only into an empty store. Give a new data directory, or a new PostgreSQL schema ([store.postgres] schema) or database; nothing was copied",
            to.describe(&pg)
        ),
        Err(CopyError::Store(e)) => {
            return Err(anyhow::Error::from(e).context(format!(
                "copying from {} to {} failed part way: the target holds part of the data; empty it (a new directory or schema) and migrate again",
                from.describe(&pg),
                to.describe(&pg)
            )));
        }
    };
    closed.0.context("closing the source")?;
    closed.1.context("closing the target")?;
    Ok(format!(
        "migrated {} records from {} to {}: {}\n",
        counts.total(),
        from.describe(&pg),
        to.describe(&pg),
        counts.summary()
    ))
}
