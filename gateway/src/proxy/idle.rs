//! A body stream that fails when no chunk arrives for a while (`--body-idle-timeout`): an
//! agent that sends a response head and then nothing, or trickles, cannot hold a client
//! connection and a stream slot for ever.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

pub struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
    /// Armed only when the body has nothing to give: a body whose bytes are at hand (a small
    /// response, whole) never touches the timer wheel.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<S> IdleTimeout<S> {
    pub fn new(inner: S, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            idle,
            timer: None,
            armed: false,
        }
    }
}

impl<S, E> Stream for IdleTimeout<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(item)) => {
                self.armed = false;
                Poll::Ready(Some(item.map_err(|e| std::io::Error::other(e.to_string()))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let idle = self.idle;
                if !self.armed {
                    // The idle time runs from when the body first has nothing to give.
                    let deadline = Instant::now() + idle;
                    match self.timer.as_mut() {
                        Some(t) => t.as_mut().reset(deadline),
                        None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    self.armed = true;
                }
                let Some(timer) = self.timer.as_mut() else {
                    return Poll::Pending;
                };
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no body bytes for {idle:?}"),
                    )))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn an_idle_body_fails_and_a_busy_one_does_not() {
        let chunks = futures_util::stream::iter(vec![Ok::<_, String>(Bytes::from("a"))])
            .chain(futures_util::stream::pending());
        let mut s = IdleTimeout::new(Box::pin(chunks), Duration::from_millis(50));
        assert_eq!(s.next().await.unwrap().unwrap(), "a");
        let err = s.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        let done = futures_util::stream::iter(vec![Ok::<_, String>(Bytes::from("b"))]);
        let mut s = IdleTimeout::new(done, Duration::from_millis(50));
        assert!(s.next().await.unwrap().is_ok());
        assert!(s.next().await.is_none());
    }
}
