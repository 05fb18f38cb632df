//! API keys: the bearer secret a host holds (protocol.md §6).
//!
//! The server never stores a key, only its SHA-256 [`KeyHash`]; logs and the audit trail show
//! the hash's first 12 hex digits ([`KeyHash::id`]), which identify a key to an operator
//! without revealing anything a client could use.

use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use std::fmt;
use thiserror::Error;

/// The shortest key a client may create by claiming it (KeyChest's rule).
pub const MIN_NEW_KEY_LEN: usize = 16;
const MAX_LEN: usize = 64;

/// A syntactically valid API key: 1–64 characters of `[A-Za-z0-9-]`.
///
/// Presented keys are checked only for their alphabet and length, so a key an operator
/// migrated from KeyChest (whose examples show keys like `28a7e10-1fea`) keeps working; a key
/// a client *creates* by claiming it must also be at least [`MIN_NEW_KEY_LEN`] characters
/// ([`ApiKey::is_long_enough_to_create`]).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

/// The key does not have the documented format (`422 invalid api key format`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid api key format")]
pub struct InvalidApiKey;

impl ApiKey {
    /// Checks a key as a client sent it. Keys are case-sensitive.
    pub fn parse(s: &str) -> Result<Self, InvalidApiKey> {
        let ok = (1..=MAX_LEN).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidApiKey)
        }
    }

    /// May a client create this key by claiming it? Short keys are guessable.
    pub fn is_long_enough_to_create(&self) -> bool {
        self.0.len() >= MIN_NEW_KEY_LEN
    }

    /// A fresh key: 128 bits from the operating system's CSPRNG as 8-4-4-4-12 hex, like the
    /// keys in KeyChest's examples.
    ///
    /// # Panics
    /// If the OS random source fails; there is no safe way to mint a secret without it.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 16];
        OsRng
            .try_fill_bytes(&mut bytes)
            .expect("the operating system's random source failed");
        let hex = hex::encode(bytes);
        Self(format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        ))
    }

    /// The key itself; only ever sent back to the client that minted it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash under which the key is stored.
    pub fn hash(&self) -> KeyHash {
        KeyHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

/// Keys must not reach logs by accident, so Debug shows only the key id.
impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.hash().id())
    }
}

/// SHA-256 of an API key: what the store keeps.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// The key id: the first 12 hex digits of the hash, for logs, the audit trail and
    /// operators.
    pub fn id(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({})", self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_valid_distinct_and_shaped_like_keychest_keys() {
        let a = ApiKey::generate();
        let b = ApiKey::generate();
        assert_ne!(a, b);
        assert_eq!(ApiKey::parse(a.expose()), Ok(a.clone()));
        let groups: Vec<usize> = a.expose().split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
    }

    #[test]
    fn format_rules() {
        assert!(
            ApiKey::parse("28a7e10-1fea-4c2b")
                .unwrap()
                .is_long_enough_to_create()
        );
        let short = ApiKey::parse("28a7e10-1fea").unwrap();
        assert!(!short.is_long_enough_to_create());
        assert_eq!(ApiKey::parse(""), Err(InvalidApiKey));
        assert_eq!(ApiKey::parse(&"a".repeat(65)), Err(InvalidApiKey));
        assert!(ApiKey::parse(&"a".repeat(64)).is_ok());
        assert_eq!(ApiKey::parse("abcdefgh_ijklmnop"), Err(InvalidApiKey));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let k = ApiKey::parse("secret-secret-secret").unwrap();
        assert!(!format!("{k:?}").contains("secret"));
        assert_eq!(k.hash().id().len(), 12);
    }
}
