//! The holder index: for each registered domain, the keys that hold it.
//!
//! Key-domain entries (`D`) are keyed by key hash first, which serves the line protocol's
//! `list` but answers "who holds example.org?" only by scanning every entry. The inventory
//! pages through domains and needs that answer for each one, so this index keeps it:
//! `H` + normalised domain + `0x00` + key hash, written in the same batch as the `D` entry.
//! (A domain name never contains a NUL byte, so one domain's entries form one prefix.)

use super::claims::meta_key;
use super::{HOLDER, KEY_DOMAIN, SledStore, WriteBatch};
use crate::apikey::KeyHash;
use crate::store::StoreError;

/// Marks a database whose holder index is complete.
const HOLDER_INDEX_DONE: &[u8] = b"holder-index-v1";

/// Writes in one batch at most this many index entries while rebuilding, so rebuilding a
/// large database does not hold one huge batch in memory.
const REBUILD_BATCH: usize = 10_000;

/// The index entry saying `hash` holds `domain`.
pub(super) fn holder_key(domain: &str, hash: &KeyHash) -> Vec<u8> {
    let mut k = holder_prefix(domain);
    k.extend_from_slice(&hash.0);
    k
}

/// The prefix of every index entry of `domain`.
fn holder_prefix(domain: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + domain.len() + 32);
    k.push(HOLDER);
    k.extend_from_slice(domain.as_bytes());
    k.push(0);
    k
}

impl SledStore {
    /// The keys that hold `domain` now, in the order of their hashes.
    pub fn holders_of(&self, domain: &str) -> Result<Vec<KeyHash>, StoreError> {
        let prefix = holder_prefix(domain);
        let mut out = Vec::new();
        for entry in self.db.scan_prefix(&prefix) {
            let (k, _) = entry?;
            if let Ok(hash) = <[u8; 32]>::try_from(&k[prefix.len()..]) {
                out.push(KeyHash(hash));
            }
        }
        Ok(out)
    }

    /// Builds the index for databases written before it existed (once), and rebuilds it
    /// after an unclean stop: sled may then hold a key-domain entry of an unacknowledged
    /// registration without its index entry, or the other way round.
    pub(super) fn ensure_holder_index(&self, clean_stop: bool) -> Result<(), StoreError> {
        let done = meta_key(HOLDER_INDEX_DONE);
        if clean_stop && self.db.contains_key(&done)? {
            return Ok(());
        }
        let _guard = self.lock();
        let mut batch = WriteBatch::default();
        let mut pending = 0;
        for entry in self.db.scan_prefix([HOLDER]) {
            let (k, _) = entry?;
            batch.remove(k.to_vec());
            pending += 1;
            if pending == REBUILD_BATCH {
                self.write(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        let mut indexed = 0usize;
        for entry in self.db.scan_prefix([KEY_DOMAIN]) {
            let (k, _) = entry?;
            let Some(hash) = k.get(1..33).and_then(|h| <[u8; 32]>::try_from(h).ok()) else {
                continue;
            };
            let domain = String::from_utf8_lossy(&k[33..]);
            batch.insert(holder_key(&domain, &KeyHash(hash)), Vec::new());
            indexed += 1;
            pending += 1;
            if pending == REBUILD_BATCH {
                self.write(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        batch.insert(done, Vec::new());
        self.write(batch)?;
        tracing::info!(entries = indexed, "built the domain holder index");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ClaimCaps, DurabilityMode, Timing};
    use std::net::IpAddr;
    use std::time::Duration;

    #[test]
    fn the_index_follows_adds_and_removes_and_is_rebuilt_from_the_key_domain_entries() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let timing = Timing {
                relaxed_flush: Duration::from_secs(1),
                checkpoint: Duration::from_secs(3600),
            };
            let store = SledStore::open(dir.path(), DurabilityMode::Relaxed, timing).unwrap();
            let ip: IpAddr = "127.0.0.1".parse().unwrap();
            let [a, b] = [0, 1].map(|_| crate::apikey::ApiKey::generate().hash());
            let mut both = [a, b];
            both.sort_by_key(|h| h.0);
            for key in [&a, &b] {
                store
                    .create_key(key, None, &ClaimCaps::default(), ip, 0)
                    .unwrap();
            }
            let shared: crate::domain::Domain = "www.example.org".parse().unwrap();
            let only_a: crate::domain::Domain = "www.example.org:8443".parse().unwrap();
            store.add_domain(&a, &shared, ip, 0).unwrap();
            store.add_domain(&b, &shared, ip, 0).unwrap();
            store.add_domain(&a, &only_a, ip, 0).unwrap();
            store.add_domain(&b, &only_a, ip, 0).unwrap();
            store.remove_domain(&b, &only_a, ip, 0).unwrap();
            let holders = |store: &SledStore| {
                [shared.to_string(), only_a.to_string()].map(|d| {
                    store
                        .holders_of(&d)
                        .unwrap()
                        .iter()
                        .map(|h| h.0)
                        .collect::<Vec<_>>()
                })
            };
            let expected = [both.iter().map(|h| h.0).collect(), vec![a.0]];
            assert_eq!(holders(&store), expected);

            // A database without the index (older, or after a crash) gets it rebuilt.
            for entry in store.db.scan_prefix([HOLDER]) {
                store.db.remove(entry.unwrap().0).unwrap();
            }
            store.db.remove(meta_key(HOLDER_INDEX_DONE)).unwrap();
            assert!(holders(&store).iter().all(Vec::is_empty));
            store.ensure_holder_index(true).unwrap();
            assert_eq!(holders(&store), expected);
            store.close().await.unwrap();
        });
    }
}
