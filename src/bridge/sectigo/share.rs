//! This instance's share of the deployment's Sectigo request budget.
//!
//! `[sectigo] max_requests_per_second` and `max_concurrency` are what the whole deployment
//! may spend toward SCM, however many certline instances share one PostgreSQL database: N
//! instances each using the full numbers would multiply them. Each instance therefore limits
//! itself to the budget divided by the live instances ([`share`]), which the store counts
//! from heartbeats (`Store::live_instances`; always 1 on the embedded store), and re-divides
//! when that count changes: an instance that stops or dies leaves its share to the others.
//!
//! [`Limits`] applies the share to this client's requests: a `governor` rate limiter,
//! rebuilt when the rate changes (it cannot be re-set in place), and a semaphore whose size
//! follows the concurrent share. A semaphore cannot take back permits in use, so a shrink
//! forgets the free permits it can and records the rest as a debt that returning permits pay
//! (they are forgotten instead of returned): the permits in use never exceed the new share
//! once the requests that began under the old one are done.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{Semaphore, SemaphorePermit, watch};

use super::error::SectigoError;

/// The least rate an instance keeps however many instances share the budget (one request
/// every ten seconds), so that none is starved to a standstill. With more than
/// `max_requests_per_second / MIN_REQUESTS_PER_SECOND` instances the deployment exceeds the
/// budget by this floor; a warning says so.
pub const MIN_REQUESTS_PER_SECOND: f64 = 0.1;

/// How many instances share the budget now (from the store).
pub type LiveInstances = watch::Receiver<usize>;

/// What one instance may spend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    /// The live instances it was divided by.
    pub instances: usize,
    /// Requests in flight at once: at least 1.
    pub max_concurrency: usize,
    /// Requests per second: at least [`MIN_REQUESTS_PER_SECOND`] (or the whole budget, if
    /// that is smaller).
    pub max_requests_per_second: f64,
    /// Whether a floor made this share larger than budget / instances (the deployment then
    /// spends more than its budget).
    pub floored: bool,
}

/// The budget divided among `instances` (0 counts as 1): concurrency rounded down, at least
/// one request in flight; the rate divided exactly, at least [`MIN_REQUESTS_PER_SECOND`].
pub fn share(max_concurrency: usize, max_requests_per_second: f64, instances: usize) -> Share {
    let instances = instances.max(1);
    let concurrency = max_concurrency / instances;
    let rate = max_requests_per_second / instances as f64;
    let rate_floor = MIN_REQUESTS_PER_SECOND.min(max_requests_per_second);
    Share {
        instances,
        max_concurrency: concurrency.max(1),
        max_requests_per_second: rate.max(rate_floor),
        floored: concurrency == 0 || rate < rate_floor,
    }
}

/// The concurrency and rate limits of one client, following the live instances.
pub(super) struct Limits {
    budget_concurrency: usize,
    budget_rps: f64,
    live: Option<LiveInstances>,
    permits: Semaphore,
    state: Mutex<State>,
}

struct State {
    share: Share,
    limiter: Arc<DefaultDirectRateLimiter>,
    /// Permits in use that are forgotten, not returned, when released (a shrink's rest).
    debt: usize,
}

/// A request's place among the concurrent ones; released (or paid into a shrink's debt)
/// when dropped.
pub(super) struct Permit<'a> {
    permit: Option<SemaphorePermit<'a>>,
    limits: &'a Limits,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut state = self.limits.lock();
        if let Some(permit) = self.permit.take()
            && state.debt > 0
        {
            state.debt -= 1;
            permit.forget();
        }
        // Otherwise the permit returns to the semaphore as it drops, still under the lock.
    }
}

impl Limits {
    /// The limits for the deployment budget, divided by `live` (1 when `None`).
    pub(super) fn new(
        max_concurrency: usize,
        max_requests_per_second: f64,
        live: Option<LiveInstances>,
    ) -> Result<Self, SectigoError> {
        if !(max_requests_per_second.is_finite() && max_requests_per_second > 0.0) {
            return Err(SectigoError::Setup(
                "max_requests_per_second must be a positive number".into(),
            ));
        }
        let instances = live.as_ref().map_or(1, |l| *l.borrow());
        let share = share(max_concurrency.max(1), max_requests_per_second, instances);
        let limiter = Arc::new(rate_limiter(share.max_requests_per_second)?);
        if instances > 1 {
            announce(&share, max_concurrency, max_requests_per_second);
        }
        Ok(Self {
            budget_concurrency: max_concurrency.max(1),
            budget_rps: max_requests_per_second,
            live,
            permits: Semaphore::new(share.max_concurrency),
            state: Mutex::new(State {
                share,
                limiter,
                debt: 0,
            }),
        })
    }

