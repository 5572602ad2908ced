//! `Streams` with `Opener` and `Gone`: streams open only while their link accepts them, and end
//! in place.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use actix::{Actor, Context, Handler};

use super::*;
use crate::tunnel::Opener;
use crate::tunnel::test_support::Sink;

fn streams() -> Streams {
    Streams::new(crate::tunnel::test_support::state(), "test".into(), 1)
}

/// Requests open streams in place, so the table itself refuses them until the tunnel
/// registered and from the moment it drains or goes: a request that opened one after the
/// link failed its streams would wait for a head nobody sends.
#[actix_web::test]
async fn streams_open_only_while_the_link_accepts_them() {
    let (out, _rx) = tunnelgate_mux::outbox(16);
    let gone = Sink.start().recipient();
    let streams = &streams();
    let opener = Opener::new(streams.clone(), out.clone(), gone);
    assert!(matches!(opener.open(), Err(OpenError::Closed)));
    streams.set_accepting(true);
    let opened = opener.open().unwrap();
    assert_eq!(streams.len(), 1);
    streams.set_accepting(false);
    assert!(matches!(opener.open(), Err(OpenError::Closed)));
    streams.set_accepting(true);
    streams.fail_all(|| ProxyError::TunnelLost, "gone");
    assert!(matches!(
        opened.head.await.unwrap(),
        Err(ProxyError::TunnelLost)
    ));
    assert!(streams.is_empty());
    // Failed for good: accepting again is not implied.
    assert!(matches!(opener.open(), Err(OpenError::Closed)));
}

/// A stream's end reaches its table without the tunnel actor, which is told only when it
/// watches for the table to empty (a fenced tunnel closing once its last stream ends).
#[actix_web::test]
async fn streams_end_in_place_and_a_watching_actor_hears_of_the_last() {
    struct Told(tokio::sync::mpsc::Sender<StreamId>);
    impl Actor for Told {
        type Context = Context<Self>;
    }
    impl Handler<StreamGone> for Told {
        type Result = ();
        fn handle(&mut self, m: StreamGone, _: &mut Context<Self>) {
            let _ = self.0.try_send(m.id);
        }
    }
    let (told_tx, mut told) = tokio::sync::mpsc::channel(4);
    let (out, _rx) = tunnelgate_mux::outbox(16);
    let streams = streams();
    streams.set_accepting(true);
    let opener = Opener::new(streams.clone(), out, Told(told_tx).start().recipient());
    let (a, b) = (opener.open().unwrap(), opener.open().unwrap());
    a.gone.send(StreamGone {
        id: a.id,
        reset: None,
    });
    assert_eq!(streams.len(), 1, "ended in the table itself");
    assert!(!streams.watch_empty(), "one stream is still open");
    b.gone.send(StreamGone {
        id: b.id,
        reset: None,
    });
    assert!(streams.is_empty());
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), told.recv()).await;
    assert_eq!(
        first.unwrap(),
        Some(b.id),
        "told of the last stream, not the one before"
    );
}
