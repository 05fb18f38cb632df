//! Online backups of the embedded store (`certline backup FILE` through the admin API's
//! `GET /api/backup`) and restoring them into a new data directory (`certline restore`).
//!
//! Copying a live data directory is not safe (sled and the write-ahead log may hold parts of
//! a write that the copy catches at different moments); a backup is taken from the running
//! server instead, without stopping its writers: a fuzzy export of every record plus the log
//! records applied while the export ran, which restore replays over it. Why that is the
//! store as of the backup's end is in [`super::sled::backup`]. On PostgreSQL the database is
//! backed up with its own tools (`pg_dump`); [`Store::backup`] says so.
//!
//! # The file
//!
//! `CERTLINE-BACKUP\n` (16 bytes), then frames: `tag: u8`, `len: u32` (little-endian),
//! `len` bytes.
//!
//! | tag | payload |
//! |---|---|
//! | `H` | the [`Header`] (JSON): format version, backend, certline version, start time; first |
//! | `I` | a page of [`Item`]s (postcard; each record in the store's own versioned encoding) |
//! | `L` | write-ahead log records applied during the export, back to back, in apply order |
//! | `E` | the server failed part way (UTF-8 text saying why); the file is not a backup |
//! | `T` | the [`Trailer`] (JSON): item counts per section, log records, end time, and the SHA-256 of every byte before this frame; last |
//!
//! Item counts are in the trailer, not the header, because the file is streamed while the
//! store is read. A restore reads the whole file once and checks the checksum and counts
//! before it writes anything, so a truncated or altered file is refused whole; the CLI
//! checks a downloaded backup the same way before it renames the file into place.

use super::sled::backup::{LogTail, check_records, write_log_tail};
use super::transfer::{Counts, ExportCursor, Item, PAGE, Section};
use super::{
    AcmeKeyRecord, AuditEvent, BridgeRecord, DomainRecord, KeyDomain, KeyRecord, LinkToken,
    MailJob, Record, UnixTime,
};
use super::{Backend, DurabilityMode, Store, StoreError, Timing};
use crate::apikey::KeyHash;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 16] = b"CERTLINE-BACKUP\n";
/// The format version this binary writes and reads.
pub const FORMAT: u32 = 1;

const TAG_HEADER: u8 = b'H';
const TAG_ITEMS: u8 = b'I';
const TAG_LOG: u8 = b'L';
const TAG_ERROR: u8 = b'E';
const TAG_TRAILER: u8 = b'T';

/// No frame is larger (a page of items, or a chunk of log records): a longer length is
/// corruption, not a reason to allocate gigabytes.
const MAX_FRAME: usize = 64 << 20;
/// Log records per `L` frame (about): each becomes one log block at restore.
const LOG_CHUNK: usize = 1 << 20;
/// Bytes handed to the HTTP body at a time.
const SEND_CHUNK: usize = 256 << 10;

/// What the file is: the first frame.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    pub format: u32,
    /// The backend it was taken from (`sled`).
    pub backend: String,
    pub certline_version: String,
    /// When the backup started (RFC 3339).
    pub created_at: String,
}

/// What the file holds, and its checksum: the last frame.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Trailer {
    /// Items per section (the names `certline migrate` prints).
    pub items: BTreeMap<String, u64>,
    /// Write-ahead log records applied while the store was read.
    pub log_records: u64,
    /// When the backup ended: the restored store is the store as of this moment.
    pub finished_at: String,
    /// SHA-256 (hex) of every byte of the file before the trailer frame.
    pub sha256: String,
}

impl Trailer {
    /// How many items in all.
    pub fn total_items(&self) -> u64 {
        self.items.values().sum()
    }

    /// `12 keys, 300 key domains, ...; 7 changes made during the backup`.
    pub fn summary(&self) -> String {
        let sections = Section::ALL
            .iter()
            .map(|s| format!("{} {}", self.items.get(s.name()).unwrap_or(&0), s.name()))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{sections}; {} changes made during the backup",
            self.log_records
        )
    }
}

fn counts_by_name(counts: &Counts) -> BTreeMap<String, u64> {
    Section::ALL
        .iter()
        .map(|s| (s.name().to_owned(), counts.get(*s)))
        .collect()
}

