//! The sled side of moving a store ([`crate::store::transfer`]): every record as an [`Item`],
//! page by page in key order, and an import into an empty store through the write-ahead log
//! (each call one [`WriteBatch`], so the caller's `commit` makes it durable like any write).

use super::keyspace::{
    acme_key, acme_outbox, api_key, audit, bridge, bridge_outbox, domain, email_index, holder,
    key_domain, link_token, mail_outbox, meta, new_emails,
};
use super::{SledStore, WriteBatch};
use crate::store::records::Record;
use crate::store::transfer::{ExportCursor, Item, Section};
use crate::store::{
    AcmeKeyRecord, AuditEvent, BridgeRecord, DomainRecord, KeyDomain, KeyRecord, LinkToken,
    MailJob, StoreError,
};
use std::ops::Bound;

/// The keyspace prefix a section's records have.
fn prefix_of(section: Section) -> u8 {
    match section {
        Section::Keys => api_key::PREFIX,
        Section::KeyDomains => key_domain::PREFIX,
        Section::Domains => domain::PREFIX,
        Section::Bridge => bridge::PREFIX,
        Section::Acme => acme_key::PREFIX,
        Section::Audit => audit::PREFIX,
        Section::NewEmails => new_emails::PREFIX,
        Section::LinkTokens => link_token::PREFIX,
        Section::Mail => mail_outbox::PREFIX,
    }
}

fn malformed(section: Section, key: &[u8]) -> StoreError {
    StoreError::Transfer(format!(
        "a stored {} entry has a malformed key ({}); the database was changed outside certline",
        section.name(),
        hex::encode(key)
    ))
}

/// The item a record of `section` is.
fn item_of(section: Section, k: &[u8], v: &[u8]) -> Result<Item, StoreError> {
    let bad = || malformed(section, k);
    Ok(match section {
        Section::Keys => Item::Key {
            hash: api_key::decode(k).ok_or_else(bad)?,
            record: KeyRecord::decode(v)?,
        },
        Section::KeyDomains => {
            let (hash, domain) = key_domain::decode(k).ok_or_else(bad)?;
            Item::KeyDomain {
                hash,
                domain,
                entry: KeyDomain::decode(v)?,
            }
        }
        Section::Domains => Item::Domain {
            name: domain::decode(k),
            record: DomainRecord::decode(v)?,
        },
        Section::Bridge => Item::Bridge {
            domain: bridge::decode(k),
            record: BridgeRecord::decode(v)?,
        },
        Section::Acme => Item::Acme {
            hash: acme_key::decode(k).ok_or_else(bad)?,
            record: AcmeKeyRecord::decode(v)?,
        },
        Section::Audit => Item::Audit {
            seq: audit::decode(k),
            event: AuditEvent::decode(v)?,
        },
        Section::NewEmails => {
            let (day, ip) = new_emails::decode(k).ok_or_else(bad)?;
            let count = u32::from_be_bytes(v.try_into().map_err(|_| bad())?);
            Item::NewEmails { day, ip, count }
        }
        Section::LinkTokens => Item::LinkToken {
            token_hash: link_token::decode(k).ok_or_else(bad)?,
            token: LinkToken::decode(v)?,
        },
        Section::Mail => {
            if k.len() != 41 {
                return Err(bad());
            }
            let (due, hash) = mail_outbox::decode(k);
            Item::Mail {
                due,
                hash,
                job: MailJob::decode(v)?,
            }
        }
    })
}

