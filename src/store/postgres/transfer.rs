//! The PostgreSQL side of moving a store ([`crate::store::transfer`]): every row as an
//! [`Item`], table by table in primary-key order, and an import into empty tables, one
//! transaction per call (the caller hands in a few thousand items at a time).

use super::bridge::insert_bridge;
use super::claims::action_name;
use super::keys::count;
use super::rows::{KEY_COLUMNS, acme_json, acme_record, bridge_record, hash_from, key_record};
use super::{PgStore, sql};
use crate::store::transfer::{ExportCursor, Item, Section};
use crate::store::{
    AuditKind, DomainRecord, KeyDomain, LinkAction, LinkToken, MailJob, StoreError, UnixTime,
};
use std::net::IpAddr;
use tokio_postgres::Row;
use tokio_postgres::types::Json;

/// The tables whose rows are records (not `meta`, which is the instance's own).
const TABLES: [&str; 9] = [
    "keys",
    "key_domains",
    "domains",
    "bridge",
    "acme_keys",
    "audit",
    "claim_new_emails",
    "link_tokens",
    "mail_outbox",
];

/// The query of one section's page: rows after the cursor's position (`$1`, and `$2` for
/// two-column keys; NULL: from the first) in key order, at most `$3`, each row's cursor
/// position in the columns after its record.
fn query(section: Section) -> &'static str {
    match section {
        Section::Keys => concat!(
            "SELECT hash, created_at, creator_ip, email, claimed_at, confirmed_at, revoked_at, ",
            "domain_count FROM keys WHERE $1::bytea IS NULL OR hash > $1 ",
            "AND $2::text IS NULL ORDER BY hash LIMIT $3"
        ),
        Section::KeyDomains => concat!(
            "SELECT key_hash, domain, added_at FROM key_domains ",
            "WHERE $1::bytea IS NULL OR (key_hash, domain) > ($1, $2::text) ",
            "ORDER BY key_hash, domain LIMIT $3"
        ),
        Section::Domains => concat!(
            "SELECT name, first_added_at FROM domains ",
            "WHERE $1::bytea IS NULL OR name > convert_from($1, 'UTF8') AND $2::text IS NULL ",
            "ORDER BY name LIMIT $3"
        ),
        Section::Bridge => concat!(
            "SELECT domain, record FROM bridge ",
            "WHERE $1::bytea IS NULL OR domain > convert_from($1, 'UTF8') AND $2::text IS NULL ",
            "ORDER BY domain LIMIT $3"
        ),
        Section::Acme => concat!(
            "SELECT key_hash, record FROM acme_keys ",
            "WHERE $1::bytea IS NULL OR key_hash > $1 AND $2::text IS NULL ",
            "ORDER BY key_hash LIMIT $3"
        ),
        Section::Audit => concat!(
            "SELECT seq, at, ip, key_id, kind FROM audit ",
            "WHERE $1::bytea IS NULL OR seq > ('x' || encode($1, 'hex'))::bit(64)::bigint AND $2::text IS NULL ",
            "ORDER BY seq LIMIT $3"
        ),
        Section::NewEmails => concat!(
            "SELECT day, ip, count FROM claim_new_emails ",
            "WHERE $1::bytea IS NULL OR (day, ip) > (('x' || encode($1, 'hex'))::bit(64)::bigint, $2::text::inet) ",
            "ORDER BY day, ip LIMIT $3"
        ),
        Section::LinkTokens => concat!(
            "SELECT token_hash, key_hash, action, created_at, expires_at, used_at ",
            "FROM link_tokens WHERE $1::bytea IS NULL OR token_hash > $1 AND $2::text IS NULL ",
            "ORDER BY token_hash LIMIT $3"
        ),
        Section::Mail => concat!(
            "SELECT id, due, key_hash, email, ip, claimed_at, attempts FROM mail_outbox ",
            "WHERE $1::bytea IS NULL OR id > ('x' || encode($1, 'hex'))::bit(64)::bigint AND $2::text IS NULL ",
            "ORDER BY id LIMIT $3"
        ),
    }
}