/// Why a backup could not be taken, read or restored; each says what to do.
#[derive(Debug, Error)]
pub enum BackupError {
    #[error(
        "online backups are for the embedded (sled) store; this server stores in PostgreSQL: back the database up with its own tools, e.g. `pg_dump --schema=SCHEMA` (see README.md, \"Backing up and moving\")"
    )]
    Postgres,
    #[error("the client went away before the backup was sent")]
    ClientGone,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "this is not a certline backup (it does not start with {:?}); give a file written by `certline backup`",
        String::from_utf8_lossy(MAGIC).trim()
    )]
    NotABackup,
    #[error(
        "the backup is truncated: it ends before its closing checksum (an interrupted download or copy?); take a new backup with `certline backup`, or use an intact copy"
    )]
    Truncated,
    #[error(
        "the backup is corrupt ({0}); nothing was restored: take a new backup with `certline backup`, or use an intact copy"
    )]
    Corrupt(String),
    #[error(
        "the backup has format version {0}, which this certline ({version}) does not read; restore it with the certline version that wrote it (or a newer one)",
        version = env!("CARGO_PKG_VERSION")
    )]
    Format(u32),
    #[error("the server could not finish the backup: {0}")]
    Server(String),
    #[error("cannot open the backup {path}: {reason}")]
    Open {
        path: String,
        reason: std::io::Error,
    },
    #[error("reading the backup: {0}")]
    Io(std::io::Error),
}

// By hand, not `#[from]`: the message holds the I/O error already, and a source would print
// it twice in the CLI's chain of messages.
impl From<std::io::Error> for BackupError {
    fn from(e: std::io::Error) -> Self {
        BackupError::Io(e)
    }
}

// ---- Items as bytes ----

/// An [`Item`] in the file: keys and names as they are, each record in the store's own
/// versioned encoding ([`Record`]), so that a later certline reads an older backup the way
/// it reads an older database.
#[derive(Serialize, Deserialize)]
enum Wire {
    Key([u8; 32], Vec<u8>),
    KeyDomain([u8; 32], String, Vec<u8>),
    Domain(String, Vec<u8>),
    Bridge(String, Vec<u8>),
    Acme([u8; 32], Vec<u8>),
    Audit(u64, Vec<u8>),
    NewEmails(i64, IpAddr, u32),
    LinkToken([u8; 32], Vec<u8>),
    Mail(UnixTime, [u8; 32], Vec<u8>),
}

fn to_wire(item: &Item) -> Wire {
    match item {
        Item::Key { hash, record } => Wire::Key(hash.0, record.encode()),
        Item::KeyDomain {
            hash,
            domain,
            entry,
        } => Wire::KeyDomain(hash.0, domain.clone(), entry.encode()),
        Item::Domain { name, record } => Wire::Domain(name.clone(), record.encode()),
        Item::Bridge { domain, record } => Wire::Bridge(domain.clone(), record.encode()),
        Item::Acme { hash, record } => Wire::Acme(hash.0, record.encode()),
        Item::Audit { seq, event } => Wire::Audit(*seq, event.encode()),
        Item::NewEmails { day, ip, count } => Wire::NewEmails(*day, *ip, *count),
        Item::LinkToken { token_hash, token } => Wire::LinkToken(*token_hash, token.encode()),
        Item::Mail { due, hash, job } => Wire::Mail(*due, hash.0, job.encode()),
    }
}

fn from_wire(wire: Wire) -> Result<Item, postcard::Error> {
    Ok(match wire {
        Wire::Key(hash, record) => Item::Key {
            hash: KeyHash(hash),
            record: KeyRecord::decode(&record)?,
        },
        Wire::KeyDomain(hash, domain, entry) => Item::KeyDomain {
            hash: KeyHash(hash),
            domain,
            entry: KeyDomain::decode(&entry)?,
        },
        Wire::Domain(name, record) => Item::Domain {
            name,
            record: DomainRecord::decode(&record)?,
        },
        Wire::Bridge(domain, record) => Item::Bridge {
            domain,
            record: BridgeRecord::decode(&record)?,
        },
        Wire::Acme(hash, record) => Item::Acme {
            hash: KeyHash(hash),
            record: AcmeKeyRecord::decode(&record)?,
        },
        Wire::Audit(seq, event) => Item::Audit {
            seq,
            event: AuditEvent::decode(&event)?,
        },
        Wire::NewEmails(day, ip, count) => Item::NewEmails { day, ip, count },
        Wire::LinkToken(token_hash, token) => Item::LinkToken {
            token_hash,
            token: LinkToken::decode(&token)?,
        },
        Wire::Mail(due, hash, job) => Item::Mail {
            due,
            hash: KeyHash(hash),
            job: MailJob::decode(&job)?,
        },
    })
}

