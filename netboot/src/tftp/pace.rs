//! A byte-rate cap shared by the transfers of one client: a token bucket. Pure: the caller passes
//! the time. A transfer asks [`Bucket::delay`] before each datagram, sleeps that long, then
//! [`Bucket::charge`]s what it sent; the balance may go negative by one datagram, which the next
//! delay pays back, so the long-run rate never exceeds the cap.

use std::time::{Duration, Instant};

/// Tokens are bytes; they refill at `rate` per second up to `burst`.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: u64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

/// The bytes a client with `rate` may get at once: a quarter second of the rate, but at least two
/// of the largest datagrams, so one window is not cut up.
pub fn burst(rate: u64) -> u64 {
    (rate / 4).max(2 * 65468)
}

impl Bucket {
    /// A full bucket ([`burst`]) for `rate` bytes per second (at least 1).
    pub fn new(rate: u64, now: Instant) -> Bucket {
        let rate = rate.max(1);
        let burst = burst(rate) as f64;
        Bucket {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate as f64).min(self.burst);
        self.at = self.at.max(now);
    }

    /// How long to wait before the next datagram may go.
    pub fn delay(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate as f64)
        }
    }

    /// Takes `bytes` sent at `now`.
    pub fn charge(&mut self, bytes: usize, now: Instant) {
        self.refill(now);
        self.tokens -= bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends 10 MB of 1000-byte datagrams at 1 MB/s with simulated time: the burst goes at once,
    /// the rest at the rate, never faster.
    #[test]
    fn the_long_run_rate_stays_under_the_cap() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut b = Bucket::new(1_000_000, t0);
        let mut sent = 0u64;
        while sent < 10_000_000 {
            now += b.delay(now);
            b.charge(1000, now);
            sent += 1000;
        }
        let secs = (now - t0).as_secs_f64();
        // The burst (250 kB) is free; the other 9.75 MB take 9.75 s at 1 MB/s.
        let want = (10_000_000.0 - 250_000.0 - 1000.0) / 1_000_000.0;
        assert!(secs >= want - 0.01 && secs < want + 0.01, "{secs}");
    }

    #[test]
    fn an_idle_client_gets_a_burst_not_a_backlog() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100_000, t0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.delay(later), Duration::ZERO);
        b.charge(200_000, later);
        // The burst is 2 × 65468 bytes: ~69 kB over, ~0.69 s at 100 kB/s.
        let d = b.delay(later).as_secs_f64();
        assert!(
            (d - (200_000.0 - 130_936.0) / 100_000.0).abs() < 1e-6,
            "{d}"
        );
    }
}
