//! Paging for the admin API's listings (`GET /api/domains`, `GET /api/keys`).
//!
//! A listing answers at most `limit` items (default [`DEFAULT_LIMIT`], at most
//! [`MAX_LIMIT`]) and, when more may follow, an opaque `next_cursor` to pass back as
//! `cursor`. The server reads the store lazily from the cursor and holds one page, so the
//! memory a request takes does not grow with the store. Filters apply before paging, and one
//! request examines at most [`SCAN_BUDGET`] records: a filter that matches little answers a
//! short (even empty) page with a `next_cursor` instead of scanning the whole store at once.
//! A client reads pages until `next_cursor` is absent.

use super::ApiError;
use crate::store::StoreError;
use axum::http::StatusCode;

/// Items per page when the request gives no `limit`.
pub const DEFAULT_LIMIT: usize = 1000;

/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 5000;

/// The most records one request examines (matching its filters or not).
pub const SCAN_BUDGET: usize = 20_000;

/// What a cursor continues: a cursor of one listing is refused by the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Domains,
    Keys,
}

impl Listing {
    fn tag(self) -> u8 {
        match self {
            Listing::Domains => b'd',
            Listing::Keys => b'k',
        }
    }
}

/// One page: the items and, when more may follow, the store key to continue after.
pub struct Page<V> {
    pub items: Vec<V>,
    pub resume_after: Option<Vec<u8>>,
}

impl<V> Page<V> {
    /// The `next_cursor` to answer.
    pub fn next_cursor(&self, listing: Listing) -> Option<String> {
        self.resume_after.as_deref().map(|k| encode(listing, k))
    }
}

/// Checks a request's `limit`.
pub fn limit(requested: Option<usize>) -> Result<usize, ApiError> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit={n}: give 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})"),
        )),
    }
}

/// The position a request's `cursor` names (`None`: from the start).
pub fn resume_after(listing: Listing, cursor: Option<&str>) -> Result<Option<Vec<u8>>, ApiError> {
    let Some(cursor) = cursor.filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let bytes = hex::decode(cursor).ok();
    match bytes.as_deref() {
        Some([tag, rest @ ..]) if *tag == listing.tag() => Ok(Some(rest.to_vec())),
        _ => Err(bad_cursor()),
    }
}

/// The answer to a cursor this server did not issue (or issued for another listing).
pub fn bad_cursor() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "cursor is not one this listing answered: pass `next_cursor` from the previous page unchanged, or start again without `cursor`",
    )
}

fn encode(listing: Listing, position: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(1 + position.len());
    bytes.push(listing.tag());
    bytes.extend_from_slice(position);
    hex::encode(bytes)
}

/// Collects one page from `records` (already positioned after the cursor): each record is
/// turned into a view by `view`, which returns `None` for records the filters drop;
/// `position` names a record's place for the next cursor.
pub fn collect<T, V>(
    records: impl Iterator<Item = Result<T, StoreError>>,
    limit: usize,
    position: impl Fn(&T) -> Vec<u8>,
    mut view: impl FnMut(T) -> Option<V>,
) -> Result<Page<V>, StoreError> {
    let mut items = Vec::with_capacity(limit.min(DEFAULT_LIMIT));
    let mut records = records.peekable();
    let mut examined = 0;
    while let Some(record) = records.next() {
        let record = record?;
        examined += 1;
        let here = position(&record);
        if let Some(v) = view(record) {
            items.push(v);
        }
        if items.len() == limit || examined == SCAN_BUDGET {
            let more = records.peek().is_some();
            return Ok(Page {
                items,
                resume_after: more.then_some(here),
            });
        }
    }
    Ok(Page {
        items,
        resume_after: None,
    })
}

/// Counts the records `keep` accepts, reading them one at a time.
pub fn count<T>(
    records: impl Iterator<Item = Result<T, StoreError>>,
    mut keep: impl FnMut(T) -> bool,
) -> Result<u64, StoreError> {
    let mut n = 0;
    for record in records {
        if keep(record?) {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(n: u32) -> impl Iterator<Item = Result<u32, StoreError>> {
        (0..n).map(Ok)
    }

    fn position(v: &u32) -> Vec<u8> {
        v.to_be_bytes().to_vec()
    }

    #[test]
    fn pages_stop_at_the_limit_and_say_where_to_resume() {
        let page = collect(numbers(10), 4, position, Some).unwrap();
        assert_eq!(page.items, [0, 1, 2, 3]);
        assert_eq!(page.resume_after, Some(position(&3)));
        let page = collect(numbers(4), 4, position, Some).unwrap();
        assert_eq!(page.items, [0, 1, 2, 3]);
        assert_eq!(page.resume_after, None, "nothing follows the last record");
    }

    #[test]
    fn filters_apply_before_the_limit_and_the_scan_budget_bounds_a_request() {
        let even = |v: u32| v.is_multiple_of(2).then_some(v);
        let page = collect(numbers(100), 3, position, even).unwrap();
        assert_eq!(page.items, [0, 2, 4]);
        assert_eq!(page.resume_after, Some(position(&4)));
        let none = |_: u32| None::<u32>;
        let page = collect(numbers(SCAN_BUDGET as u32 + 5), 10, position, none).unwrap();
        assert!(page.items.is_empty());
        assert_eq!(page.resume_after, Some(position(&(SCAN_BUDGET as u32 - 1))));
    }

    #[test]
    fn cursors_are_bound_to_their_listing_and_limits_are_checked() {
        let cursor = encode(Listing::Keys, b"abc");
        assert_eq!(
            resume_after(Listing::Keys, Some(&cursor)).unwrap(),
            Some(b"abc".to_vec())
        );
        assert!(resume_after(Listing::Domains, Some(&cursor)).is_err());
        assert!(resume_after(Listing::Keys, Some("zz")).is_err());
        assert_eq!(resume_after(Listing::Keys, None).unwrap(), None);
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(MAX_LIMIT + 1)).is_err());
    }
}
