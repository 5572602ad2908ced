//! Idle plain-TCP connections to `http://` upstreams, per address (ADR 0010's byte pipe): the
//! most recently used first, checked alive before reuse, dropped after an idle timeout, at most
//! a fixed number kept per address. Each connection slot has a pool of its own: a connection
//! belongs to the runtime of the slot's thread that opened it (ADR 0015) and is reused only there.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Idle connections kept per upstream address (as many as hyper's pool kept).
const MAX_IDLE_PER_ADDRESS: usize = 256;
/// How long an idle connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The pool. Connections are checked out for one exchange and checked in only when the
/// response's framing left them reusable.
pub struct ConnPool {
    idle: Mutex<HashMap<String, VecDeque<(TcpStream, Instant)>>>,
    connect_timeout: Duration,
}

/// Why no connection could be had: a refused or timed-out connect.
#[derive(Debug, thiserror::Error)]
#[error("connect to {address}: {why}")]
pub struct ConnectError {
    address: String,
    why: String,
}

impl ConnPool {
    pub fn new(connect_timeout: Duration) -> Self {
        ConnPool {
            idle: Mutex::default(),
            connect_timeout,
        }
    }

    /// An idle connection to `address` that is still open, or a new one; and whether it was
    /// reused (a reused one may still turn out closed by the upstream a moment ago).
    pub async fn checkout(&self, address: &str) -> Result<(TcpStream, bool), ConnectError> {
        while let Some((conn, since)) = self.pop(address) {
            if since.elapsed() < IDLE_TIMEOUT && open_and_quiet(&conn) {
                return Ok((conn, true));
            }
        }
        Ok((self.connect(address).await?, false))
    }

    /// A new connection to `address`, under the connect timeout.
    pub async fn connect(&self, address: &str) -> Result<TcpStream, ConnectError> {
        let err = |why: String| ConnectError {
            address: address.to_string(),
            why,
        };
        let conn = tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| err(format!("timed out after {:?}", self.connect_timeout)))?
            .map_err(|e| err(e.to_string()))?;
        let _ = conn.set_nodelay(true);
        Ok(conn)
    }

    /// Gives a connection back after a complete exchange.
    pub fn checkin(&self, address: &str, conn: TcpStream) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        // (Looked up before inserting: no new key, and no allocation, per request.)
        if !idle.contains_key(address) {
            idle.insert(address.to_string(), VecDeque::new());
        }
        let Some(list) = idle.get_mut(address) else {
            return;
        };
        while list
            .front()
            .is_some_and(|(_, since)| since.elapsed() >= IDLE_TIMEOUT)
        {
            list.pop_front();
        }
        if list.len() < MAX_IDLE_PER_ADDRESS {
            list.push_back((conn, Instant::now()));
        }
    }

    fn pop(&self, address: &str) -> Option<(TcpStream, Instant)> {
        self.idle.lock().ok()?.get_mut(address)?.pop_back()
    }
}

/// An idle connection is reusable when reading it would block: not closed by the upstream
/// (a read of 0) and with no stray bytes waiting (which no request asked for).
fn open_and_quiet(conn: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(conn.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_not_reused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let pool = ConnPool::new(Duration::from_secs(5));
        let (conn, reused) = pool.checkout(&addr).await.unwrap();
        assert!(!reused);
        let (server_side, _) = listener.accept().await.unwrap();
        pool.checkin(&addr, conn);
        // Still open: reused.
        let (conn, reused) = pool.checkout(&addr).await.unwrap();
        assert!(reused);
        pool.checkin(&addr, conn);
        // The upstream closes it while idle: a new connection instead.
        drop(server_side);
        let mut closed = false;
        for _ in 0..100 {
            // The FIN arrives asynchronously; wait for the kernel to see it.
            let (conn, reused) = pool.checkout(&addr).await.unwrap();
            if !reused {
                closed = true;
                break;
            }
            pool.checkin(&addr, conn);
            tokio::task::yield_now().await;
        }
        assert!(closed, "a closed idle connection was handed out");
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let pool = ConnPool::new(Duration::from_secs(5));
        let e = pool.checkout(&addr).await.unwrap_err();
        assert!(
            e.to_string().starts_with(&format!("connect to {addr}")),
            "{e}"
        );
    }
}
