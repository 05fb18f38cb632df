//! The sled keyspace: every key the sled backend writes, built and read here and nowhere
//! else.
//!
//! Everything lives in sled's default tree. Every key starts with a one-byte prefix naming
//! its kind; values are versioned serde records ([`crate::store::records`]). Times in keys
//! are 8 bytes, big-endian, so that byte order is time order; key hashes are the 32 bytes of
//! the SHA-256 of the API key (the key itself is never stored).
//!
//! | prefix | module | key after the prefix | value |
//! |---|---|---|---|
//! | `K` | [`api_key`] | key hash | [`KeyRecord`](crate::store::KeyRecord) |
//! | `D` | [`key_domain`] | key hash + normalised domain | [`KeyDomain`](crate::store::KeyDomain) |
//! | `N` | [`domain`] | normalised domain | [`DomainRecord`](crate::store::DomainRecord) |
//! | `H` | [`holder`] | normalised domain + `0x00` + key hash | nothing: the keys holding a domain |
//! | `A` | [`audit`] | sequence (8 bytes; nanoseconds since the epoch, kept increasing) | [`AuditEvent`](crate::store::AuditEvent): only in databases from before the audit trail's own file, moved there at open |
//! | `S` | [`bridge`] | host name | [`BridgeRecord`](crate::store::BridgeRecord) (Sectigo bridge state) |
//! | `O` | [`bridge_outbox`] | due time (clamped at 0) + host name | nothing: the bridge's outbox, in due order |
//! | `E` | [`email_index`] | lower-cased e-mail + `0x00` + key hash | nothing: the keys claimed by an address |
//! | `I` | [`new_emails`] | day number (clamped at 0) + source address as text | new addresses claimed from it that day (u32, big-endian) |
//! | `T` | [`link_token`] | SHA-256 of a link token | [`LinkToken`](crate::store::LinkToken) |
//! | `M` | [`meta`] | a name | store metadata (migrations done, the readiness probe) |
//! | `Q` | [`mail_outbox`] | due time + key hash | [`MailJob`](crate::store::MailJob): the claim confirmation mail outbox |
//! | `U` | [`acme_key`] | key hash | [`AcmeKeyRecord`](crate::store::AcmeKeyRecord) |
//! | `Y` | [`acme_outbox`] | due time (clamped at 0) + key hash | nothing: the ACME worker's outbox, in due order |
//!
//! Domain names and e-mail addresses never contain a NUL byte, so `0x00` ends them: one
//! domain's holder entries (one address's index entries) form one prefix, and `a@b.org`
//! never matches `a@b.org.uk`'s.
//!
//! One tree rather than one per kind: the write-ahead log records a batch as one record
//! whatever it touches, and one tree keeps every scan a prefix scan. The encoders below
//! produce the exact bytes existing databases hold; changing one is a migration.

use crate::apikey::KeyHash;

/// A prefix byte followed by `parts`.
fn build(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut k = Vec::with_capacity(len);
    k.push(prefix);
    for part in parts {
        k.extend_from_slice(part);
    }
    k
}

/// A key hash from exactly 32 bytes.
fn hash_of(bytes: &[u8]) -> Option<KeyHash> {
    <[u8; 32]>::try_from(bytes).ok().map(KeyHash)
}

/// The part of `k` after the first NUL following its prefix byte.
fn after_nul(k: &[u8]) -> Option<&[u8]> {
    let rest = k.get(1..)?;
    let nul = rest.iter().position(|&b| b == 0)?;
    Some(&rest[nul + 1..])
}

/// A due time as it sorts in a key.
fn due_bytes(due: crate::store::UnixTime) -> [u8; 8] {
    // Times before 1970 do not occur; clamping keeps the byte order equal to time order.
    due.max(0).to_be_bytes()
}

/// The due time at bytes 1..9 of an outbox key.
fn due_of(k: &[u8]) -> crate::store::UnixTime {
    i64::from_be_bytes(k[1..9].try_into().expect("outbox key has a time"))
}

/// `K`: one record per API key.
pub mod api_key {
    use super::*;
    use std::ops::Bound;

    pub const PREFIX: u8 = b'K';

    pub fn encode(hash: &KeyHash) -> Vec<u8> {
        build(PREFIX, &[&hash.0])
    }

    /// The key hash of a record's key; `None` for a malformed key.
    pub fn decode(k: &[u8]) -> Option<KeyHash> {
        hash_of(&k[1..])
    }

    /// The records whose hash starts with `bytes` (a lookup by key id).
    pub fn hash_prefix(bytes: &[u8]) -> Vec<u8> {
        build(PREFIX, &[bytes])
    }

