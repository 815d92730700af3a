//! Token buckets: the rate limits an endpoint and a hub set on what peers may ask of them.

use crate::time::Instant;

/// A token bucket: `per_second` on average, up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Sustained rate.
    pub per_second: f64,
    /// Most spent at once, and what a new bucket starts with.
    pub burst: f64,
}

impl RateLimit {
    /// Whether it lets anything through at all, and is a number.
    pub(crate) fn is_valid(&self) -> bool {
        self.per_second > 0.0 && self.burst >= 1.0 && self.per_second.is_finite()
    }
}

/// A bucket filled at a [`RateLimit`]'s rate.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bucket {
    /// Tokens left (a caller taking from two buckets at once reads and spends them itself).
    pub(crate) tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(limit: &RateLimit, now: Instant) -> Self {
        Bucket {
            tokens: limit.burst,
            at: now,
        }
    }

    /// Fills the bucket for the time since it was last filled; returns the tokens it holds.
    pub(crate) fn refill(&mut self, limit: &RateLimit, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        self.tokens = (self.tokens + elapsed * limit.per_second).min(limit.burst);
        self.tokens
    }

    /// Takes `n` tokens if there are that many.
    pub(crate) fn take(&mut self, limit: &RateLimit, now: Instant, n: f64) -> bool {
        if self.refill(limit, now) >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Gives back `n` tokens taken (when a second bucket refused what the first allowed).
    pub(crate) fn give_back(&mut self, limit: &RateLimit, n: f64) {
        self.tokens = (self.tokens + n).min(limit.burst);
    }
}