/// A cursor position: the row's first key column as bytes, and its second (as text) if it
/// has one.
type Position = (Vec<u8>, Option<String>);

/// How many bytes the first key column takes in a position of a two-column key (a key hash,
/// a day number); the second column's text follows.
fn first_len(section: Section) -> Option<usize> {
    match section {
        Section::KeyDomains => Some(32),
        Section::NewEmails => Some(8),
        _ => None,
    }
}

fn position_of(cursor: &ExportCursor) -> (Option<Vec<u8>>, Option<String>) {
    match (&cursor.after, first_len(cursor.section)) {
        (None, _) => (None, None),
        (Some(bytes), Some(n)) if bytes.len() >= n => (
            Some(bytes[..n].to_vec()),
            Some(String::from_utf8_lossy(&bytes[n..]).into_owned()),
        ),
        (Some(bytes), _) => (Some(bytes.clone()), None),
    }
}

fn encode_position((first, second): Position) -> Vec<u8> {
    let mut out = first;
    if let Some(second) = second {
        out.extend_from_slice(second.as_bytes());
    }
    out
}

/// The item a row of `section` is, and its cursor position.
fn item_of(section: Section, r: &Row) -> Result<(Item, Position), StoreError> {
    Ok(match section {
        Section::Keys => {
            let hash = hash_from(r.try_get(0)?)?;
            (
                Item::Key {
                    hash,
                    record: key_record(r, 1)?,
                },
                (hash.0.to_vec(), None),
            )
        }
        Section::KeyDomains => {
            let hash = hash_from(r.try_get(0)?)?;
            let domain: String = r.try_get(1)?;
            (
                Item::KeyDomain {
                    hash,
                    domain: domain.clone(),
                    entry: KeyDomain {
                        added_at: r.try_get(2)?,
                    },
                },
                (hash.0.to_vec(), Some(domain)),
            )
        }
        Section::Domains => {
            let name: String = r.try_get(0)?;
            (
                Item::Domain {
                    name: name.clone(),
                    record: DomainRecord {
                        first_added_at: r.try_get(1)?,
                    },
                },
                (name.into_bytes(), None),
            )
        }
        Section::Bridge => {
            let domain: String = r.try_get(0)?;
            (
                Item::Bridge {
                    domain: domain.clone(),
                    record: bridge_record(r, 1)?,
                },
                (domain.into_bytes(), None),
            )
        }
        Section::Acme => {
            let hash = hash_from(r.try_get(0)?)?;
            (
                Item::Acme {
                    hash,
                    record: acme_record(r, 1)?,
                },
                (hash.0.to_vec(), None),
            )
        }
        Section::Audit => {
            let seq: i64 = r.try_get(0)?;
            let Json(kind) = r.try_get::<_, Json<AuditKind>>(4)?;
            (
                Item::Audit {
                    seq: seq as u64,
                    event: crate::store::AuditEvent {
                        at: r.try_get(1)?,
                        ip: r.try_get(2)?,
                        key_id: r.try_get(3)?,
                        kind,
                    },
                },
                (seq.to_be_bytes().to_vec(), None),
            )
        }
        Section::NewEmails => {
            let day: i64 = r.try_get(0)?;
            let ip: IpAddr = r.try_get(1)?;
            let n: i32 = r.try_get(2)?;
            (
                Item::NewEmails {
                    day,
                    ip,
                    count: n.max(0) as u32,
                },
                (day.to_be_bytes().to_vec(), Some(ip.to_string())),
            )
        }
        Section::LinkTokens => {
            let token_hash: [u8; 32] = hash_from(r.try_get(0)?)?.0;
            let action = match r.try_get::<_, &str>(2)? {
                "confirm" => LinkAction::Confirm,
                "revoke" => LinkAction::Revoke,
                other => {
                    return Err(StoreError::Transfer(format!(
                        "a link token has the action {other:?}; the table was changed outside certline"
                    )));
                }
            };
            (
                Item::LinkToken {
                    token_hash,
                    token: LinkToken {
                        key_hash: hash_from(r.try_get(1)?)?.0,
                        action,
                        created_at: r.try_get(3)?,
                        expires_at: r.try_get(4)?,
                        used_at: r.try_get(5)?,
                    },
                },
                (token_hash.to_vec(), None),
            )
        }
        Section::Mail => {
            let id: i64 = r.try_get(0)?;
            let attempts: i32 = r.try_get(6)?;
            (
                Item::Mail {
                    due: r.try_get(1)?,
                    hash: hash_from(r.try_get(2)?)?,
                    job: MailJob {
                        email: r.try_get(3)?,
                        ip: r.try_get(4)?,
                        claimed_at: r.try_get(5)?,
                        attempts: attempts.max(0) as u32,
                    },
                },
                (id.to_be_bytes().to_vec(), None),
            )
        }
    })
}