    /// The range of records after `after` (exclusive; `None`: from the first).
    pub fn after(after: Option<&KeyHash>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
        let start = match after {
            Some(hash) => Bound::Excluded(encode(hash)),
            None => Bound::Included(vec![PREFIX]),
        };
        (start, Bound::Excluded(vec![PREFIX + 1]))
    }
}

/// `D`: one entry per domain registered under a key, in the key's `list` order.
pub mod key_domain {
    use super::*;

    pub const PREFIX: u8 = b'D';

    /// The entry of `name` (a normalised domain) under `hash`.
    pub fn encode(hash: &KeyHash, name: impl AsRef<[u8]>) -> Vec<u8> {
        build(PREFIX, &[&hash.0, name.as_ref()])
    }

    /// The prefix of every entry of `hash`.
    pub fn prefix(hash: &KeyHash) -> Vec<u8> {
        build(PREFIX, &[&hash.0])
    }

    /// Where the domain name starts in an entry.
    pub const NAME_AT: usize = 33;

    /// The domain name's bytes of an entry.
    pub fn name_bytes(k: &[u8]) -> &[u8] {
        &k[NAME_AT..]
    }

    /// The domain name of an entry.
    pub fn name(k: &[u8]) -> String {
        String::from_utf8_lossy(name_bytes(k)).into_owned()
    }

    /// The key hash and domain name of an entry; `None` for a malformed one.
    pub fn decode(k: &[u8]) -> Option<(KeyHash, String)> {
        let hash = hash_of(k.get(1..NAME_AT)?)?;
        Some((hash, name(k)))
    }
}

/// `N`: one record per registered domain, whoever holds it.
pub mod domain {
    use super::*;
    use std::ops::Bound;

    pub const PREFIX: u8 = b'N';

    pub fn encode(name: &str) -> Vec<u8> {
        build(PREFIX, &[name.as_bytes()])
    }

    pub fn decode(k: &[u8]) -> String {
        String::from_utf8_lossy(&k[1..]).into_owned()
    }

    /// The prefix of every record of `host` with a port (`host:8443`, ...).
    pub fn with_port(host: &str) -> Vec<u8> {
        build(PREFIX, &[host.as_bytes(), b":"])
    }

    /// The range of records after `after` (exclusive; `None`: from the first).
    pub fn after(after: Option<&str>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
        let start = match after {
            Some(name) => Bound::Excluded(encode(name)),
            None => Bound::Included(vec![PREFIX]),
        };
        (start, Bound::Excluded(vec![PREFIX + 1]))
    }
}

/// `H`: the holder index, for each domain the keys holding it ([`super::holders`]).
pub mod holder {
    use super::*;

    pub const PREFIX: u8 = b'H';

    /// The entry saying `hash` holds `domain`.
    pub fn encode(domain: &str, hash: &KeyHash) -> Vec<u8> {
        build(PREFIX, &[domain.as_bytes(), &[0], &hash.0])
    }

    /// The prefix of every entry of `domain`.
    pub fn prefix(domain: &str) -> Vec<u8> {
        build(PREFIX, &[domain.as_bytes(), &[0]])
    }

    /// The holding key of an entry; `None` for a malformed one.
    pub fn decode(k: &[u8]) -> Option<KeyHash> {
        hash_of(after_nul(k)?)
    }
}

/// `A`: the audit trail of databases from before it had a file of its own
/// ([`super::audit_trail`]), in sequence order: moved to that file at open, never written now.
pub mod audit {
    pub const PREFIX: u8 = b'A';

    /// The key of event `seq` (what older versions wrote; tests build such databases).
    #[cfg(test)]
    pub fn encode(seq: u64) -> Vec<u8> {
        super::build(PREFIX, &[&seq.to_be_bytes()])
    }

    /// The sequence number of an event's key (0 for a malformed one).
    pub fn decode(k: &[u8]) -> u64 {
        k.get(1..9)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or_default()
    }
}

/// `S`: the bridge record of each host name.
pub mod bridge {
    use super::*;

    pub const PREFIX: u8 = b'S';

    pub fn encode(host: &str) -> Vec<u8> {
        build(PREFIX, &[host.as_bytes()])
    }

    pub fn decode(k: &[u8]) -> String {
        String::from_utf8_lossy(&k[1..]).into_owned()
    }
}

/// `O`: the bridge's outbox, host names in due order.
pub mod bridge_outbox {
    use super::*;
    use crate::store::UnixTime;

    pub const PREFIX: u8 = b'O';

