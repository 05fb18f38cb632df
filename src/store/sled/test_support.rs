//! What the sled backend's unit tests share: opening a store in a temporary directory.

use super::SledStore;
use super::durable::{DurabilityMode, Timing};
use crate::apikey::{ApiKey, KeyHash};
use crate::store::{AuditEvent, ClaimCaps, StoreError};
use std::path::Path;
use std::time::Duration;

/// A documentation address (RFC 5737) for the client in tests.
pub const IP: &str = "192.0.2.1";

/// Opens the store in `dir`, durable mode.
pub fn open(dir: &Path) -> SledStore {
    open_in(dir, DurabilityMode::Durable)
}

/// Opens the store in `dir`, waiting for a previous handle's file lock to go.
pub fn open_in(dir: &Path, mode: DurabilityMode) -> SledStore {
    let timing = Timing {
        relaxed_flush: Duration::from_secs(1),
        // No checkpoint during a test: the log segments stay and are replayed.
        checkpoint: Duration::from_secs(3600),
    };
    // sled's background threads let go of the previous handle's file lock a moment after it
    // is dropped; a real restart is another process and does not wait.
    let mut attempts = 0;
    loop {
        match SledStore::open(dir, mode, timing) {
            Ok(store) => return store,
            Err(StoreError::Open { .. }) if attempts < 200 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(25));
            }
            Err(e) => panic!("opening the store: {e}"),
        }
    }
}

/// The whole audit trail, oldest first.
pub async fn audit_trail(store: &SledStore) -> Vec<AuditEvent> {
    let events = store.audit_events(None, usize::MAX).await;
    events
        .expect("reading the audit trail")
        .into_iter()
        .map(|(_, e)| e)
        .collect()
}

/// A new key, created from [`IP`] at time 0, holding `domains`.
pub async fn key_with_domains(store: &SledStore, domains: &[&str]) -> KeyHash {
    let ip = IP.parse().expect("an address");
    let hash = ApiKey::generate().hash();
    let caps = ClaimCaps::default();
    let created = store.create_key(&hash, None, &caps, ip, 0).await;
    created.expect("creating a key");
    for name in domains {
        let domain = name.parse().expect("a domain");
        store
            .add_domain(&hash, &domain, ip, 0)
            .await
            .expect("adding a domain");
    }
    hash
}