fn encode_items(items: &[Item]) -> Vec<u8> {
    let wire: Vec<Wire> = items.iter().map(to_wire).collect();
    postcard::to_allocvec(&wire).expect("serialising to memory cannot fail")
}

fn decode_items(bytes: &[u8]) -> Result<Vec<Item>, BackupError> {
    let corrupt = |e: postcard::Error| BackupError::Corrupt(format!("an item page: {e}"));
    let wire: Vec<Wire> = postcard::from_bytes(bytes).map_err(corrupt)?;
    wire.into_iter()
        .map(|w| from_wire(w).map_err(corrupt))
        .collect()
}

// ---- Writing (the server) ----

/// Frames on their way to the HTTP body, hashed as they go.
struct FrameSink {
    tx: mpsc::Sender<Bytes>,
    hasher: Sha256,
    buf: Vec<u8>,
}

impl FrameSink {
    async fn frame(&mut self, tag: u8, payload: &[u8]) -> Result<(), BackupError> {
        let start = self.buf.len();
        self.buf.push(tag);
        self.buf
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(payload);
        if tag != TAG_TRAILER {
            self.hasher.update(&self.buf[start..]);
        }
        if self.buf.len() >= SEND_CHUNK {
            self.send().await?;
        }
        Ok(())
    }

    async fn send(&mut self) -> Result<(), BackupError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .send(chunk)
            .await
            .map_err(|_| BackupError::ClientGone)
    }
}

impl Store {
    /// Is this store one an online backup can copy (sled)? If not, why not.
    pub fn backup_supported(&self) -> Result<(), BackupError> {
        match &self.backend {
            Backend::Sled(_) => Ok(()),
            Backend::Postgres(_) => Err(BackupError::Postgres),
        }
    }

    /// Writes a backup of the running store to `tx`, chunk by chunk, while the store keeps
    /// taking writes (see the module docs); returns its trailer. If it fails after it began,
    /// the last frame says why (`E`), so that the receiver cannot take the stream for a
    /// backup.
    pub async fn backup(&self, tx: mpsc::Sender<Bytes>) -> Result<Trailer, BackupError> {
        let Backend::Sled(sled) = &self.backend else {
            return Err(BackupError::Postgres);
        };
        let mut sink = FrameSink {
            tx,
            hasher: Sha256::new(),
            buf: Vec::with_capacity(SEND_CHUNK * 2),
        };
        sink.hasher.update(MAGIC);
        sink.buf.extend_from_slice(MAGIC);
        let header = Header {
            format: FORMAT,
            backend: self.backend_name().to_owned(),
            certline_version: env!("CARGO_PKG_VERSION").to_owned(),
            created_at: chrono::Utc::now().to_rfc3339(),
        };
        let json = serde_json::to_vec(&header).expect("a header serialises");
        sink.frame(TAG_HEADER, &json).await?;
        let result = async {
            let window = sled.backup_begin().await?;
            let mut counts = Counts::default();
            let mut cursor = Some(ExportCursor::start());
            while let Some(at) = cursor {
                let (items, next) = self.export(&at, PAGE).await?;
                if !items.is_empty() {
                    counts.add(&items);
                    sink.frame(TAG_ITEMS, &encode_items(&items)).await?;
                }
                cursor = next;
            }
            let tail = window.finish().await?;
            Ok::<_, BackupError>((counts, tail))
        }
        .await;
        let (counts, tail) = match result {
            Ok(done) => done,
            Err(BackupError::ClientGone) => return Err(BackupError::ClientGone),
            Err(e) => {
                sink.frame(TAG_ERROR, e.to_string().as_bytes()).await?;
                sink.send().await?;
                return Err(e);
            }
        };
        let LogTail { records, count } = tail;
        for chunk in record_chunks(&records) {
            sink.frame(TAG_LOG, chunk).await?;
        }
        let mut trailer = Trailer {
            items: counts_by_name(&counts),
            log_records: count,
            finished_at: chrono::Utc::now().to_rfc3339(),
            sha256: String::new(),
        };
        trailer.sha256 = hex::encode(sink.hasher.clone().finalize());
        let json = serde_json::to_vec(&trailer).expect("a trailer serialises");
        sink.frame(TAG_TRAILER, &json).await?;
        sink.send().await?;
        Ok(trailer)
    }
}

