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
#[derive(Debug, Clone)]
pub struct RecvWindow {
    window: u32,
    /// Bytes the peer may still send.
    available: u32,
    /// Bytes consumed locally and not yet granted back.
    pending: u32,
}

impl RecvWindow {
    pub fn new(window: u32) -> Self {
        RecvWindow {
            window,
            available: window,
            pending: 0,
        }
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
        self.pending = self
            .pending
            .saturating_add(u32::try_from(len).unwrap_or(u32::MAX));
        if self.pending >= self.window / 2 {
            let credit = self.pending.min(self.window - self.available);
            self.pending = 0;
            if credit > 0 {
                self.available += credit;
                return Some(credit);
            }
        }
        None
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
    fn grant_overflow() {
        assert!(check_grant(u64::from(MAX_STREAM_WINDOW), 1).is_err());
        assert!(check_grant(0, MAX_STREAM_WINDOW).is_ok());
    }
}
