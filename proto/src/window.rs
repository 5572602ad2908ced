//! Flow-control arithmetic for one stream direction, as in HTTP/2: the receiver grants credit,
//! the sender never has more unacknowledged bytes in flight than it was granted.

use crate::limits::MAX_STREAM_WINDOW;

/// The peer broke flow control.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("peer sent {len} bytes with only {available} bytes of credit")]
    Exceeded { len: usize, available: u32 },
    #[error("peer granted credit beyond the maximum window of {MAX_STREAM_WINDOW} bytes")]
    Overflow,
}

/// The receiving side: how much the peer may still send, and how much was consumed but not yet
/// granted back. Credit goes back in batches of at least half a window, so a stream costs one
/// WINDOW frame per half window, not one per chunk.
///
/// The window grows (doubling, up to `max`) while the consumer keeps up: when credit goes back
/// and almost nothing is left unread, the sender, not the consumer, is what holds the stream
/// back, and one window per round trip is the stream's speed limit. A stream whose consumer
/// lags never grows. Growth is extra memory the stream may hold, so the caller approves each
/// step against a budget (see `mux`'s per-tunnel budget) and gets it back with [`Self::grown`].
#[derive(Debug, Clone)]
pub struct RecvWindow {
    window: u32,
    /// The window this stream started with.
    base: u32,
    /// The largest the window may grow to.
    max: u32,
    /// Bytes the peer may still send.
    available: u32,
    /// Bytes consumed locally and not yet granted back.
    pending: u32,
}

impl RecvWindow {
    /// A window that never grows.
    pub fn new(window: u32) -> Self {
        RecvWindow::growing(window, window)
    }

    /// A window of `window` bytes that may grow to `max` while its consumer keeps up.
    pub fn growing(window: u32, max: u32) -> Self {
        RecvWindow {
            window,
            base: window,
            max: max.clamp(window, MAX_STREAM_WINDOW),
            available: window,
            pending: 0,
        }
    }

    /// The current window.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Bytes the window grew beyond its start (to hand back to the budget when the stream ends).
    pub fn grown(&self) -> u32 {
        self.window - self.base
    }

    /// Accounts `len` arriving bytes; an error means the peer sent more than it was allowed.
    pub fn on_data(&mut self, len: usize) -> Result<(), FlowError> {
        let available = self.available;
        match u32::try_from(len) {
            Ok(n) if n <= available => {
                self.available -= n;
                Ok(())
            }
            _ => Err(FlowError::Exceeded { len, available }),
        }
    }

    /// Accounts `len` bytes handed to the consumer. Returns the credit to send now, if any.
    pub fn on_consumed(&mut self, len: usize) -> Option<u32> {
        self.on_consumed_growing(len, usize::MAX, |_| false)
    }

    /// As [`Self::on_consumed`], with `unread` bytes still waiting for the consumer: when that
    /// is at most an eighth of the window the window doubles (up to its maximum), if `reserve`
    /// approves the extra bytes; the extra goes to the peer with the credit.
    pub fn on_consumed_growing(
        &mut self,
        len: usize,
        unread: usize,
        reserve: impl FnOnce(u32) -> bool,
    ) -> Option<u32> {
        self.pending = self
            .pending
            .saturating_add(u32::try_from(len).unwrap_or(u32::MAX));
        if self.pending < self.window / 2 {
            return None;
        }
        let mut credit = self.pending.min(self.window - self.available);
        self.pending = 0;
        let extra = self.window.min(self.max - self.window);
        if extra > 0 && unread <= (self.window / 8) as usize && reserve(extra) {
            self.window += extra;
            credit += extra;
        }
        if credit == 0 {
            return None;
        }
        self.available += credit;
        Some(credit)
    }

    /// Bytes the peer may still send.
    pub fn available(&self) -> u32 {
        self.available
    }
}

/// The sending side's credit check for a WINDOW frame: credit held plus the grant must stay
/// within the largest window.
pub fn check_grant(held: u64, grant: u32) -> Result<(), FlowError> {
    if held + u64::from(grant) > u64::from(MAX_STREAM_WINDOW) {
        Err(FlowError::Overflow)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_back_in_half_windows() {
        let mut w = RecvWindow::new(100);
        w.on_data(60).unwrap();
        assert_eq!(w.on_consumed(30), None);
        assert_eq!(w.on_consumed(30), Some(60));
        assert_eq!(w.available(), 100);
    }

    #[test]
    fn rejects_data_beyond_credit() {
        let mut w = RecvWindow::new(100);
        w.on_data(100).unwrap();
        assert_eq!(
            w.on_data(1),
            Err(FlowError::Exceeded {
                len: 1,
                available: 0
            })
        );
    }

    #[test]
    fn never_grants_more_than_was_sent() {
        let mut w = RecvWindow::new(100);
        w.on_data(10).unwrap();
        // A consumer that reports more than arrived (a bug) cannot inflate the peer's credit.
        assert_eq!(w.on_consumed(80), Some(10));
        assert_eq!(w.available(), 100);
    }

    #[test]
    fn grows_while_the_consumer_keeps_up() {
        let mut w = RecvWindow::growing(100, 400);
        w.on_data(50).unwrap();
        // Nothing left unread when half a window is consumed: the window doubles.
        assert_eq!(w.on_consumed_growing(50, 0, |n| n == 100), Some(150));
        assert_eq!((w.window(), w.available(), w.grown()), (200, 200, 100));
        w.on_data(200).unwrap();
        assert_eq!(w.on_consumed_growing(100, 0, |_| true), Some(300));
        // At the maximum it stops growing.
        assert_eq!(w.window(), 400);
        w.on_data(300).unwrap();
        assert_eq!(w.on_consumed_growing(400, 0, |_| true), Some(400));
        assert_eq!((w.window(), w.grown()), (400, 300));
    }

    #[test]
    fn a_lagging_consumer_or_an_empty_budget_keeps_the_window() {
        let mut w = RecvWindow::growing(100, 400);
        w.on_data(100).unwrap();
        // 40 bytes still unread: the consumer is what is slow.
        assert_eq!(w.on_consumed_growing(50, 40, |_| true), Some(50));
        assert_eq!(w.window(), 100);
        // Keeping up, but the budget says no.
        assert_eq!(w.on_consumed_growing(50, 0, |_| false), Some(50));
        assert_eq!((w.window(), w.grown()), (100, 0));
        // A fixed window never asks.
        let mut f = RecvWindow::new(100);
        f.on_data(50).unwrap();
        assert_eq!(f.on_consumed_growing(50, 0, |_| panic!("asked")), Some(50));
    }

    #[test]
    fn grant_overflow() {
        assert!(check_grant(u64::from(MAX_STREAM_WINDOW), 1).is_err());
        assert!(check_grant(0, MAX_STREAM_WINDOW).is_ok());
    }
}
