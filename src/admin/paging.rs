//! Paging for the admin API's listings (`GET /api/domains`, `GET /api/keys`).
//!
//! A listing answers at most `limit` items (default [`DEFAULT_LIMIT`], at most
//! [`MAX_LIMIT`]) and, when more may follow, an opaque `next_cursor` to pass back as
//! `cursor`. The server reads the store a page at a time from the cursor and holds one page,
//! so the memory a request takes does not grow with the store. Filters apply before paging, and one
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

/// How many records [`count`] reads from the store at a time.
const COUNT_READ: usize = DEFAULT_LIMIT;

/// Collects one page of a listing that the store hands out a few records at a time.
///
/// `fetch(after, n)` reads up to `n` records after the position `after` (`None`: from the
/// first); the first read starts at `start`, the cursor's position. Each record is turned
/// into a view by `view`, which returns `None` for records the filters drop; `position`
/// names a record's place, for the next read and the next cursor. A read asks for what the
/// page still needs plus one (to know whether more follow), so an unfiltered page is one
/// read; filters that drop records make the page read again, up to [`SCAN_BUDGET`] records.
pub async fn collect<T, V, Fut>(
    start: Option<Vec<u8>>,
    limit: usize,
    mut fetch: impl FnMut(Option<Vec<u8>>, usize) -> Fut,
    position: impl Fn(&T) -> Vec<u8>,
    mut view: impl FnMut(T) -> Option<V>,
) -> Result<Page<V>, StoreError>
where
    Fut: Future<Output = Result<Vec<T>, StoreError>>,
{
    let mut items = Vec::with_capacity(limit.min(DEFAULT_LIMIT));
    let mut examined = 0;
    let mut after = start;
    loop {
        let want = (limit - items.len()).min(SCAN_BUDGET - examined) + 1;
        let records = fetch(after.take(), want).await?;
        let read = records.len();
        let mut records = records.into_iter().peekable();
        while let Some(record) = records.next() {
            examined += 1;
            let here = position(&record);
            if let Some(v) = view(record) {
                items.push(v);
            }
            if items.len() == limit || examined == SCAN_BUDGET {
                let more = records.peek().is_some()
                    || (read == want && !fetch(Some(here.clone()), 1).await?.is_empty());
                return Ok(Page {
                    items,
                    resume_after: more.then_some(here),
                });
            }
            after = Some(here);
        }
        if read < want {
            return Ok(Page {
                items,
                resume_after: None,
            });
        }
    }
}

/// Counts the records `keep` accepts, reading them from the store [`COUNT_READ`] at a time
/// (`fetch` and `position` as for [`collect`]).
pub async fn count<T, Fut>(
    mut fetch: impl FnMut(Option<Vec<u8>>, usize) -> Fut,
    position: impl Fn(&T) -> Vec<u8>,
    mut keep: impl FnMut(T) -> bool,
) -> Result<u64, StoreError>
where
    Fut: Future<Output = Result<Vec<T>, StoreError>>,
{
    let mut n = 0;
    let mut after = None;
    loop {
        let records = fetch(after.take(), COUNT_READ).await?;
        let read = records.len();
        after = records.last().map(&position);
        for record in records {
            if keep(record) {
                n += 1;
            }
        }
        if read < COUNT_READ {
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A store of the numbers `0..n`, read the way the store's listings are, counting reads.
    struct Numbers {
        n: u32,
        reads: Cell<usize>,
    }

    impl Numbers {
        fn new(n: u32) -> Self {
            Self {
                n,
                reads: Cell::new(0),
            }
        }

        fn fetch(
            &self,
            after: Option<Vec<u8>>,
            limit: usize,
        ) -> std::future::Ready<Result<Vec<u32>, StoreError>> {
            self.reads.set(self.reads.get() + 1);
            let from = after.map_or(0, |a| u32::from_be_bytes(a.try_into().unwrap()) + 1);
            std::future::ready(Ok((from..self.n).take(limit).collect()))
        }
    }

    fn position(v: &u32) -> Vec<u8> {
        v.to_be_bytes().to_vec()
    }

    #[tokio::test]
    async fn pages_stop_at_the_limit_and_say_where_to_resume() {
        let store = Numbers::new(10);
        let page = collect(None, 4, |a, n| store.fetch(a, n), position, Some)
            .await
            .unwrap();
        assert_eq!(page.items, [0, 1, 2, 3]);
        assert_eq!(page.resume_after, Some(position(&3)));
        assert_eq!(store.reads.get(), 1, "an unfiltered page is one read");
        let page = collect(
            Some(position(&3)),
            4,
            |a, n| store.fetch(a, n),
            position,
            Some,
        )
        .await
        .unwrap();
        assert_eq!(page.items, [4, 5, 6, 7]);
        let store = Numbers::new(4);
        let page = collect(None, 4, |a, n| store.fetch(a, n), position, Some)
            .await
            .unwrap();
        assert_eq!(page.items, [0, 1, 2, 3]);
        assert_eq!(page.resume_after, None, "nothing follows the last record");
    }

    #[tokio::test]
    async fn filters_apply_before_the_limit_and_the_scan_budget_bounds_a_request() {
        let store = Numbers::new(100);
        let even = |v: u32| v.is_multiple_of(2).then_some(v);
        let page = collect(None, 3, |a, n| store.fetch(a, n), position, even)
            .await
            .unwrap();
        assert_eq!(page.items, [0, 2, 4]);
        assert_eq!(page.resume_after, Some(position(&4)));
        // Only the last record of a read fills the page: one more read says more follow.
        let store = Numbers::new(100);
        let over_four = |v: u32| (v >= 4).then_some(v);
        let page = collect(None, 2, |a, n| store.fetch(a, n), position, over_four)
            .await
            .unwrap();
        assert_eq!(page.items, [4, 5]);
        assert_eq!(page.resume_after, Some(position(&5)));
        let store = Numbers::new(SCAN_BUDGET as u32 + 5);
        let none = |_: u32| None::<u32>;
        let page = collect(None, 10, |a, n| store.fetch(a, n), position, none)
            .await
            .unwrap();
        assert!(page.items.is_empty());
        assert_eq!(page.resume_after, Some(position(&(SCAN_BUDGET as u32 - 1))));
        let store = Numbers::new(SCAN_BUDGET as u32);
        let page = collect(None, 10, |a, n| store.fetch(a, n), position, none)
            .await
            .unwrap();
        assert_eq!(page.resume_after, None, "the budget ended with the records");
    }

    #[tokio::test]
    async fn counts_read_every_record_a_few_at_a_time() {
        for n in [0, 1, COUNT_READ as u32, 2 * COUNT_READ as u32 + 7] {
            let store = Numbers::new(n);
            let even = count(|a, n| store.fetch(a, n), position, |v| v.is_multiple_of(2))
                .await
                .unwrap();
            assert_eq!(even, u64::from(n.div_ceil(2)), "{n} records");
        }
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