    pub fn encode(due: UnixTime, host: &str) -> Vec<u8> {
        build(PREFIX, &[&due_bytes(due), host.as_bytes()])
    }

    /// The due time of an entry.
    pub fn due(k: &[u8]) -> UnixTime {
        due_of(k)
    }

    /// The due time and host name of an entry.
    pub fn decode(k: &[u8]) -> (UnixTime, String) {
        (due_of(k), String::from_utf8_lossy(&k[9..]).into_owned())
    }
}

/// `E`: the keys each e-mail address claimed (the unconfirmed-keys cap).
pub mod email_index {
    use super::*;

    pub const PREFIX: u8 = b'E';

    /// The prefix of every entry of `email` (compared case-insensitively).
    pub fn prefix(email: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(2 + email.len() + 32);
        k.push(PREFIX);
        k.extend_from_slice(email.to_ascii_lowercase().as_bytes());
        k.push(0);
        k
    }

    /// The entry saying `email` claimed `hash`.
    pub fn encode(email: &str, hash: &KeyHash) -> Vec<u8> {
        let mut k = prefix(email);
        k.extend_from_slice(&hash.0);
        k
    }

    /// The claimed key of an entry; `None` for a malformed one.
    pub fn decode(k: &[u8]) -> Option<KeyHash> {
        hash_of(after_nul(k)?)
    }
}

/// `I`: how many new addresses each source address claimed on a day (the per-day cap).
pub mod new_emails {
    use super::*;
    use std::net::IpAddr;

    pub const PREFIX: u8 = b'I';

    /// The counter of `ip` on `day` (days since the epoch).
    pub fn encode(day: i64, ip: IpAddr) -> Vec<u8> {
        build(
            PREFIX,
            &[&day.max(0).to_be_bytes(), ip.to_string().as_bytes()],
        )
    }

    /// Every counter of the days before `day`.
    pub fn before(day: i64) -> std::ops::Range<Vec<u8>> {
        vec![PREFIX]..build(PREFIX, &[&day.max(0).to_be_bytes()])
    }

    /// The day and source address of a counter; `None` for a malformed key.
    pub fn decode(k: &[u8]) -> Option<(i64, IpAddr)> {
        let day = i64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
        let ip = std::str::from_utf8(k.get(9..)?).ok()?.parse().ok()?;
        Some((day, ip))
    }
}

/// `T`: the single-use confirm/revoke link tokens, by the SHA-256 of the token.
pub mod link_token {
    use super::*;

    pub const PREFIX: u8 = b'T';

    pub fn encode(token_hash: &[u8; 32]) -> Vec<u8> {
        build(PREFIX, &[token_hash])
    }

    /// The token hash of a key; `None` for a malformed one.
    pub fn decode(k: &[u8]) -> Option<[u8; 32]> {
        k.get(1..)?.try_into().ok()
    }
}

/// `M`: store metadata.
pub mod meta {
    use super::*;

    pub const PREFIX: u8 = b'M';

    /// The e-mail index was built for keys claimed before it existed.
    pub const EMAIL_INDEX_DONE: &[u8] = b"migration:email-index-v1";
    /// The holder index is complete.
    pub const HOLDER_INDEX_DONE: &[u8] = b"holder-index-v1";
    /// The readiness probe's write.
    pub const READYZ: &[u8] = b"readyz";

    pub fn encode(name: &[u8]) -> Vec<u8> {
        build(PREFIX, &[name])
    }
}

/// `Q`: the claim confirmation mail outbox, key hashes in due order.
pub mod mail_outbox {
    use super::*;
    use crate::store::UnixTime;

    pub const PREFIX: u8 = b'Q';

    /// Unlike the other outboxes' times this one is not clamped: the bytes stay what
    /// databases already hold (a claim time is never before 1970).
    pub fn encode(due: UnixTime, hash: &KeyHash) -> Vec<u8> {
        build(PREFIX, &[&due.to_be_bytes(), &hash.0])
    }

    /// The due time and key hash of an entry.
    pub fn decode(k: &[u8]) -> (UnixTime, KeyHash) {
        let hash = KeyHash(k[9..41].try_into().expect("mail key has a key hash"));
        (due_of(k), hash)
    }
}

/// `U`: each key's ACME account record.
pub mod acme_key {
    use super::*;

    pub const PREFIX: u8 = b'U';

    pub fn encode(hash: &KeyHash) -> Vec<u8> {
        build(PREFIX, &[&hash.0])
    }

    /// The key hash of a record's key; `None` for a malformed key.
    pub fn decode(k: &[u8]) -> Option<KeyHash> {
        hash_of(&k[1..])
    }
}

