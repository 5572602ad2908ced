//! `Streams` and `Opener`: streams open only while their link accepts them.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use actix::{Actor, Context, Handler};

use super::*;

struct Sink;
impl Actor for Sink {
    type Context = Context<Self>;
}
impl Handler<StreamGone> for Sink {
    type Result = ();
    fn handle(&mut self, _: StreamGone, _: &mut Context<Self>) {}
}

fn streams() -> Streams {
    let config = crate::config::Config::for_listen("127.0.0.1:0".parse().unwrap());
    Streams::new(Arc::new(AppState::new(config).unwrap()), "test".into(), 1)
}

/// Requests open streams in place, so the table itself refuses them until the tunnel
/// registered and from the moment it drains or goes: a request that opened one after the
/// link failed its streams would wait for a head nobody sends.
#[actix_web::test]
async fn streams_open_only_while_the_link_accepts_them() {
    let (out, _rx) = tunnelgate_mux::outbox(16);
    let gone = Sink.start().recipient();
    let opener = Opener::Direct {
        streams: streams(),
        out: out.clone(),
        gone,
    };
    let Opener::Direct { streams, .. } = &opener else {
        unreachable!()
    };
    assert!(matches!(opener.open().await, Err(OpenError::Closed)));
    streams.set_accepting(true);
    let opened = opener.open().await.unwrap();
    assert_eq!(streams.len(), 1);
    streams.set_accepting(false);
    assert!(matches!(opener.open().await, Err(OpenError::Closed)));
    streams.set_accepting(true);
    streams.fail_all(|| ProxyError::TunnelLost, "gone");
    assert!(matches!(
        opened.head.await.unwrap(),
        Err(ProxyError::TunnelLost)
    ));
    assert!(streams.is_empty());
    // Failed for good: accepting again is not implied.
    assert!(matches!(opener.open().await, Err(OpenError::Closed)));
}
