//! The sender's side of a stream's window.

use tokio::sync::Semaphore;
use tunnelgate_proto::window::{FlowError, check_grant};

/// Credit a sender holds for one stream: bytes it may still send. A WINDOW frame adds credit;
/// each DATA frame first takes its length.
#[derive(Debug)]
pub struct SendCredit {
    sem: Semaphore,
}

/// The stream ended while a sender waited for credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stream closed while waiting for flow-control credit")]
pub struct CreditClosed;

impl SendCredit {
    pub fn new(initial: u32) -> Self {
        SendCredit {
            sem: Semaphore::new(initial as usize),
        }
    }

    /// Adds credit from a WINDOW frame; an error when the peer grants beyond the maximum.
    pub fn grant(&self, credit: u32) -> Result<(), FlowError> {
        check_grant(self.sem.available_permits() as u64, credit)?;
        self.sem.add_permits(credit as usize);
        Ok(())
    }

    /// Waits until `len` bytes of credit are held and takes them. `len` must not exceed the
    /// stream window (frames are at most `MAX_FRAME_PAYLOAD`, windows at least that).
    pub async fn acquire(&self, len: usize) -> Result<(), CreditClosed> {
        if len == 0 {
            return Ok(());
        }
        let n = u32::try_from(len).map_err(|_| CreditClosed)?;
        self.sem
            .acquire_many(n)
            .await
            .map_err(|_| CreditClosed)?
            .forget();
        Ok(())
    }

    /// Wakes every waiter with [`CreditClosed`]: the stream is over.
    pub fn close(&self) {
        self.sem.close();
    }

    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunnelgate_proto::limits::MAX_STREAM_WINDOW;

    #[tokio::test]
    async fn waits_for_grant_and_closes() {
        let c = std::sync::Arc::new(SendCredit::new(10));
        c.acquire(10).await.unwrap();
        let c2 = c.clone();
        let waiter = tokio::spawn(async move { c2.acquire(5).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        c.grant(5).unwrap();
        waiter.await.unwrap().unwrap();
        assert!(c.grant(MAX_STREAM_WINDOW).is_ok());
        assert!(c.grant(1).is_err());
        // A closed stream sends nothing more, whatever credit it still holds.
        c.close();
        assert_eq!(c.acquire(1).await, Err(CreditClosed));
    }
}
