//! A token bucket: `rate` tokens per second, holding at most one second's
//! worth (and at least one token). Time comes in as an argument.

use std::time::Instant;

/// One bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` per second; a rate of 0 never
    /// limits.
    pub fn new(rate: f64, now: Instant) -> Self {
        Self {
            rate,
            tokens: rate.max(1.0),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_allows_its_rate_per_second_and_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, t0);
        let granted = (0..100).filter(|_| b.take(t0)).count();
        assert_eq!(granted, 10, "a full bucket holds one second's worth");
        assert!(!b.take(t0 + Duration::from_millis(50)), "half a token");
        assert!(
            b.take(t0 + Duration::from_millis(100)),
            "one token after 0.1 s"
        );
        let granted = (0..100)
            .filter(|_| b.take(t0 + Duration::from_secs(60)))
            .count();
        assert_eq!(granted, 10, "never more than one second's worth banked");
    }

    #[test]
    fn rate_zero_never_limits() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0.0, t0);
        assert!((0..10_000).all(|_| b.take(t0)));
    }
}