/// `records` (back-to-back log records) in pieces of about [`LOG_CHUNK`], each a whole
/// number of records.
fn record_chunks(mut records: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !records.is_empty() {
        let mut end = 0;
        while end < records.len() && (end == 0 || end < LOG_CHUNK) {
            let len = u32::from_le_bytes(records[end..end + 4].try_into().expect("4 bytes"));
            end += 8 + len as usize;
        }
        let (chunk, rest) = records.split_at(end);
        out.push(chunk);
        records = rest;
    }
    out
}

// ---- Reading (the CLI, restore) ----

/// A frame read back.
enum Frame {
    Header(Header),
    Items(Vec<Item>),
    Log(Vec<u8>),
}

/// Reads a backup frame by frame, hashing as it goes; the trailer is checked against the
/// hash and the counts of what came before it.
struct Reader<R> {
    r: R,
    hasher: Sha256,
    counts: Counts,
    log_records: u64,
    trailer: Option<Trailer>,
}

impl<R: Read> Reader<R> {
    fn new(mut r: R) -> Result<Self, BackupError> {
        let mut magic = [0u8; 16];
        read_full(&mut r, &mut magic).map_err(|e| match e {
            BackupError::Truncated => BackupError::NotABackup,
            e => e,
        })?;
        if &magic != MAGIC {
            return Err(BackupError::NotABackup);
        }
        let mut hasher = Sha256::new();
        hasher.update(magic);
        Ok(Self {
            r,
            hasher,
            counts: Counts::default(),
            log_records: 0,
            trailer: None,
        })
    }

    /// The next frame; `None` after the trailer, which has then been checked.
    fn next(&mut self) -> Result<Option<Frame>, BackupError> {
        if self.trailer.is_some() {
            return Ok(None);
        }
        let mut head = [0u8; 5];
        read_full(&mut self.r, &mut head)?;
        let len = u32::from_le_bytes(head[1..].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(BackupError::Corrupt(format!("a frame claims {len} bytes")));
        }
        let mut payload = vec![0u8; len];
        read_full(&mut self.r, &mut payload)?;
        let tag = head[0];
        if tag != TAG_TRAILER {
            self.hasher.update(head);
            self.hasher.update(&payload);
        }
        match tag {
            TAG_HEADER => {
                let header: Header = serde_json::from_slice(&payload)
                    .map_err(|e| BackupError::Corrupt(format!("the header: {e}")))?;
                Ok(Some(Frame::Header(header)))
            }
            TAG_ITEMS => {
                let items = decode_items(&payload)?;
                self.counts.add(&items);
                Ok(Some(Frame::Items(items)))
            }
            TAG_LOG => {
                let n = check_records(&payload).ok_or_else(|| {
                    BackupError::Corrupt("a log record fails its checksum".into())
                })?;
                self.log_records += n;
                Ok(Some(Frame::Log(payload)))
            }
            TAG_ERROR => Err(BackupError::Server(
                String::from_utf8_lossy(&payload).into_owned(),
            )),
            TAG_TRAILER => {
                let trailer: Trailer = serde_json::from_slice(&payload)
                    .map_err(|e| BackupError::Corrupt(format!("the trailer: {e}")))?;
                let actual = hex::encode(self.hasher.clone().finalize());
                if trailer.sha256 != actual {
                    return Err(BackupError::Corrupt(format!(
                        "its SHA-256 is {actual}, its trailer records {}",
                        trailer.sha256
                    )));
                }
                if trailer.items != counts_by_name(&self.counts)
                    || trailer.log_records != self.log_records
                {
                    return Err(BackupError::Corrupt(
                        "its counts disagree with its contents".into(),
                    ));
                }
                let mut rest = [0u8; 1];
                if self.r.read(&mut rest)? != 0 {
                    return Err(BackupError::Corrupt(
                        "there are bytes after its trailer".into(),
                    ));
                }
                self.trailer = Some(trailer);
                Ok(None)
            }
            other => Err(BackupError::Corrupt(format!(
                "an unknown frame (tag {other})"
            ))),
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<(), BackupError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => BackupError::Truncated,
        _ => BackupError::Io(e),
    })
}