    /// Waits for a place among the concurrent requests of this instance's share.
    pub(super) async fn permit(&self) -> Result<Permit<'_>, SectigoError> {
        self.follow();
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| SectigoError::Setup("client is shutting down".into()))?;
        Ok(Permit {
            permit: Some(permit),
            limits: self,
        })
    }

    /// Waits until this instance's rate share lets one more request go.
    pub(super) async fn until_ready(&self) {
        self.follow();
        let limiter = self.lock().limiter.clone();
        limiter.until_ready().await;
    }

    /// This instance's share now.
    pub(super) fn share(&self) -> Share {
        self.lock().share
    }

    /// Re-divides the budget if the live count changed since the last look.
    fn follow(&self) {
        let Some(live) = &self.live else { return };
        let instances = (*live.borrow()).max(1);
        let mut state = self.lock();
        if state.share.instances == instances {
            return;
        }
        let next = share(self.budget_concurrency, self.budget_rps, instances);
        if next.max_requests_per_second != state.share.max_requests_per_second {
            match rate_limiter(next.max_requests_per_second) {
                Ok(limiter) => state.limiter = Arc::new(limiter),
                // Cannot happen for a rate below the valid budget; keep the old limiter.
                Err(e) => tracing::error!(error = %e, "cannot rebuild the Sectigo rate limiter"),
            }
        }
        let (old, new) = (state.share.max_concurrency, next.max_concurrency);
        if new < old {
            let shrink = old - new;
            let forgotten = self.permits.forget_permits(shrink);
            state.debt += shrink - forgotten;
        } else if new > old {
            let grow = new - old;
            let paid = grow.min(state.debt);
            state.debt -= paid;
            self.permits.add_permits(grow - paid);
        }
        state.share = next;
        drop(state);
        announce(&next, self.budget_concurrency, self.budget_rps);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A limiter of `rps` requests per second with a burst of one.
fn rate_limiter(rps: f64) -> Result<DefaultDirectRateLimiter, SectigoError> {
    let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rps))
        .ok_or_else(|| SectigoError::Setup("max_requests_per_second is too large".into()))?
        .allow_burst(NonZeroU32::MIN);
    Ok(RateLimiter::direct(quota))
}

/// Logs this instance's share (when it changes).
fn announce(share: &Share, budget_concurrency: usize, budget_rps: f64) {
    tracing::info!(
        instances = share.instances,
        max_requests_per_second = share.max_requests_per_second,
        max_concurrency = share.max_concurrency,
        deployment_max_requests_per_second = budget_rps,
        deployment_max_concurrency = budget_concurrency,
        "this instance's share of the Sectigo request budget"
    );
    if share.floored {
        tracing::warn!(
            instances = share.instances,
            "more instances than the Sectigo budget divides among: each keeps at least one \
             request in flight and {MIN_REQUESTS_PER_SECOND} requests per second, so together \
             they exceed [sectigo] max_concurrency or max_requests_per_second; raise those or \
             run fewer instances"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_divided_among_the_live_instances() {
        let one = share(4, 10.0, 1);
        assert_eq!(
            (one.max_concurrency, one.max_requests_per_second),
            (4, 10.0)
        );
        assert!(!one.floored);
        let two = share(4, 10.0, 2);
        assert_eq!((two.max_concurrency, two.max_requests_per_second), (2, 5.0));
        // Concurrency rounds down: together never more than the budget.
        let three = share(4, 10.0, 3);
        assert_eq!(three.max_concurrency, 1);
        assert!((three.max_requests_per_second * 3.0 - 10.0).abs() < 1e-9);
        assert!(!three.floored);
        // No instance count is treated as one.
        assert_eq!(share(4, 10.0, 0), one);
    }

    #[test]
    fn each_share_keeps_a_floor_and_says_when_it_applies() {
        let many = share(2, 2.0, 100);
        assert_eq!(many.max_concurrency, 1);
        assert_eq!(many.max_requests_per_second, MIN_REQUESTS_PER_SECOND);
        assert!(many.floored);
        // A budget below the floor is not raised to it.
        let tiny = share(1, 0.05, 4);
        assert_eq!(tiny.max_requests_per_second, 0.05);
    }

    #[tokio::test]
    async fn the_concurrent_share_follows_the_live_count_even_with_permits_in_use() {
        let (tx, rx) = watch::channel(1usize);
        let limits = Limits::new(4, 1000.0, Some(rx)).unwrap();
        let held: Vec<_> = futures_util::future::join_all((0..4).map(|_| limits.permit()))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(limits.permits.available_permits(), 0);
        // Two instances now: the share is 2, with 4 in use; the next two releases are
        // forgotten, then releases return.
        tx.send(2).unwrap();
        limits.follow();
        assert_eq!(limits.share().max_concurrency, 2);
        assert_eq!(limits.lock().debt, 2);
        drop(held);
        assert_eq!(limits.permits.available_permits(), 2);
        assert_eq!(limits.lock().debt, 0);
        // Back to one instance: the full budget again.
        tx.send(1).unwrap();
        let again = limits.permit().await.unwrap();
        assert_eq!(limits.permits.available_permits(), 3);
        drop(again);
        assert_eq!(limits.share().max_requests_per_second, 1000.0);
    }
}