/// Up to `limit` items from `cursor` on, and where the next page starts (`None`: done).
pub(super) fn export_page(
    db: &sled::Db,
    mut cursor: ExportCursor,
    limit: usize,
) -> Result<(Vec<Item>, Option<ExportCursor>), StoreError> {
    let mut items = Vec::with_capacity(limit.min(4096));
    loop {
        if cursor.section == Section::Audit {
            // The audit trail is a file of its own (`audit_trail`): `SledStore::export`
            // reads that section; this page ends before it.
            return Ok((items, Some(cursor)));
        }
        let prefix = prefix_of(cursor.section);
        let start = match cursor.after.clone() {
            Some(after) => Bound::Excluded(after),
            None => Bound::Included(vec![prefix]),
        };
        let wanted = limit - items.len();
        let mut last = None;
        for entry in db
            .range((start, Bound::Excluded(vec![prefix + 1])))
            .take(wanted)
        {
            let (k, v) = entry?;
            let mut item = item_of(cursor.section, &k, &v)?;
            if let Item::Key { hash, record } = &mut item {
                // The stored count is not kept up to date (`domain_counts`): a key's count is
                // its entries, which the target backend may store.
                record.domain_count = db.scan_prefix(key_domain::prefix(hash)).count() as u64;
            }
            items.push(item);
            last = Some(k.to_vec());
        }
        if items.len() == limit {
            // Perhaps more in this section: continue after the last one.
            let after = last.or(cursor.after);
            return Ok((
                items,
                Some(ExportCursor {
                    section: cursor.section,
                    after,
                }),
            ));
        }
        match cursor.next_section() {
            Some(next) => cursor = next,
            None => return Ok((items, None)),
        }
    }
}

impl SledStore {
    /// Up to `limit` items from `cursor` on (see [`crate::store::transfer`]), read on the
    /// blocking pool.
    pub async fn export(
        &self,
        cursor: &ExportCursor,
        limit: usize,
    ) -> Result<(Vec<Item>, Option<ExportCursor>), StoreError> {
        if cursor.section == Section::Audit {
            return self.export_audit(cursor, limit);
        }
        let cursor = cursor.clone();
        self.off_runtime(move |db| export_page(db, cursor, limit))
            .await
    }

    /// A page of the audit section, from the trail's file; the cursor's `after` is the last
    /// sequence number exported (8 bytes, big-endian).
    fn export_audit(
        &self,
        cursor: &ExportCursor,
        limit: usize,
    ) -> Result<(Vec<Item>, Option<ExportCursor>), StoreError> {
        let after = match cursor.after.as_deref() {
            None => None,
            Some(bytes) => Some(u64::from_be_bytes(bytes.try_into().map_err(|_| {
                StoreError::Transfer("an audit export cursor is not a sequence number".into())
            })?)),
        };
        let events = self.commits.audit_trail().events(after, limit)?;
        let full = events.len() == limit;
        let last = events.last().map(|(seq, _)| seq.to_be_bytes().to_vec());
        let items = events
            .into_iter()
            .map(|(seq, event)| Item::Audit { seq, event })
            .collect();
        let next = if full {
            Some(ExportCursor {
                section: Section::Audit,
                after: last.or_else(|| cursor.after.clone()),
            })
        } else {
            cursor.next_section()
        };
        Ok((items, next))
    }

