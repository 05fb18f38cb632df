//! What the operator's inventory shows of one registered domain (the admin API's
//! `GET /api/domains`), as every backend returns it.

use super::{BridgeRecord, UnixTime};

/// One registered domain as the inventory shows it.
#[derive(Debug, Clone)]
pub struct InventoryRow {
    /// The normalised domain (`name` or `name:port`).
    pub domain: String,
    /// When any key first registered it.
    pub registered_at: UnixTime,
    /// Its bridge record (keyed by host name), if the bridge has seen it.
    pub bridge: Option<BridgeRecord>,
    /// The keys that hold it now.
    pub holders: Vec<Holder>,
}

/// A key holding a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The key id (first 12 hex digits of the key's hash).
    pub key_id: String,
    pub confirmed: bool,
    pub revoked: bool,
}
