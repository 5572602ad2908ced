//! Throttling of failed authentications per source address (`governor`), for the agent and
//! peer endpoints: a source that keeps presenting wrong tokens is answered 429 with
//! `Retry-After` for a while, whatever it presents, so tokens cannot be guessed at line rate.
//! IPv6 sources are keyed by their /64, which one host usually holds whole.

use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use lru::LruCache;

/// Failed attempts one source may make in a burst, and how fast that allowance refills.
const FAILURE_BURST: u32 = 10;
const FAILURES_PER_MINUTE: u32 = 60;
/// How long a source that went over is refused.
pub const BLOCK_FOR: Duration = Duration::from_secs(30);
/// Sources remembered as blocked at once (least recently seen forgotten first).
const BLOCKED_SOURCES: usize = 65_536;
/// Keys the limiter may hold before idle ones are swept.
const SWEEP_AT: usize = 10_000;

/// The token of an `Authorization: Bearer …` header, trimmed; `None` when absent or empty.
pub fn bearer_token(headers: &actix_web::http::header::HeaderMap) -> Option<&str> {
    headers
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Adds `Retry-After: secs` to a refusal.
pub fn set_retry_after(resp: &mut actix_web::HttpResponse, secs: u64) {
    resp.headers_mut().insert(
        actix_web::http::header::RETRY_AFTER,
        actix_web::http::header::HeaderValue::from(secs),
    );
}

pub struct AuthGuard {
    failures: DefaultKeyedRateLimiter<IpAddr>,
    blocked: Mutex<LruCache<IpAddr, Instant>>,
}

impl Default for AuthGuard {
    fn default() -> Self {
        let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_minute(n(FAILURES_PER_MINUTE)).allow_burst(n(FAILURE_BURST));
        AuthGuard {
            failures: RateLimiter::keyed(quota),
            blocked: Mutex::new(LruCache::new(
                NonZeroUsize::new(BLOCKED_SOURCES).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }
}

/// The key of a source: the address, or the /64 of an IPv6 one.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
    }
}

impl AuthGuard {
    /// Err(seconds to wait) while `ip` is refused.
    pub fn check(&self, ip: Option<IpAddr>) -> Result<(), u64> {
        let Some(ip) = ip.map(key) else {
            return Ok(());
        };
        let mut g = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        match g
            .get(&ip)
            .map(|until| until.saturating_duration_since(Instant::now()))
        {
            Some(left) if !left.is_zero() => Err(left.as_secs().max(1)),
            Some(_) => {
                g.pop(&ip);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Records a failed attempt from `ip`; Err(seconds) when this one put it over the limit.
    pub fn failed(&self, ip: Option<IpAddr>) -> Result<(), u64> {
        let Some(ip) = ip.map(key) else {
            return Ok(());
        };
        if self.failures.len() > SWEEP_AT {
            self.failures.retain_recent();
        }
        if self.failures.check_key(&ip).is_ok() {
            return Ok(());
        }
        self.blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(ip, Instant::now() + BLOCK_FOR);
        Err(BLOCK_FOR.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guessing_source_is_blocked_and_others_are_not() {
        let g = AuthGuard::default();
        let bad: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
        let good: Option<IpAddr> = Some("192.0.2.2".parse().unwrap());
        let mut blocked_after = None;
        for i in 0..100 {
            if g.failed(bad).is_err() {
                blocked_after = Some(i);
                break;
            }
        }
        assert_eq!(blocked_after, Some(FAILURE_BURST as usize));
        assert!(g.check(bad).is_err());
        assert!(g.check(good).is_ok());
        // One host's IPv6 /64 is one source.
        let a: Option<IpAddr> = Some("2001:db8::1".parse().unwrap());
        let b: Option<IpAddr> = Some("2001:db8::2".parse().unwrap());
        for _ in 0..=FAILURE_BURST {
            let _ = g.failed(a);
        }
        assert!(g.check(b).is_err());
        assert!(g.check(None).is_ok());
    }
}
