//! Reconnect delays: exponential from a minimum to a maximum, with jitter so that a thousand
//! agents cut off together do not come back together.

use std::time::Duration;

use rand::RngExt;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            attempt: 0,
        }
    }

    /// The next delay: `min·2^attempt` capped at `max`, then a uniformly random point in its
    /// upper half.
    pub fn next_delay(&mut self, rng: &mut impl rand::Rng) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(31));
        let base = self.min.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = base / 2;
        half + rng.random_range(Duration::ZERO..=half)
    }

    /// After a stable connection, start again from the minimum.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn doubles_caps_jitters_and_resets() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay(&mut rng)).collect();
        for (i, d) in delays.iter().enumerate() {
            let base = Duration::from_secs(1u64 << i.min(6)).min(Duration::from_secs(60));
            assert!(
                *d >= base / 2 && *d <= base,
                "delay {i} = {d:?}, base {base:?}"
            );
        }
        assert!(delays[9] >= Duration::from_secs(30));
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_secs(1));
        let distinct: std::collections::HashSet<_> = (0..20)
            .map(|_| {
                Backoff::new(Duration::from_secs(8), Duration::from_secs(60)).next_delay(&mut rng)
            })
            .collect();
        assert!(distinct.len() > 10, "jitter spreads agents out");
    }
}