fn open_file(path: &Path) -> Result<Reader<std::io::BufReader<std::fs::File>>, BackupError> {
    let file = std::fs::File::open(path).map_err(|reason| BackupError::Open {
        path: path.display().to_string(),
        reason,
    })?;
    Reader::new(std::io::BufReader::with_capacity(1 << 20, file))
}

/// Reads the whole backup at `path` and checks it (format, checksum, counts); its header
/// and trailer.
pub fn verify(path: &Path) -> Result<(Header, Trailer), BackupError> {
    let mut reader = open_file(path)?;
    let header = match reader.next()? {
        Some(Frame::Header(header)) => header,
        _ => {
            return Err(BackupError::Corrupt(
                "it does not begin with a header".into(),
            ));
        }
    };
    if header.format != FORMAT {
        return Err(BackupError::Format(header.format));
    }
    if header.backend != "sled" {
        return Err(BackupError::Corrupt(format!(
            "it names backend {:?}",
            header.backend
        )));
    }
    while let Some(frame) = reader.next()? {
        if let Frame::Header(_) = frame {
            return Err(BackupError::Corrupt("it has a second header".into()));
        }
    }
    let trailer = reader.trailer.take().expect("read to its trailer");
    Ok((header, trailer))
}

/// Restores the backup at `path` into the data directory `dir`, which must not exist or be
/// empty: checks the whole file first ([`verify`]), imports its items, then replays the
/// changes made during the backup (through the store's own log replay at open).
/// `progress` is told the items imported so far. Returns the trailer.
pub async fn restore(
    path: &Path,
    dir: &Path,
    mut progress: impl FnMut(u64),
) -> Result<Trailer, anyhow::Error> {
    use anyhow::Context as _;
    let (_, trailer) = verify(path)?;
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        if entries.next().is_some() {
            anyhow::bail!(
                "{} is not empty: restore only into a new or empty directory (a running server's data directory is never overwritten); nothing was restored",
                dir.display()
            );
        }
    }
    let store = open_retrying(dir).await?;
    let mut reader = open_file(path)?;
    let mut log = Vec::new();
    let mut done = 0u64;
    let imported = async {
        while let Some(frame) = reader.next()? {
            match frame {
                Frame::Header(_) => {}
                Frame::Items(items) => {
                    store.import(&items).await?;
                    store.commit().await?;
                    done += items.len() as u64;
                    progress(done);
                }
                Frame::Log(records) => log.push(records),
            }
        }
        store.flush().await?;
        Ok::<_, BackupError>(())
    }
    .await;
    let closed = store.close().await;
    drop(store);
    imported.with_context(|| {
        format!(
            "restoring into {} failed part way: delete that directory and restore again",
            dir.display()
        )
    })?;
    closed.context("closing the restored store")?;
    write_log_tail(dir, log.iter().map(Vec::as_slice))
        .context("writing the changes made during the backup")?;
    // Opening replays them, as after a crash; closing checkpoints them into sled.
    let store = open_retrying(dir).await?;
    store.close().await.context("closing the restored store")?;
    Ok(trailer)
}

/// Opens the sled store in `dir`; a store just closed in this process may hold sled's file
/// lock for a moment longer.
async fn open_retrying(dir: &Path) -> anyhow::Result<Store> {
    let timing = Timing {
        relaxed_flush: Duration::from_millis(100),
        checkpoint: Duration::from_secs(60),
    };
    let mut tries = 0;
    loop {
        match Store::open(dir, DurabilityMode::Durable, timing) {
            Ok(store) => return Ok(store),
            Err(StoreError::Open { .. }) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(anyhow::Error::from(e).context(format!(
                    "opening {} (is a certline server running on it? restore into a new directory)",
                    dir.display()
                )));
            }
        }
    }
}
