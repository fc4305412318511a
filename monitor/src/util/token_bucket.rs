//! A token bucket: the rate limit of event reads, event-log lines and label admissions.

use std::time::Instant;

/// A token bucket: `capacity` at once, refilled at `per_second`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn full(capacity: f64, per_second: f64, now: Instant) -> Self {
        TokenBucket {
            tokens: capacity,
            capacity,
            per_second,
            at: now,
        }
    }

    /// Whole tokens available at `now`.
    pub fn available(&mut self, now: Instant) -> f64 {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.capacity);
        self.at = self.at.max(now);
        self.tokens.floor()
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.take_up_to(1.0, now) == 1.0
    }

    /// Takes as many tokens as there are, up to `wanted`; returns how many.
    pub fn take_up_to(&mut self, wanted: f64, now: Instant) -> f64 {
        let taken = self.available(now).min(wanted);
        self.tokens -= taken;
        taken
    }

    /// Returns tokens taken but not used.
    pub fn give_back(&mut self, tokens: f64) {
        self.tokens = (self.tokens + tokens).min(self.capacity);
    }
}
