//! The domains registered under each key (`D`, with the holder index `H` beside it) and
//! each domain's own record (`N`): registering, unregistering, and paging through a key's
//! domains for `list`.

use super::keyspace::{api_key, domain as domain_record, holder, key_domain};
use super::{SledStore, WriteBatch, acme_state, bridge_state, key_index};
use crate::apikey::KeyHash;
use crate::domain::Domain;
use crate::store::records::{AuditKind, DomainRecord, KeyDomain, KeyRecord, Record, UnixTime};
use crate::store::{AddOutcome, StoreError};
use std::net::IpAddr;

/// The most names [`SledStore::key_domains`] makes room for before it reads any: a `list`
/// page holds a few dozen; larger asks grow as they read.
const MAX_PREALLOCATED: usize = 256;

impl SledStore {
    /// Registers `domain` under a key the caller has checked exists and is not revoked.
    pub async fn add_domain(
        &self,
        hash: &KeyHash,
        domain: &Domain,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<AddOutcome, StoreError> {
        let name = domain.to_string();
        let kd_key = key_domain::encode(hash, &name);
        let _guard = self.lock();
        if self.db.contains_key(&kd_key)? {
            return Ok(AddOutcome::AlreadyRegistered);
        }
        // The key's domain count is derived from its entries ([`super::domain_counts`]): the
        // key record is read here, not rewritten.
        let Some(key) = self.get::<KeyRecord>(&api_key::encode(hash))? else {
            return Ok(AddOutcome::UnknownKey);
        };
        let mut batch = WriteBatch::default();
        batch.insert(kd_key, KeyDomain { added_at: now }.encode());
        batch.insert(holder::encode(&name, hash), Vec::new());
        let d_key = domain_record::encode(&name);
        let new_domain = !self.db.contains_key(&d_key)?;
        // A domain is queued for the bridge in the same batch that registers it, so an
        // acknowledged registration can never miss the bridge. Sectigo knows host names, not
        // ports: `www.example.org:8443` is bridged as `www.example.org`.
        let host = domain.host();
        let existing = if self.bridge_enabled() {
            self.read_bridge(host)?
        } else {
            None
        };
        let queued = self.bridge_enabled() && existing.is_none();
        // A confirmed key adding a domain an unconfirmed key holds lifts the wait for it.
        let released = match existing {
            Some(record) if key.confirmed_at.is_some() => {
                bridge_state::mark_key_confirmed(&mut batch, host, record, now)
            }
            _ => false,
        };
        if new_domain {
            let record = DomainRecord {
                first_added_at: now,
            };
            batch.insert(d_key, record.encode());
        }
        if queued {
            bridge_state::queue_new_domain(&mut batch, host, now, key.confirmed_at.is_some());
        }
        let kind = AuditKind::DomainAdded {
            domain: name.clone(),
        };
        self.audit(&mut batch, now, ip, hash, kind)?;
        acme_state::touch_key(self, &mut batch, hash, now)?;
        self.write(batch)?;
        self.acme_wakeup.notify_one();
        self.domain_counts.added(hash);
        self.key_index.inserted(hash, name.as_bytes());
        if queued || released {
            self.bridge_wakeup.notify_one();
        }
        Ok(AddOutcome::Added)
    }

    /// Unregisters `domain` from a key. Returns whether it was registered. The domain's own
    /// record (and its Sectigo state) stays: other keys may hold it, and certline never
    /// deletes from Sectigo.
    pub async fn remove_domain(
        &self,
        hash: &KeyHash,
        domain: &Domain,
        ip: IpAddr,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let name = domain.to_string();
        let kd_key = key_domain::encode(hash, &name);
        let _guard = self.lock();
        if !self.db.contains_key(&kd_key)? {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        batch.remove(kd_key);
        batch.remove(holder::encode(&name, hash));
        let kind = AuditKind::DomainRemoved {
            domain: name.clone(),
        };
        self.audit(&mut batch, now, ip, hash, kind)?;
        acme_state::touch_key(self, &mut batch, hash, now)?;
        self.write(batch)?;
        self.acme_wakeup.notify_one();
        self.domain_counts.removed(hash);
        self.key_index.removed(hash, name.as_bytes());
        Ok(true)
    }

    /// When `domain` was registered under the key, if it is.
    pub async fn key_domain(
        &self,
        hash: &KeyHash,
        domain: &Domain,
    ) -> Result<Option<KeyDomain>, StoreError> {
        self.get(&key_domain::encode(hash, domain.to_string()))
    }

    /// Up to `limit` of the domains registered under a key, in lexicographic order, skipping
    /// `offset`. Deep offsets start from the key's rank index ([`super::key_index`]) instead
    /// of reading every entry before them.
    pub async fn key_domains(
        &self,
        hash: &KeyHash,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let prefix = key_domain::prefix(hash);
        let start = self.page_start(hash, &prefix, offset as u64);
        let from = key_domain::encode(hash, start.from.as_deref().unwrap_or_default());
        let mut names = Vec::with_capacity(limit.min(MAX_PREALLOCATED));
        let entries = self
            .db
            .range(from..)
            .take_while(|entry| match entry {
                Ok((k, _)) => k.starts_with(&prefix),
                Err(_) => true,
            })
            .skip(start.skip as usize)
            .take(limit);
        for entry in entries {
            names.push(key_domain::name(&entry?.0));
        }
        Ok(names)
    }

    /// Where the page at `offset` of a key starts; builds the key's rank index (one scan of
    /// its domains) when a deep page finds none.
    fn page_start(&self, hash: &KeyHash, prefix: &[u8], offset: u64) -> key_index::Start {
        if let Some(start) = self.key_index.start(hash, offset, self.commits.losses()) {
            return start;
        }
        let from_first = key_index::Start {
            from: None,
            skip: offset,
        };
        let ticket = self.key_index.begin_build(hash, self.commits.losses());
        let mut posts = Vec::new();
        for (rank, entry) in self.db.scan_prefix(prefix).keys().enumerate() {
            let Ok(k) = entry else {
                return from_first; // the scan that follows reports the error
            };
            if (rank as u64).is_multiple_of(key_index::SPACING) {
                posts.push(Box::<[u8]>::from(key_domain::name_bytes(&k)));
            }
        }
        let post = ((offset / key_index::SPACING) as usize).min(posts.len().saturating_sub(1));
        let start = match posts.get(post) {
            Some(name) => key_index::Start {
                from: Some(name.clone()),
                skip: offset - post as u64 * key_index::SPACING,
            },
            None => from_first,
        };
        self.key_index
            .finish_build(hash, ticket, posts, self.commits.losses());
        start
    }

    /// The shared record of a domain, if any key registered it.
    pub async fn domain(&self, name: &str) -> Result<Option<DomainRecord>, StoreError> {
        self.get(&domain_record::encode(name))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{key_with_domains, open};

    #[tokio::test]
    async fn a_keys_domains_come_in_pages_of_at_most_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let names = ["e.org", "a.org:8443", "c.org", "b.org", "d.org"];
        let hash = key_with_domains(&store, &names).await;
        // Another key's domains are not part of this key's pages.
        key_with_domains(&store, &["0.org", "f.org"]).await;
        let page = |offset, limit| store.key_domains(&hash, offset, limit);
        assert_eq!(
            page(0, 10).await.unwrap(),
            ["a.org:8443", "b.org", "c.org", "d.org", "e.org"]
        );
        assert_eq!(page(1, 2).await.unwrap(), ["b.org", "c.org"]);
        assert_eq!(page(4, 2).await.unwrap(), ["e.org"]);
        assert!(page(5, 2).await.unwrap().is_empty());
        assert!(page(0, 0).await.unwrap().is_empty());
    }
}
