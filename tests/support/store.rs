//! Whole listings of the store, for assertions (the store hands them out a page at a time).

use certline::apikey::KeyHash;
use certline::store::{AuditEvent, Store};

/// How many records one read asks for.
const PAGE: usize = 1000;

/// Every audit event, oldest first.
pub async fn audit_trail(store: &Store) -> Vec<AuditEvent> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .audit_events(after, PAGE)
            .await
            .expect("reading the audit trail");
        let last_page = page.len() < PAGE;
        after = page.last().map(|(seq, _)| *seq);
        out.extend(page.into_iter().map(|(_, event)| event));
        if last_page {
            return out;
        }
    }
}

/// Every domain registered under `hash`, in `list` order.
pub async fn key_domains(store: &Store, hash: &KeyHash) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let page = store
            .key_domains(hash, out.len(), PAGE)
            .await
            .expect("reading a key's domains");
        let last_page = page.len() < PAGE;
        out.extend(page);
        if last_page {
            return out;
        }
    }
}
