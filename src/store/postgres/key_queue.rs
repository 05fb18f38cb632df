//! One key's writes wait for each other in this process, and the ones that waited commit
//! together: a group commit per key.
//!
//! Every write to a key locks its row (`SELECT … FOR UPDATE`), so concurrent writes of one key
//! run one after another whatever happens. Left to the database, each would hold a pooled
//! connection while it waits for the row and pay a `COMMIT` (a WAL flush) of its own: a
//! client pipelining a thousand `add`s for one key would take every connection of the pool
//! and run into the pool's wait limit, one fsync per domain. Here, a write of `add` or
//! `remove` joins its stripe's queue; whoever holds the stripe runs everything queued (up to
//! [`MAX_BATCH`]) in ONE transaction, in arrival order, and answers each write once that
//! transaction committed. Each write still sees the ones before it (they run in order in the
//! same transaction), so idempotence and the key's count are exactly as one by one. A
//! failure fails the whole batch (nothing in it committed); a deadlock or serialisation
//! failure runs it again ([`super::in_tx`]). Other keys go on in parallel; the row lock still
//! orders writes between instances.
//!
//! Striped rather than one queue per key: a fixed array, no map to grow or prune; keys that
//! share a stripe share its transactions.

use super::PgStore;
use crate::apikey::KeyHash;
use crate::domain::Domain;
use crate::store::{AddOutcome, StoreError, UnixTime};
use std::net::IpAddr;
use std::sync::Mutex;
use tokio::sync::{MutexGuard, oneshot};

/// How many stripes: many more than the pool's connections, so that unrelated keys rarely
/// share one.
const STRIPES: usize = 1024;

/// The most writes one transaction carries.
pub(super) const MAX_BATCH: usize = 512;

/// A write that can join a key's batch.
#[derive(Debug, Clone)]
pub(super) enum KeyWrite {
    Add {
        domain: Domain,
        ip: IpAddr,
        now: UnixTime,
    },
    Remove {
        domain: Domain,
        ip: IpAddr,
        now: UnixTime,
    },
}

/// What one write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyWriteOutcome {
    Added(AddOutcome),
    Removed(bool),
}

type Reply = oneshot::Sender<Result<KeyWriteOutcome, String>>;

struct Stripe {
    /// Held by whoever runs the stripe's batch.
    turn: tokio::sync::Mutex<()>,
    /// Writes waiting for the next batch, in arrival order.
    waiting: Mutex<Vec<(KeyHash, KeyWrite, Reply)>>,
}

/// The queues (see the module docs).
pub(super) struct KeyQueue {
    stripes: Box<[Stripe]>,
}

impl KeyQueue {
    pub(super) fn new() -> Self {
        Self {
            stripes: (0..STRIPES)
                .map(|_| Stripe {
                    turn: tokio::sync::Mutex::new(()),
                    waiting: Mutex::new(Vec::new()),
                })
                .collect(),
        }
    }

    fn stripe(&self, hash: &KeyHash) -> &Stripe {
        // The hash is uniformly distributed: its first bytes pick the stripe.
        &self.stripes[u16::from_le_bytes([hash.0[0], hash.0[1]]) as usize % STRIPES]
    }

    /// Waits until this process runs no other write of `hash`'s stripe, for writes that do
    /// not batch (claims, revocations); hold the guard for the whole transaction.
    pub(super) async fn turn(&self, hash: &KeyHash) -> MutexGuard<'_, ()> {
        self.stripe(hash).turn.lock().await
    }

    /// Runs `write` of key `hash` in its stripe's next batch and returns what it did once
    /// that batch committed.
    pub(super) async fn write(
        &self,
        store: &PgStore,
        hash: &KeyHash,
        write: KeyWrite,
    ) -> Result<KeyWriteOutcome, StoreError> {
        let stripe = self.stripe(hash);
        let (reply, mut done) = oneshot::channel();
        lock(&stripe.waiting).push((*hash, write, reply));
        loop {
            let _turn = stripe.turn.lock().await;
            // A batch run while we waited for the turn may have carried our write.
            if let Ok(result) = done.try_recv() {
                return result.map_err(StoreError::Pool);
            }
            let batch: Vec<_> = {
                let mut waiting = lock(&stripe.waiting);
                let n = waiting.len().min(MAX_BATCH);
                waiting.drain(..n).collect()
            };
            let writes: Vec<(KeyHash, KeyWrite)> =
                batch.iter().map(|(h, w, _)| (*h, w.clone())).collect();
            let outcome = store.run_key_writes(&writes).await;
            match outcome {
                Ok(outcomes) => {
                    for ((_, _, reply), outcome) in batch.into_iter().zip(outcomes) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    for (_, _, reply) in batch {
                        let _ = reply.send(Err(text.clone()));
                    }
                }
            }
            // Ours was in this batch unless more than MAX_BATCH were ahead of it.
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_of_one_stripe_wait_for_each_other_and_other_stripes_do_not() {
        let queue = KeyQueue::new();
        let a = crate::apikey::ApiKey::generate().hash();
        let mut b = crate::apikey::ApiKey::generate().hash();
        while std::ptr::eq(queue.stripe(&b), queue.stripe(&a)) {
            b = crate::apikey::ApiKey::generate().hash();
        }
        let held = queue.turn(&a).await;
        let same = tokio::time::timeout(std::time::Duration::from_millis(50), queue.turn(&a));
        assert!(same.await.is_err(), "a second write of the key went ahead");
        let other = tokio::time::timeout(std::time::Duration::from_millis(50), queue.turn(&b));
        assert!(other.await.is_ok(), "another key waited");
        drop(held);
        let again = tokio::time::timeout(std::time::Duration::from_millis(50), queue.turn(&a));
        assert!(again.await.is_ok(), "the key stayed locked");
    }
}
