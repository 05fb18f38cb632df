//! `command list apikey K [offset N]`: the key's domains, one page per reply (protocol.md §7).

use super::{Service, ServiceError};
use crate::protocol::{MAX_REPLY_BYTES, Reply};

/// Room for the domains on a page: the reply's limit minus the fixed parts
/// (`data total=… offset=… next=… domains=` + `status ok 200 ok`), with margin.
const PAGE_BUDGET: usize = MAX_REPLY_BYTES - 120;

pub(super) fn run(
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
    let (hash, record) = svc.authorize(&key)?;
    let mut domains = String::new();
    let mut shown = 0u64;
    let mut more = false;
    for name in svc.store.key_domains(&hash, offset as usize) {
        let name = name?;
        let extra = name.len() + usize::from(!domains.is_empty());
        if domains.len() + extra > PAGE_BUDGET {
            more = true;
            break;
        }
        if !domains.is_empty() {
            domains.push(',');
        }
        domains.push_str(&name);
        shown += 1;
    }
    let mut data = format!("total={} offset={}", record.domain_count, offset);
    if more {
        data.push_str(&format!(" next={}", u64::from(offset) + shown));
    }
    data.push_str(" domains=");
    data.push_str(&domains);
    Ok(Reply::ok_with_data(data, "ok"))
}
