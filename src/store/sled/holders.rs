//! The holder index: for each registered domain, the keys that hold it.
//!
//! Key-domain entries (`D`) are keyed by key hash first, which serves the line protocol's
//! `list` but answers "who holds example.org?" only by scanning every entry. The inventory
//! pages through domains and needs that answer for each one, so this index keeps it:
//! `H` + normalised domain + `0x00` + key hash ([`super::keyspace::holder`]), written in the
//! same batch as the `D` entry.

use super::keyspace::{holder, key_domain, meta};
use super::{SledStore, WriteBatch};
use crate::apikey::KeyHash;
use crate::store::StoreError;

/// The keys that hold `domain` in `db`, in the order of their hashes.
pub(super) fn holders_in(db: &sled::Db, domain: &str) -> Result<Vec<KeyHash>, StoreError> {
    let mut out = Vec::new();
    for entry in db.scan_prefix(holder::prefix(domain)) {
        let (k, _) = entry?;
        if let Some(hash) = holder::decode(&k) {
            out.push(hash);
        }
    }
    Ok(out)
}

/// Writes in one batch at most this many index entries while rebuilding, so rebuilding a
/// large database does not hold one huge batch in memory.
const REBUILD_BATCH: usize = 10_000;

impl SledStore {
    /// The keys that hold `domain` now, in the order of their hashes.
    pub async fn holders_of(&self, domain: &str) -> Result<Vec<KeyHash>, StoreError> {
        holders_in(&self.db, domain)
    }

    /// Builds the index for databases written before it existed (once), and rebuilds it
    /// after an unclean stop: sled may then hold a key-domain entry of an unacknowledged
    /// registration without its index entry, or the other way round.
    pub(super) fn ensure_holder_index(&self, clean_stop: bool) -> Result<(), StoreError> {
        let done = meta::encode(meta::HOLDER_INDEX_DONE);
        if clean_stop && self.db.contains_key(&done)? {
            return Ok(());
        }
        let _guard = self.lock();
        let mut batch = WriteBatch::default();
        let mut pending = 0;
        for entry in self.db.scan_prefix([holder::PREFIX]) {
            let (k, _) = entry?;
            batch.remove(k.to_vec());
            pending += 1;
            if pending == REBUILD_BATCH {
                self.write(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        let mut indexed = 0usize;
        for entry in self.db.scan_prefix([key_domain::PREFIX]) {
            let (k, _) = entry?;
            let Some((hash, domain)) = key_domain::decode(&k) else {
                continue;
            };
            batch.insert(holder::encode(&domain, &hash), Vec::new());
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
    use super::super::test_support::open_in;
    use super::*;
    use crate::store::{ClaimCaps, DurabilityMode};
    use std::net::IpAddr;

    #[test]
    fn the_index_follows_adds_and_removes_and_is_rebuilt_from_the_key_domain_entries() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let store = open_in(dir.path(), DurabilityMode::Relaxed);
            let ip: IpAddr = "127.0.0.1".parse().unwrap();
            let [a, b] = [0, 1].map(|_| crate::apikey::ApiKey::generate().hash());
            let mut both = [a, b];
            both.sort_by_key(|h| h.0);
            for key in [&a, &b] {
                store
                    .create_key(key, None, &ClaimCaps::default(), ip, 0)
                    .await
                    .unwrap();
            }
            let shared: crate::domain::Domain = "www.example.org".parse().unwrap();
            let only_a: crate::domain::Domain = "www.example.org:8443".parse().unwrap();
            store.add_domain(&a, &shared, ip, 0).await.unwrap();
            store.add_domain(&b, &shared, ip, 0).await.unwrap();
            store.add_domain(&a, &only_a, ip, 0).await.unwrap();
            store.add_domain(&b, &only_a, ip, 0).await.unwrap();
            store.remove_domain(&b, &only_a, ip, 0).await.unwrap();
            let holders = async |store: &SledStore| {
                let mut out = Vec::new();
                for d in [shared.to_string(), only_a.to_string()] {
                    let keys = store.holders_of(&d).await.unwrap();
                    out.push(keys.iter().map(|h| h.0).collect::<Vec<_>>());
                }
                out
            };
            let expected = [both.iter().map(|h| h.0).collect(), vec![a.0]];
            assert_eq!(holders(&store).await, expected);

            // A database without the index (older, or after a crash) gets it rebuilt.
            for entry in store.db.scan_prefix([holder::PREFIX]) {
                store.db.remove(entry.unwrap().0).unwrap();
            }
            store
                .db
                .remove(meta::encode(meta::HOLDER_INDEX_DONE))
                .unwrap();
            assert!(holders(&store).await.iter().all(Vec::is_empty));
            store.ensure_holder_index(true).unwrap();
            assert_eq!(holders(&store).await, expected);
            store.close().await.unwrap();
        });
    }
}
