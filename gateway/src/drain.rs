//! Leaving without losing a request (SIGTERM or SIGINT; the manifests' preStop hook first
//! gives load balancers time to stop sending): `/readyz` fails at once, new tunnels are
//! refused, each HTTP/1.1 answer says `Connection: close` (its client reconnects through the
//! load balancer to a node that stays), and every agent is asked to move its tunnel (agents
//! open one on another node before draining this one: make before break). Then the node waits
//! until its tunnels are gone and its streams finished, for at most `--drain-timeout`; what is
//! still open then (upgraded connections) is cut so clients reconnect; the node record is
//! withdrawn; exit 0.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::AppState;

/// How often the node looks whether it has drained.
const POLL: Duration = Duration::from_millis(50);

/// Completes on SIGTERM or SIGINT with the signal's name: the shutdown `main` gives
/// [`crate::run`]. Never completes when the signals cannot be watched (logged).
pub async fn signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot watch SIGTERM/SIGINT: this node will not drain on shutdown");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Drains this node (see the module doc); returns once it is empty or the timeout passed.
pub async fn drain(state: &AppState, why: &str) {
    state.draining.store(true, Ordering::SeqCst);
    let asked = state.hub.move_all();
    tracing::info!(
        signal = why,
        tunnels = asked,
        timeout_s = state.config.drain_timeout.as_secs(),
        "draining: /readyz fails, new tunnels refused, agents asked to move theirs"
    );
    let started = Instant::now();
    let deadline = started + state.config.drain_timeout;
    loop {
        let (tunnels, streams) = (state.hub.total(), state.metrics.streams.get());
        if tunnels == 0 && streams <= 0 {
            tracing::info!(
                seconds = started.elapsed().as_secs_f64(),
                "drained: no tunnel, no stream in flight"
            );
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                tunnels,
                streams,
                "drain timeout: cutting what is still open (clients and agents reconnect elsewhere)"
            );
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    state.registry.withdraw_node().await;
}
