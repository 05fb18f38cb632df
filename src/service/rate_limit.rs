//! Per-source-address token buckets for `apikey` and `claim`, the two commands that create
//! state for anyone who connects. Built on `governor`'s keyed limiter (GCRA).

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use std::net::IpAddr;
use std::num::NonZeroU32;

/// Per-source-address token buckets for the commands that create state out of nothing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    pub apikey_per_minute: NonZeroU32,
    pub apikey_burst: NonZeroU32,
    pub claim_per_minute: NonZeroU32,
    pub claim_burst: NonZeroU32,
}

impl Default for RateLimits {
    fn default() -> Self {
        let n = |v| NonZeroU32::new(v).expect("non-zero default");
        Self {
            apikey_per_minute: n(30),
            apikey_burst: n(10),
            claim_per_minute: n(30),
            claim_burst: n(10),
        }
    }
}

/// The limiters, one bucket per command and address.
pub struct RateLimiters {
    apikey: DefaultKeyedRateLimiter<IpAddr>,
    claim: DefaultKeyedRateLimiter<IpAddr>,
}

impl RateLimiters {
    /// Limiters with the configured rates.
    pub fn new(config: &RateLimits) -> Self {
        let quota = |per_minute, burst| Quota::per_minute(per_minute).allow_burst(burst);
        Self {
            apikey: RateLimiter::keyed(quota(config.apikey_per_minute, config.apikey_burst)),
            claim: RateLimiter::keyed(quota(config.claim_per_minute, config.claim_burst)),
        }
    }

    /// May `ip` mint a key now? Takes a token if so.
    pub fn allow_apikey(&self, ip: IpAddr) -> bool {
        counted(self.apikey.check_key(&ip).is_ok(), "apikey")
    }

    /// May `ip` claim a key now? Takes a token if so.
    pub fn allow_claim(&self, ip: IpAddr) -> bool {
        counted(self.claim.check_key(&ip).is_ok(), "claim")
    }

    /// Forgets addresses whose buckets are full again, so a scan from many addresses does
    /// not grow memory without bound. Called periodically by the server.
    pub fn prune(&self) {
        self.apikey.retain_recent();
        self.claim.retain_recent();
        self.apikey.shrink_to_fit();
        self.claim.shrink_to_fit();
    }
}

/// Counts a refusal for the metrics (`certline_rate_limited_total`).
fn counted(allowed: bool, command: &'static str) -> bool {
    if !allowed {
        metrics::counter!("certline_rate_limited_total", "command" => command).increment(1);
    }
    allowed
}