/// `Y`: the ACME worker's outbox, key hashes in due order.
pub mod acme_outbox {
    use super::*;
    use crate::store::UnixTime;

    pub const PREFIX: u8 = b'Y';

    pub fn encode(due: UnixTime, hash: &KeyHash) -> Vec<u8> {
        build(PREFIX, &[&due_bytes(due), &hash.0])
    }

    /// The due time of an entry.
    pub fn due(k: &[u8]) -> UnixTime {
        due_of(k)
    }

    /// The key hash of an entry.
    pub fn decode(k: &[u8]) -> KeyHash {
        KeyHash(k[9..41].try_into().expect("outbox key has a hash"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    /// The bytes are what databases written before this module hold: a change here would
    /// orphan every existing record.
    #[test]
    fn keys_keep_their_bytes() {
        let hash = KeyHash([7; 32]);
        let with = |prefix: u8, parts: &[&[u8]]| {
            let mut k = vec![prefix];
            for p in parts {
                k.extend_from_slice(p);
            }
            k
        };
        assert_eq!(api_key::encode(&hash), with(b'K', &[&[7; 32]]));
        assert_eq!(
            key_domain::encode(&hash, "a.org"),
            with(b'D', &[&[7; 32], b"a.org"])
        );
        assert_eq!(domain::encode("a.org"), b"Na.org");
        assert_eq!(domain::with_port("a.org"), b"Na.org:");
        assert_eq!(
            holder::encode("a.org", &hash),
            with(b'H', &[b"a.org", &[0], &[7; 32]])
        );
        assert_eq!(audit::encode(5), with(b'A', &[&5u64.to_be_bytes()]));
        assert_eq!(bridge::encode("a.org"), b"Sa.org");
        assert_eq!(
            bridge_outbox::encode(-3, "a.org"),
            with(b'O', &[&0i64.to_be_bytes(), b"a.org"])
        );
        assert_eq!(
            email_index::encode("A@X.org", &hash),
            with(b'E', &[b"a@x.org", &[0], &[7; 32]])
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            new_emails::encode(3, ip),
            with(b'I', &[&3i64.to_be_bytes(), b"192.0.2.1"])
        );
        assert_eq!(
            new_emails::before(3),
            vec![b'I']..with(b'I', &[&3i64.to_be_bytes()])
        );
        assert_eq!(link_token::encode(&[1; 32]), with(b'T', &[&[1; 32]]));
        assert_eq!(meta::encode(meta::READYZ), b"Mreadyz");
        assert_eq!(
            mail_outbox::encode(9, &hash),
            with(b'Q', &[&9i64.to_be_bytes(), &[7; 32]])
        );
        assert_eq!(acme_key::encode(&hash), with(b'U', &[&[7; 32]]));
        assert_eq!(
            acme_outbox::encode(9, &hash),
            with(b'Y', &[&9i64.to_be_bytes(), &[7; 32]])
        );
    }

    #[test]
    fn keys_decode_to_what_they_were_built_from() {
        let hash = KeyHash([0; 32]);
        assert_eq!(api_key::decode(&api_key::encode(&hash)), Some(hash));
        assert_eq!(
            key_domain::decode(&key_domain::encode(&hash, "a.org:8443")),
            Some((hash, "a.org:8443".to_owned()))
        );
        assert_eq!(domain::decode(&domain::encode("a.org")), "a.org");
        // A hash full of NUL bytes still decodes: only the first NUL ends the name.
        assert_eq!(holder::decode(&holder::encode("a.org", &hash)), Some(hash));
        assert_eq!(
            email_index::decode(&email_index::encode("a@x.org", &hash)),
            Some(hash)
        );
        assert_eq!(audit::decode(&audit::encode(42)), 42);
        assert_eq!(bridge::decode(&bridge::encode("a.org")), "a.org");
        assert_eq!(
            bridge_outbox::decode(&bridge_outbox::encode(77, "a.org")),
            (77, "a.org".to_owned())
        );
        assert_eq!(
            mail_outbox::decode(&mail_outbox::encode(77, &hash)),
            (77, hash)
        );
        assert_eq!(acme_key::decode(&acme_key::encode(&hash)), Some(hash));
        assert_eq!(
            link_token::decode(&link_token::encode(&[3; 32])),
            Some([3; 32])
        );
        let ip: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            new_emails::decode(&new_emails::encode(9, ip)),
            Some((9, ip))
        );
        let due = acme_outbox::encode(77, &hash);
        assert_eq!(
            (acme_outbox::due(&due), acme_outbox::decode(&due)),
            (77, hash)
        );
    }
}