    /// Does the store hold no record? (Metadata, which every opened store writes, does not
    /// count.)
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        for entry in self.db.iter() {
            let (k, _) = entry?;
            if k.first() != Some(&meta::PREFIX) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Writes `items` into the store as one write-ahead log record, with what derives from
    /// them (outbox entries, the holder and e-mail indexes). For an empty store, nothing else
    /// writing: it checks nothing and overwrites what is there. The caller commits.
    pub async fn import(&self, items: &[Item]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        let mut audit_events = Vec::new();
        for item in items {
            match item {
                Item::Key { hash, record } => {
                    batch.insert(api_key::encode(hash), record.encode());
                    if let Some(email) = &record.email {
                        batch.insert(email_index::encode(email, hash), Vec::new());
                    }
                }
                Item::KeyDomain {
                    hash,
                    domain,
                    entry,
                } => {
                    batch.insert(key_domain::encode(hash, domain), entry.encode());
                    batch.insert(holder::encode(domain, hash), Vec::new());
                }
                Item::Domain { name, record } => {
                    batch.insert(domain::encode(name), record.encode());
                }
                Item::Bridge { domain, record } => {
                    batch.insert(bridge::encode(domain), record.encode());
                    if let Some(due) = record.next_attempt_at {
                        batch.insert(bridge_outbox::encode(due, domain), Vec::new());
                    }
                }
                Item::Acme { hash, record } => {
                    batch.insert(acme_key::encode(hash), record.encode());
                    if let Some(due) = record.next_attempt_at {
                        batch.insert(acme_outbox::encode(due, hash), Vec::new());
                    }
                }
                Item::Audit { seq, event } => audit_events.push((*seq, event.encode())),
                Item::NewEmails { day, ip, count } => {
                    batch.insert(new_emails::encode(*day, *ip), &count.to_be_bytes()[..]);
                }
                Item::LinkToken { token_hash, token } => {
                    batch.insert(link_token::encode(token_hash), token.encode());
                }
                Item::Mail { due, hash, job } => {
                    batch.insert(mail_outbox::encode(*due, hash), job.encode());
                }
            }
        }
        self.write(batch)?;
        // The audit trail is a file of its own: the imported events go there, synced now
        // (they are in no log record), and new events continue after them.
        if !audit_events.is_empty() {
            let trail = self.commits.audit_trail();
            for (seq, event) in &audit_events {
                trail.append_replayed(*seq, event)?;
            }
            trail.sync().map_err(|e| {
                StoreError::Transfer(format!("syncing the imported audit trail: {e}"))
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{IP, open};
    use super::*;
    use crate::apikey::ApiKey;
    use crate::store::ClaimCaps;

    /// Every item of `store`, exported in pages of `limit`.
    async fn everything(store: &SledStore, limit: usize) -> Vec<Item> {
        let mut out = Vec::new();
        let mut cursor = Some(ExportCursor::start());
        while let Some(at) = cursor {
            let (items, next) = store.export(&at, limit).await.unwrap();
            assert!(items.len() <= limit);
            out.extend(items);
            cursor = next;
        }
        out
    }

    /// Pages of any size cover every record once, across sections, and an import into a new
    /// store exports the same items again.
    #[tokio::test]
    async fn pages_cover_every_record_once_and_import_round_trips() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = open(a.path());
        let ip = IP.parse().unwrap();
        for i in 0..5 {
            let hash = ApiKey::generate().hash();
            let caps = ClaimCaps::default();
            let email = format!("Owner{i}@Example.org");
            source
                .create_key(&hash, Some(&email), &caps, ip, 100)
                .await
                .unwrap();
            for d in 0..3 {
                let name = format!("h{d}.k{i}.example.org").parse().unwrap();
                source.add_domain(&hash, &name, ip, 100).await.unwrap();
            }
        }
        source.commit().await.unwrap();
        let whole = everything(&source, 10_000).await;
        // 5 keys, 15 entries, 15 domains, 5 created + 5 claimed + 15 added events, 1 day
        // counter.
        assert_eq!(whole.len(), 5 + 15 + 15 + 25 + 1, "{whole:#?}");
        for limit in [1, 2, 7] {
            assert_eq!(everything(&source, limit).await, whole, "pages of {limit}");
        }
        let target = open(b.path());
        assert!(target.is_empty().await.unwrap());
        target.import(&whole).await.unwrap();
        target.commit().await.unwrap();
        assert!(!target.is_empty().await.unwrap());
        assert_eq!(everything(&target, 3).await, whole);
        // The derived indexes came along: holders, and the e-mail index the cap counts.
        let Item::KeyDomain { hash, domain, .. } = &whole[5] else {
            panic!("{:?}", whole[5])
        };
        assert_eq!(target.holders_of(domain).await.unwrap(), vec![*hash]);
        assert_eq!(
            target
                .db
                .scan_prefix(email_index::prefix("owner0@example.org"))
                .count(),
            1
        );
    }
}
