//! Which instances share the database now: each one's heartbeat in the `instances` table.
//!
//! What several instances spend together (the Sectigo request budget, `[sectigo]
//! max_requests_per_second` and `max_concurrency`) is configured for the whole deployment,
//! and each instance takes its share: the budget divided by the live instances. So every
//! instance upserts its row (its `[store.postgres] instance` name) every heartbeat, with
//! `last_seen` from the database's clock (`now()`), so that hosts whose clocks disagree still
//! agree on who is live; counts the rows seen within [`WINDOW_BEATS`] heartbeats; and
//! publishes the count on a watch channel the Sectigo client follows. A clean shutdown
//! deletes the row at once ([`leave`]); an instance that died (kill -9, a lost machine)
//! stops counting after the window.
//!
//! While the database is unreachable the last count stays: such an instance takes no bridge
//! work either (the outbox and its leases are in the database), so it spends nothing.

use super::sql;
use crate::store::StoreError;
use deadpool_postgres::GenericClient;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// An instance is live while its heartbeat is at most this many heartbeats old: one late or
/// lost beat (a slow statement, a reconnect) does not make it look dead.
pub(super) const WINDOW_BEATS: u32 = 3;

/// Rows not seen for this long are deleted by any instance's heartbeat: instances that died
/// long ago (the default names carry a process id, so each restart leaves a new row).
const FORGET_AFTER: &str = "1 day";

/// One instance's heartbeat settings.
#[derive(Clone)]
pub(super) struct Heartbeat {
    /// This instance's name (`[store.postgres] instance`).
    pub(super) name: String,
    /// How often the row is written.
    pub(super) interval: Duration,
}

impl Heartbeat {
    /// How long a heartbeat keeps an instance live.
    pub(super) fn window(&self) -> Duration {
        self.interval * WINDOW_BEATS
    }

    /// Writes this instance's row now and counts the live instances (itself included, even
    /// when its own write is older than the window, as it plainly runs).
    pub(super) async fn beat<C: GenericClient>(&self, client: &C) -> Result<usize, StoreError> {
        sql::execute(
            client,
            "INSERT INTO instances (name, started_at, last_seen) VALUES ($1, now(), now())
             ON CONFLICT (name) DO UPDATE SET last_seen = now()",
            &[&self.name],
        )
        .await?;
        sql::execute(
            client,
            &format!("DELETE FROM instances WHERE last_seen < now() - interval '{FORGET_AFTER}'"),
            &[],
        )
        .await?;
        let window = self.window().as_secs_f64();
        let row = sql::row(
            client,
            "SELECT count(*) FROM instances
             WHERE last_seen > now() - make_interval(secs => $1) OR name = $2",
            &[&window, &self.name],
        )
        .await?;
        let live = row.map_or(1, |r| r.get::<_, i64>(0));
        Ok(usize::try_from(live).unwrap_or(usize::MAX).max(1))
    }
}

/// Beats every interval until `stop`, publishing the live count on `live` when it changes.
/// Errors keep the last count (see the module docs); one warning per outage.
pub(super) async fn run(
    pool: deadpool_postgres::Pool,
    heartbeat: Heartbeat,
    live: watch::Sender<usize>,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(heartbeat.interval) => {}
            _ = stop.cancelled() => return,
        }
        let counted = match pool.get().await {
            Ok(client) => heartbeat.beat(&client).await,
            Err(e) => Err(StoreError::Pool(e.to_string())),
        };
        match counted {
            Ok(count) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("the instance heartbeat is written again");
                }
                live.send_if_modified(|seen| {
                    let changed = *seen != count;
                    *seen = count;
                    changed
                });
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, instances = *live.borrow(), "writing the instance heartbeat failed; keeping the last count of live instances until it works again");
                    failing = true;
                }
            }
        }
    }
}

/// Deletes this instance's row (a clean shutdown): the others take its share at their next
/// heartbeat instead of after the window.
pub(super) async fn leave<C: GenericClient>(client: &C, name: &str) -> Result<(), StoreError> {
    sql::execute(client, "DELETE FROM instances WHERE name = $1", &[&name]).await?;
    Ok(())
}
