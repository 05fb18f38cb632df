//! Moving a whole store between backends (`certline migrate`): every record as a
//! backend-neutral [`Item`], read page by page with [`Store::export`] and written into an empty
//! store with [`Store::import`].
//!
//! # What is an item and what is rebuilt
//!
//! Items are the records a backend cannot derive: keys, their domain entries, domains, bridge
//! and ACME records, the audit trail, the per-day claim counters, link tokens and mail jobs.
//! What each backend derives from them is rebuilt by its `import`, in the same write as the
//! items it comes from: the bridge's and the ACME worker's outboxes (from each record's
//! `next_attempt_at`, so every due time carries over), the holder index (from the domain
//! entries), the index of keys per e-mail address that the unconfirmed-keys cap counts (from
//! the keys' addresses). Store metadata (migration flags, the readiness probe) is the target's
//! own and not copied. Leases are not copied: the target's workers take every due record
//! afresh.
//!
//! # Order
//!
//! Export walks the [`Section`]s in their declared order (keys before the domain entries that
//! refer to them), each in its backend's key order, so an import can write each page as it
//! comes. Keys carry their `domain_count` as stored; it equals their domain entries because
//! the source keeps it so.

use super::{
    AcmeKeyRecord, AuditEvent, BridgeRecord, DomainRecord, KeyDomain, KeyRecord, LinkToken,
    MailJob, Store, StoreError, UnixTime,
};
use crate::apikey::KeyHash;
use std::net::IpAddr;

/// One record of a store, whatever the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// An API key (by hash) with its record.
    Key { hash: KeyHash, record: KeyRecord },
    /// A domain registered under a key.
    KeyDomain {
        hash: KeyHash,
        domain: String,
        entry: KeyDomain,
    },
    /// A domain's shared record.
    Domain { name: String, record: DomainRecord },
    /// A host's bridge record; its `next_attempt_at` is its place in the bridge's outbox.
    Bridge {
        domain: String,
        record: BridgeRecord,
    },
    /// A key's ACME record; its `next_attempt_at` is its place in the ACME outbox.
    Acme {
        hash: KeyHash,
        record: AcmeKeyRecord,
    },
    /// An audit event with its sequence number.
    Audit { seq: u64, event: AuditEvent },
    /// New e-mail addresses claimed from `ip` on `day` (days since the epoch): the per-day cap.
    NewEmails { day: i64, ip: IpAddr, count: u32 },
    /// A mailed confirm/revoke link, by the SHA-256 of its token.
    LinkToken {
        token_hash: [u8; 32],
        token: LinkToken,
    },
    /// A claim confirmation mail still to be sent.
    Mail {
        due: UnixTime,
        hash: KeyHash,
        job: MailJob,
    },
}

/// The kinds of record, in export order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    Keys,
    KeyDomains,
    Domains,
    Bridge,
    Acme,
    Audit,
    NewEmails,
    LinkTokens,
    Mail,
}

impl Section {
    /// Every section, in export order.
    pub const ALL: [Section; 9] = [
        Section::Keys,
        Section::KeyDomains,
        Section::Domains,
        Section::Bridge,
        Section::Acme,
        Section::Audit,
        Section::NewEmails,
        Section::LinkTokens,
        Section::Mail,
    ];

    /// The section after this one.
    pub fn next(self) -> Option<Section> {
        Self::ALL.get(self as usize + 1).copied()
    }

    /// How the summary line names it.
    pub fn name(self) -> &'static str {
        match self {
            Section::Keys => "keys",
            Section::KeyDomains => "key domains",
            Section::Domains => "domains",
            Section::Bridge => "bridge records",
            Section::Acme => "ACME records",
            Section::Audit => "audit events",
            Section::NewEmails => "claim counters",
            Section::LinkTokens => "link tokens",
            Section::Mail => "mail jobs",
        }
    }
}

impl Item {
    /// The section the item belongs to.
    pub fn section(&self) -> Section {
        match self {
            Item::Key { .. } => Section::Keys,
            Item::KeyDomain { .. } => Section::KeyDomains,
            Item::Domain { .. } => Section::Domains,
            Item::Bridge { .. } => Section::Bridge,
            Item::Acme { .. } => Section::Acme,
            Item::Audit { .. } => Section::Audit,
            Item::NewEmails { .. } => Section::NewEmails,
            Item::LinkToken { .. } => Section::LinkTokens,
            Item::Mail { .. } => Section::Mail,
        }
    }
}

/// Where an export continues: a section and the backend's key of the last item it handed out
/// there (opaque bytes; each backend reads back only what it wrote).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportCursor {
    pub(super) section: Section,
    pub(super) after: Option<Vec<u8>>,
}

impl ExportCursor {
    /// The start of an export.
    pub fn start() -> Self {
        Self {
            section: Section::Keys,
            after: None,
        }
    }

    /// The section the export is in.
    pub fn section(&self) -> Section {
        self.section
    }

    /// The start of the section after this one, or `None` at the end.
    pub(super) fn next_section(&self) -> Option<Self> {
        self.section.next().map(|section| Self {
            section,
            after: None,
        })
    }
}

/// How many items of each section were copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts(pub [u64; Section::ALL.len()]);

impl Counts {
    pub fn add(&mut self, items: &[Item]) {
        for item in items {
            self.0[item.section() as usize] += 1;
        }
    }

    pub fn get(&self, section: Section) -> u64 {
        self.0[section as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `12 keys, 300 key domains, ...` (every section, zeros included).
    pub fn summary(&self) -> String {
        Section::ALL
            .iter()
            .map(|s| format!("{} {}", self.get(*s), s.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Items per page of an export and per import write: PostgreSQL imports them in one
/// transaction, sled in one write-ahead log record.
pub const PAGE: usize = 2000;

/// Why a copy did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(
        "the target store is not empty; migrate only into an empty store (a new data directory, or a new PostgreSQL schema or database)"
    )]
    TargetNotEmpty,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Counts every record of `from`, by section, reading it the way [`copy`] will (page by page
/// with [`Store::export`]); `progress` is told the counts so far after each page. For a
/// progress bar with a total: nothing writes to a store while it is migrated (no server may
/// run on either side), so the copy then moves exactly this many records. It costs one more
/// read of the source, which is cheap beside the writes of the copy.
pub async fn count(from: &Store, mut progress: impl FnMut(&Counts)) -> Result<Counts, StoreError> {
    let mut counts = Counts::default();
    let mut cursor = Some(ExportCursor::start());
    while let Some(at) = cursor {
        let (items, next) = from.export(&at, PAGE).await?;
        counts.add(&items);
        progress(&counts);
        cursor = next;
    }
    Ok(counts)
}

/// Copies every record of `from` into `to`, which must be empty, page by page; `progress` is
/// told the counts so far after each page. Returns the counts. Each page is committed
/// (durable) before the next is read.
pub async fn copy(
    from: &Store,
    to: &Store,
    mut progress: impl FnMut(&Counts, Section),
) -> Result<Counts, CopyError> {
    if !to.is_empty().await? {
        return Err(CopyError::TargetNotEmpty);
    }
    let mut counts = Counts::default();
    let mut cursor = Some(ExportCursor::start());
    while let Some(at) = cursor {
        let (items, next) = from.export(&at, PAGE).await?;
        if !items.is_empty() {
            to.import(&items).await?;
            to.commit().await?;
            counts.add(&items);
        }
        progress(&counts, next.as_ref().map_or(at.section, |c| c.section));
        cursor = next;
    }
    to.flush().await?;
    Ok(counts)
}