impl PgStore {
    /// Up to `limit` items from `cursor` on (see [`crate::store::transfer`]). Each page is
    /// read as committed when its statements run.
    pub async fn export(
        &self,
        cursor: &ExportCursor,
        limit: usize,
    ) -> Result<(Vec<Item>, Option<ExportCursor>), StoreError> {
        let mut cursor = cursor.clone();
        let mut items = Vec::new();
        on_conn!(self, c, {
            loop {
                let (first, second) = position_of(&cursor);
                let wanted = limit - items.len();
                let rows =
                    sql::rows(c, query(cursor.section), &[&first, &second, &count(wanted)]).await?;
                let got = rows.len();
                let mut last = None;
                for row in &rows {
                    let (item, position) = item_of(cursor.section, row)?;
                    items.push(item);
                    last = Some(position);
                }
                if got == wanted {
                    let after = last.map(encode_position).or(cursor.after.clone());
                    break Ok((
                        items,
                        Some(ExportCursor {
                            section: cursor.section,
                            after,
                        }),
                    ));
                }
                match cursor.next_section() {
                    Some(next) => cursor = next,
                    None => break Ok((items, None)),
                }
            }
        })
    }

    /// Do the record tables hold no row?
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        on_conn!(self, c, {
            for table in TABLES {
                let sql = format!("SELECT EXISTS (SELECT 1 FROM {table})");
                let row = c.query_one(sql.as_str(), &[]).await?;
                if row.get::<_, bool>(0) {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    /// Writes `items` in one transaction, with what derives from them (the addresses the
    /// unconfirmed-keys cap locks; the audit sequence continues after the imported events).
    /// Into empty tables: a row that exists already fails the import.
    pub async fn import(&self, items: &[Item]) -> Result<(), StoreError> {
        in_tx!(self, w, {
            let mut audit = false;
            for item in items {
                match item {
                    Item::Key { hash, record } => {
                        let norm = record.email.as_ref().map(|e| e.to_ascii_lowercase());
                        let domain_count = i64::try_from(record.domain_count).unwrap_or(i64::MAX);
                        sql::execute(
                            &w.tx,
                            &format!(
                                "INSERT INTO keys (hash, email_norm, {KEY_COLUMNS})
                                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                            ),
                            &[
                                &hash.0.as_slice(),
                                &norm,
                                &record.created_at,
                                &record.creator_ip,
                                &record.email,
                                &record.claimed_at,
                                &record.confirmed_at,
                                &record.revoked_at,
                                &domain_count,
                            ],
                        )
                        .await?;
                        if let Some(norm) = &norm {
                            let since: UnixTime = record.claimed_at.unwrap_or(record.created_at);
                            sql::execute(
                                &w.tx,
                                "INSERT INTO claim_emails (email_norm, first_claimed_at)
                                 VALUES ($1, $2) ON CONFLICT (email_norm) DO UPDATE
                                 SET first_claimed_at = LEAST(claim_emails.first_claimed_at,
                                                              EXCLUDED.first_claimed_at)",
                                &[norm, &since],
                            )
                            .await?;
                        }
                    }
                    Item::KeyDomain {
                        hash,
                        domain,
                        entry,
                    } => {
                        sql::execute(
                            &w.tx,
                            "INSERT INTO key_domains (key_hash, domain, added_at) VALUES ($1, $2, $3)",
                            &[&hash.0.as_slice(), domain, &entry.added_at],
                        )
                        .await?;
                    }
                    Item::Domain { name, record } => {
                        sql::execute(
                            &w.tx,
                            "INSERT INTO domains (name, first_added_at) VALUES ($1, $2)",
                            &[name, &record.first_added_at],
                        )
                        .await?;
                    }
                    Item::Bridge { domain, record } => {
                        if !insert_bridge(w, domain, record).await? {
                            return Err(duplicate("bridge record", domain));
                        }
                        w.wake_bridge();
                    }
                    Item::Acme { hash, record } => {
                        sql::execute(
                            &w.tx,
                            "INSERT INTO acme_keys (key_hash, due, record) VALUES ($1, $2, $3)",
                            &[
                                &hash.0.as_slice(),
                                &record.next_attempt_at,
                                &acme_json(record),
                            ],
                        )
                        .await?;
                        w.wake_acme();
                    }
                    Item::Audit { seq, event } => {
                        let seq = i64::try_from(*seq).map_err(|_| {
                            StoreError::Transfer(format!(
                                "audit event {seq} has a sequence number beyond PostgreSQL's bigint"
                            ))
                        })?;
                        let kind = serde_json::to_value(&event.kind)
                            .expect("an audit kind serialises to JSON");
                        sql::execute(
                            &w.tx,
                            "INSERT INTO audit (seq, at, ip, key_id, event, kind)
                             VALUES ($1, $2, $3, $4, $5, $6)",
                            &[
                                &seq,
                                &event.at,
                                &event.ip,
                                &event.key_id,
                                &event.kind.name(),
                                &kind,
                            ],
                        )
                        .await?;
                        audit = true;
                    }
                    Item::NewEmails { day, ip, count } => {
                        let n = i32::try_from(*count).unwrap_or(i32::MAX);
                        sql::execute(
                            &w.tx,
                            "INSERT INTO claim_new_emails (day, ip, count) VALUES ($1, $2, $3)",
                            &[day, ip, &n],
                        )
                        .await?;
                    }
                    Item::LinkToken { token_hash, token } => {
                        sql::execute(
                            &w.tx,
                            "INSERT INTO link_tokens
                             (token_hash, key_hash, action, created_at, expires_at, used_at)
                             VALUES ($1, $2, $3, $4, $5, $6)",
                            &[
                                &token_hash.as_slice(),
                                &token.key_hash.as_slice(),
                                &action_name(token.action),
                                &token.created_at,
                                &token.expires_at,
                                &token.used_at,
                            ],
                        )
                        .await?;
                    }
                    Item::Mail { due, hash, job } => {
                        let attempts = i32::try_from(job.attempts).unwrap_or(i32::MAX);
                        sql::execute(
                            &w.tx,
                            "INSERT INTO mail_outbox (due, key_hash, email, ip, claimed_at, attempts)
                             VALUES ($1, $2, $3, $4, $5, $6)",
                            &[due, &hash.0.as_slice(), &job.email, &job.ip, &job.claimed_at, &attempts],
                        )
                        .await?;
                    }
                }
            }
            if audit {
                // Events written after the move are numbered after the imported ones.
                sql::execute(
                    &w.tx,
                    "SELECT setval(pg_get_serial_sequence('audit', 'seq'), max(seq)) FROM audit",
                    &[],
                )
                .await?;
            }
            Ok(())
        })
    }
}

fn duplicate(what: &str, name: &str) -> StoreError {
    StoreError::Transfer(format!(
        "the target already has a {what} for {name}; migrate only into an empty store"
    ))
}
