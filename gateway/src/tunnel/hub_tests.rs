//! `Hub::pick`: tunnels on the caller's worker first, round robin among equals, and the
//! filters (`skip`, `conns`) before the preference.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use actix::Actor;

use super::*;
use crate::tunnel::open::Streams;
use crate::tunnel::test_support::{Sink, state};

fn tunnel(id: u64, conn: &str, worker: std::thread::ThreadId) -> TunnelRef {
    let state = state();
    let (out, _rx) = tunnelgate_mux::outbox(4);
    let sink = Sink.start();
    TunnelRef {
        id,
        conn: conn.into(),
        token_id: "t".into(),
        open: Opener::new(
            Streams::new(state, "demo".into(), id),
            out,
            sink.clone().recipient(),
        ),
        revoke: sink.clone().recipient(),
        move_away: sink.recipient(),
        since: std::time::Instant::now(),
        worker,
    }
}

#[actix_web::test]
async fn a_tunnel_on_the_callers_worker_is_picked_first() {
    let here = std::thread::current().id();
    let elsewhere = std::thread::spawn(|| std::thread::current().id())
        .join()
        .unwrap();
    let hub = Hub::default();
    hub.add("demo", tunnel(1, "a", elsewhere));
    hub.add("demo", tunnel(2, "b", here));
    hub.add("demo", tunnel(3, "c", here));
    let picks: Vec<u64> = (0..6)
        .map(|_| hub.pick("demo", &[], &[]).unwrap().0)
        .collect();
    assert!(!picks.contains(&1), "{picks:?}");
    assert!(
        picks.contains(&2) && picks.contains(&3),
        "round robin: {picks:?}"
    );
    // The filters come first: another worker's tunnel when it is the only one left.
    assert_eq!(hub.pick("demo", &[], &[2, 3]).unwrap().0, 1);
    assert_eq!(hub.pick("demo", &["a".to_string()], &[]).unwrap().0, 1);
    assert!(hub.pick("demo", &[], &[1, 2, 3]).is_none());
    assert!(hub.pick("other", &[], &[]).is_none());
}
