//! Waking the bridge and ACME workers when work is queued, on every instance.
//!
//! A write that queues work sends `pg_notify` inside its transaction (delivered at COMMIT,
//! never for a rolled-back change) and, after the commit, wakes this instance's worker
//! directly. A dedicated connection per instance LISTENs, so the other instances' workers
//! wake too. While that connection is down the workers are woken every [`POLL`] instead, and
//! the listener reconnects; a missed notification costs at most that delay.

use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

/// How often the workers are woken while the listener connection is down, and how often it
/// is reconnected.
pub(super) const POLL: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct Wakeups {
    pub(super) bridge: Notify,
    pub(super) acme: Notify,
}

/// The NOTIFY channels of one schema.
#[derive(Clone)]
pub(super) struct Channels {
    pub(super) bridge: String,
    pub(super) acme: String,
}

impl Channels {
    pub(super) fn new(schema: &str) -> Self {
        Self {
            bridge: format!("certline_bridge_{schema}"),
            acme: format!("certline_acme_{schema}"),
        }
    }
}

/// Runs the listener until `stop`: LISTEN on both channels, wake the matching worker per
/// notification; on a lost connection, poll and reconnect.
pub(super) async fn listen(
    config: tokio_postgres::Config,
    tls: super::tls::Connector,
    channels: Channels,
    wakeups: Arc<Wakeups>,
    stop: CancellationToken,
) {
    // Whether the listener was down at the last attempt: one warning per outage.
    let mut down = false;
    while !stop.is_cancelled() {
        match listen_once(&config, &tls, &channels, &wakeups, &stop, &mut down).await {
            Ok(()) => return,
            Err(e) => {
                if !down {
                    tracing::warn!(error = %e, "the PostgreSQL notification listener is down; polling every second until it reconnects");
                    down = true;
                }
            }
        }
        // Whatever was notified while the listener was down is found by this poll.
        wakeups.bridge.notify_one();
        wakeups.acme.notify_one();
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One listener connection's life. `Ok` only when stopped.
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &super::tls::Connector,
    channels: &Channels,
    wakeups: &Wakeups,
    stop: &CancellationToken,
    down: &mut bool,
) -> Result<(), String> {
    let (client, mut connection) = config
        .connect(tls.clone())
        .await
        .map_err(|e| e.to_string())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let driver = tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            let ended = message.is_err();
            if tx.send(message).is_err() || ended {
                break;
            }
        }
    });
    let listen = format!("LISTEN {}; LISTEN {};", channels.bridge, channels.acme);
    let subscribe = client.batch_execute(&listen);
    let result = async {
        subscribe.await.map_err(|e| e.to_string())?;
        if std::mem::take(down) {
            tracing::info!("the PostgreSQL notification listener is back");
        }
        // Anything queued before LISTEN took effect.
        wakeups.bridge.notify_one();
        wakeups.acme.notify_one();
        loop {
            tokio::select! {
                message = rx.recv() => match message {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if n.channel() == channels.bridge {
                            wakeups.bridge.notify_one();
                        } else if n.channel() == channels.acme {
                            wakeups.acme.notify_one();
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the connection closed".to_owned()),
                },
                _ = stop.cancelled() => return Ok(()),
            }
        }
    }
    .await;
    driver.abort();
    result
}
