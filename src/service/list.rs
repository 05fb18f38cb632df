//! `command list apikey K [offset N]`: the key's domains, one page per reply (protocol.md §7).

use super::{Service, ServiceError};
use crate::protocol::{MAX_REPLY_BYTES, Reply};

/// Room for the domains on a page: the reply's limit minus the fixed parts
/// (`data total=… offset=… next=… domains=` + `status ok 200 ok`), with margin.
const PAGE_BUDGET: usize = MAX_REPLY_BYTES - 120;

/// The name length (with its comma) the first read assumes: a page of typical host names
/// (`www.dept.example.edu`) comes from one read of the store, which also holds the one name
/// that no longer fits. Shorter names take another read, sized by the names seen so far.
const ASSUMED_NAME_BYTES: usize = 20;

pub(super) async fn run(
    svc: &Service,
    apikey: &str,
    offset: Option<&str>,
) -> Result<Reply, ServiceError> {
    let key = Service::parse_key(apikey)?;
    let offset: u32 = match offset {
        None => 0,
        Some(s) if s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().map_err(|_| ServiceError::InvalidOffset)?
        }
        Some(_) => return Err(ServiceError::InvalidOffset),
    };
    let (hash, record) = svc.authorize(&key).await?;
    let mut domains = String::new();
    let mut shown = 0u64;
    let mut more = false;
    // The store hands out names a page at a time: read until the reply is full or the key
    // has no more, sizing each read by the room left and the names seen so far.
    let mut at = offset as usize;
    let mut name_bytes = ASSUMED_NAME_BYTES;
    let mut first_read = true;
    'reads: loop {
        let want = PAGE_BUDGET.saturating_sub(domains.len()) / name_bytes + 1;
        let names = svc.store.key_domains(&hash, at, want).await?;
        let read = names.len();
        at += read;
        for name in names {
            // An add before this position between two reads moves names already shown into
            // this read: show each name once, in order.
            if !first_read
                && domains
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| *name <= *last)
            {
                continue;
            }
            let extra = name.len() + usize::from(!domains.is_empty());
            if domains.len() + extra > PAGE_BUDGET {
                more = true;
                break 'reads;
            }
            if !domains.is_empty() {
                domains.push(',');
            }
            domains.push_str(&name);
            shown += 1;
        }
        if read < want {
            break;
        }
        first_read = false;
        name_bytes = domains.len() / shown.max(1) as usize + 1;
    }
    let mut data = format!("total={} offset={}", record.domain_count, offset);
    if more {
        data.push_str(&format!(" next={}", u64::from(offset) + shown));
    }
    data.push_str(" domains=");
    data.push_str(&domains);
    Ok(Reply::ok_with_data(data, "ok"))
}
