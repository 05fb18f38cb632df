//! How many domains each key holds, kept in memory and derived from the key's `D` entries,
//! instead of a counter in the key record.
//!
//! A counter in the `K` record meant rewriting that record on every `add` and `remove`: one
//! more sled insert per request (sled 0.34 copies a whole leaf node for each insert; the
//! profile in BENCHMARKS.md put sled's node copies at the top), and a value that could
//! disagree with the entries after a crash (sled may write out part of an unacknowledged
//! batch), which then needed a recount at start-up. Here the count is what `list` shows by
//! construction: the number of the key's `D` entries, counted by one prefix scan the first
//! time the key is looked up, then kept exact by `add` and `remove` under the store's write
//! lock ([`DomainCounts::added`], [`DomainCounts::removed`]).
//!
//! The scan runs under the write lock too (see [`SledStore::domain_count_locked`]), so no
//! add or remove can race with it: once per key per process, a few microseconds for a key of
//! a few domains, about a third of a second for a key of a million. A failed log write undoes
//! changes behind the store's back (`durable`); every undo bumps the group commit's loss
//! count, and every count from before it is dropped and recounted.
//!
//! Memory: one entry per key looked up since start, up to [`MAX_COUNTED`]; past that, the
//! counts below [`CHEAP_TO_RECOUNT`] are dropped (recounting them is one short scan).
//!
//! The `domain_count` field that older versions kept up to date in the `K` record is not
//! read; records written now carry whatever count was current when they were written.

use super::SledStore;
use super::keyspace::key_domain;
use crate::apikey::KeyHash;
use crate::store::StoreError;
use std::collections::HashMap;
use std::sync::Mutex;

/// Keys whose counts are kept at once before the small ones are dropped.
const MAX_COUNTED: usize = 1 << 17;

/// Counts below this are dropped first when the map is full: recounting is one short scan.
const CHEAP_TO_RECOUNT: u64 = 256;

/// The counts of the keys looked up so far. See the module doc.
#[derive(Debug, Default)]
pub(super) struct DomainCounts {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The group commit's loss count the counts were taken under.
    losses: u64,
    counts: HashMap<KeyHash, u64>,
}

impl DomainCounts {
    /// The map, emptied if changes were undone since its counts were taken.
    fn current(&self, losses: u64) -> std::sync::MutexGuard<'_, Inner> {
        // Every critical section leaves the map consistent, so a poisoned lock is usable.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.losses != losses {
            inner.losses = losses;
            inner.counts.clear();
        }
        inner
    }

    /// The count of `hash`, if it was taken. `losses` is the group commit's loss count now.
    pub(super) fn get(&self, hash: &KeyHash, losses: u64) -> Option<u64> {
        self.current(losses).counts.get(hash).copied()
    }

    /// Records the count of `hash` found by a scan under the store's write lock.
    pub(super) fn set(&self, hash: &KeyHash, count: u64, losses: u64) {
        let mut inner = self.current(losses);
        if inner.counts.len() >= MAX_COUNTED && !inner.counts.contains_key(hash) {
            inner.counts.retain(|_, n| *n >= CHEAP_TO_RECOUNT);
        }
        inner.counts.insert(*hash, count);
    }

    /// A domain was registered under `hash` (call under the store's write lock).
    pub(super) fn added(&self, hash: &KeyHash) {
        self.adjust(hash, |n| n + 1);
    }

    /// A domain was unregistered from `hash` (call under the store's write lock).
    pub(super) fn removed(&self, hash: &KeyHash) {
        self.adjust(hash, |n| n.saturating_sub(1));
    }

    fn adjust(&self, hash: &KeyHash, f: impl FnOnce(u64) -> u64) {
        // Not `current`: a count taken before an undo is dropped by the next read anyway.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = inner.counts.get_mut(hash) {
            *n = f(*n);
        }
    }
}

impl SledStore {
    /// How many domains `hash` holds. Takes the write lock to count a key not counted yet.
    pub(super) fn domain_count(&self, hash: &KeyHash) -> Result<u64, StoreError> {
        if let Some(n) = self.domain_counts.get(hash, self.commits.losses()) {
            return Ok(n);
        }
        let _guard = self.lock();
        self.domain_count_locked(hash)
    }

    /// [`SledStore::domain_count`], for code that holds the write lock.
    pub(super) fn domain_count_locked(&self, hash: &KeyHash) -> Result<u64, StoreError> {
        // Under the write lock no undo runs either: the loss count read here stays current
        // for the whole scan.
        let losses = self.commits.losses();
        if let Some(n) = self.domain_counts.get(hash, losses) {
            return Ok(n);
        }
        let mut count = 0u64;
        for entry in self.db.scan_prefix(key_domain::prefix(hash)).keys() {
            entry?;
            count += 1;
        }
        self.domain_counts.set(hash, count, losses);
        Ok(count)
    }

    /// Whether `hash` holds any domain (one step of a scan; no count kept).
    pub(super) fn holds_domains(&self, hash: &KeyHash) -> Result<bool, StoreError> {
        match self.db.scan_prefix(key_domain::prefix(hash)).keys().next() {
            Some(entry) => entry.map(|_| true).map_err(Into::into),
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_adds_and_removes_and_an_undo_drops_them() {
        let counts = DomainCounts::default();
        let (a, b) = (KeyHash([1; 32]), KeyHash([2; 32]));
        assert_eq!(counts.get(&a, 0), None);
        counts.added(&a); // not counted yet: nothing to adjust
        assert_eq!(counts.get(&a, 0), None);
        counts.set(&a, 3, 0);
        counts.set(&b, 0, 0);
        counts.added(&a);
        counts.removed(&b); // never below zero
        assert_eq!((counts.get(&a, 0), counts.get(&b, 0)), (Some(4), Some(0)));
        counts.removed(&a);
        assert_eq!(counts.get(&a, 0), Some(3));
        // A failed log write undid changes: the loss count is now 1.
        assert_eq!(counts.get(&a, 1), None);
        assert_eq!(counts.get(&b, 1), None);
    }

    #[test]
    fn a_full_map_drops_the_counts_that_are_cheap_to_recount() {
        let counts = DomainCounts::default();
        let key = |i: usize| {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
            KeyHash(bytes)
        };
        counts.set(&key(0), CHEAP_TO_RECOUNT, 0);
        for i in 1..MAX_COUNTED {
            counts.set(&key(i), 1, 0);
        }
        counts.set(&key(MAX_COUNTED), 5, 0);
        assert_eq!(counts.get(&key(0), 0), Some(CHEAP_TO_RECOUNT), "kept");
        assert_eq!(counts.get(&key(1), 0), None, "dropped");
        assert_eq!(counts.get(&key(MAX_COUNTED), 0), Some(5));
    }
}
