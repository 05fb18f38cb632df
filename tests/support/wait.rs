//! Waiting for something to become true, with a deadline instead of a fixed sleep: a test
//! that polls finishes as soon as the server is done, and fails with what it last saw when the
//! server never gets there.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// The first poll comes after this; the interval doubles up to [`MAX_INTERVAL`].
const FIRST_INTERVAL: Duration = Duration::from_millis(10);
const MAX_INTERVAL: Duration = Duration::from_millis(200);

/// Polls `check` until it returns `Ok`, and returns that value. Past `limit`, fails the test
/// with `what` and the last `Err` (what was seen instead).
pub async fn wait_until<T, E, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + limit;
    let mut interval = FIRST_INTERVAL;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => {
                panic!("{what}: not within {limit:?}; last seen: {seen:?}")
            }
            Err(_) => {}
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(MAX_INTERVAL);
    }
}

/// [`wait_until`] for code outside a runtime (child processes, blocking sockets).
pub fn wait_until_blocking<T, E: Debug>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + limit;
    let mut interval = FIRST_INTERVAL;
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => {
                panic!("{what}: not within {limit:?}; last seen: {seen:?}")
            }
            Err(_) => {}
        }
        std::thread::sleep(interval);
        interval = (interval * 2).min(MAX_INTERVAL);
    }
}

/// `Ok(())` when `done`, otherwise `Err(seen)`: turns a condition into a [`wait_until`] check.
pub fn done_or<E>(done: bool, seen: E) -> Result<(), E> {
    if done { Ok(()) } else { Err(seen) }
}
