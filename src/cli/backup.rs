//! `certline backup FILE` (an online backup of a running server on the embedded store,
//! through the admin API's `GET /api/backup`) and `certline restore FILE --data DIR` (into a
//! new data directory, no server needed). The format and why the copy is consistent:
//! [`crate::store::backup`].
//!
//! A backup is written to a temporary file beside FILE, synced, read back whole and checked
//! (its checksum and counts), and only then renamed to FILE: an interrupted or failed
//! backup never leaves a file that looks whole, and an older FILE stays as it was.

use super::AdminClient;
use super::client::error_chain;
use crate::store::backup::{self, BackupError};
use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn spinner(template: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template(template).expect("a valid progress template"));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Removes the temporary file unless the backup reached its place.
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Takes a backup of the server `client` talks to into `file`; returns the summary line.
pub async fn backup(client: &AdminClient, file: &Path) -> anyhow::Result<String> {
    let name = file
        .file_name()
        .with_context(|| format!("{} is not a file name", file.display()))?;
    if file.is_dir() {
        anyhow::bail!(
            "{} is a directory: give the name of the backup file to write",
            file.display()
        );
    }
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut response = client.get_stream(&["api", "backup"]).await?;
    let mut partial = Partial(Some(tmp.clone()));
    let out = std::fs::File::create(&tmp).with_context(|| {
        format!(
            "creating {} (the backup is written beside {} first)",
            tmp.display(),
            file.display()
        )
    })?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    let bar = spinner("{spinner} {elapsed} {bytes} received");
    let received = async {
        let mut bytes = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            anyhow::anyhow!(
                "the connection to {} broke during the backup ({}); nothing was kept: run `certline backup` again",
                client.base_url(),
                error_chain(&e)
            )
        })? {
            out.write_all(&chunk)
                .with_context(|| format!("writing {}", tmp.display()))?;
            bytes += chunk.len() as u64;
            bar.set_position(bytes);
        }
        Ok::<_, anyhow::Error>(bytes)
    }
    .await;
    bar.finish_and_clear();
    let bytes = received?;
    let out = out
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", tmp.display()))?;
    out.sync_all()
        .with_context(|| format!("syncing {}", tmp.display()))?;
    drop(out);
    let (_, trailer) = match backup::verify(&tmp) {
        Ok(found) => found,
        Err(e @ BackupError::Server(_)) => {
            return Err(anyhow::Error::from(e)
                .context(format!("no backup was written to {}", file.display())));
        }
        Err(e) => {
            return Err(anyhow::Error::from(e).context(format!(
                "what {} sent is not a whole backup; nothing was written to {}: run `certline backup` again",
                client.base_url(),
                file.display()
            )));
        }
    };
    std::fs::rename(&tmp, file)
        .with_context(|| format!("renaming {} to {}", tmp.display(), file.display()))?;
    partial.0 = None;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(format!(
        "backed up {} records to {} ({bytes} bytes, SHA-256 {}): {}\n",
        trailer.total_items(),
        file.display(),
        trailer.sha256,
        trailer.summary()
    ))
}

/// Restores the backup `file` into PostgreSQL (the `[store.postgres]` of `config`, an empty
/// schema): into a scratch data directory under the system's temporary directory first,
/// then `certline migrate` from there (items are backend-neutral; the changes made during
/// the backup need the sled log replay to be applied). The scratch directory is removed.
pub async fn restore_to_postgres(file: &Path, config: &Path) -> anyhow::Result<String> {
    // A bad file fails before anything is written anywhere.
    backup::verify(file)?;
    let scratch = std::env::temp_dir().join(format!(
        "certline-restore-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    ));
    let result = async {
        let restored = restore(file, &scratch).await?;
        let first = restored.lines().next().unwrap_or_default().to_owned();
        let migrated = super::migrate::migrate(
            &super::migrate::Place::Directory(scratch.clone()),
            &super::migrate::Place::Postgres,
            config,
        )
        .await?;
        Ok::<_, anyhow::Error>(format!("{first}\n{migrated}"))
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Restores the backup `file` into the new (or empty) data directory `data`; returns the
/// summary line.
pub async fn restore(file: &Path, data: &Path) -> anyhow::Result<String> {
    let bar = spinner("{spinner} {elapsed} {pos} records restored");
    let restored = backup::restore(file, data, |n| bar.set_position(n)).await;
    bar.finish_and_clear();
    let trailer = restored?;
    Ok(format!(
        "restored {} records from {} into {} (the store as of {}): {}\nstart the server with --data {} (or data_dir)\n",
        trailer.total_items(),
        file.display(),
        data.display(),
        trailer.finished_at,
        trailer.summary(),
        data.display(),
    ))
}
