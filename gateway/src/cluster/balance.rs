//! Spreading agent tunnels over the nodes (scale-out). Each membership tick a node compares
//! the tunnels it holds with the live nodes' records (each announces its count); one holding
//! more than its share (the mean, rounded up, plus a tenth of it and at least one) asks a few
//! agents to move: at most a tenth of its tunnels per tick, the oldest first, none younger than
//! three ticks. Each agent opens a tunnel on another node before it closes this one (make before
//! break, as for a drain), so moving loses nothing; a new node fills within a few ticks while
//! no node ever sends more than a tenth of its agents away at once.

use std::sync::Arc;

use crate::AppState;

/// How many tunnels a node holding `mine` should send away this tick, given every live node's
/// count (its own included).
pub fn excess(mine: u64, all: &[u64]) -> u64 {
    let n = all.len() as u64;
    if n < 2 {
        return 0;
    }
    let share = all.iter().sum::<u64>().div_ceil(n);
    let tolerance = (share / 10).max(1);
    if mine <= share + tolerance {
        return 0;
    }
    (mine - share).min((mine / 10).max(1))
}

/// One tick of spreading, after this node announced itself.
pub async fn rebalance(state: &Arc<AppState>) {
    if state.is_draining() {
        return;
    }
    let Ok(nodes) = state.registry.nodes().await else {
        return;
    };
    let mine = state.hub.total() as u64;
    let counts: Vec<u64> = nodes.iter().map(|(_, r)| r.tunnels).collect();
    let n = excess(mine, &counts);
    if n == 0 {
        return;
    }
    let tick = state.config.heartbeat_interval;
    let asked = state.hub.move_some(n as usize, tick * 3);
    if asked > 0 {
        state.metrics.tunnels_moved(asked as u64);
        tracing::info!(
            tunnels = mine,
            nodes = counts.len(),
            share = counts.iter().sum::<u64>().div_ceil(counts.len() as u64),
            asked,
            "rebalancing: asking agents to move tunnels to other nodes"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::excess;

    #[test]
    fn a_node_alone_or_within_its_share_keeps_its_tunnels() {
        assert_eq!(excess(100, &[100]), 0);
        assert_eq!(excess(0, &[]), 0);
        assert_eq!(excess(51, &[51, 49]), 0);
        assert_eq!(excess(11, &[11, 9, 10]), 0);
    }

    #[test]
    fn a_loaded_node_sends_at_most_a_tenth_per_tick() {
        // A new node beside two with 100 each: share 67.
        assert_eq!(excess(100, &[100, 100, 0]), 10);
        // Small counts move one at a time.
        assert_eq!(excess(6, &[6, 0]), 1);
        // Never more than the excess over the share.
        assert_eq!(excess(1110, &[1110, 890]), 110);
    }

    #[test]
    fn spreading_converges_without_everyone_moving_at_once() {
        // Three nodes, one new; moved tunnels land on the other two evenly.
        let mut c = [300u64, 300, 0];
        let mut ticks = 0;
        while ticks < 100 {
            let moves: Vec<u64> = c.iter().map(|&m| excess(m, &c)).collect();
            if moves.iter().all(|&m| m == 0) {
                break;
            }
            for (i, m) in moves.iter().enumerate() {
                assert!(
                    *m <= c[i] / 10 + 1,
                    "tick {ticks}: node {i} sent {m} of {}",
                    c[i]
                );
                c[i] -= m;
                // Each lands on one of the other nodes, spread over them.
                let others: Vec<usize> = (0..3).filter(|&j| j != i).collect();
                for k in 0..*m {
                    c[others[(k as usize) % 2]] += 1;
                }
            }
            ticks += 1;
        }
        // Settled in a few ticks with every node within its share and a tenth (220), the new
        // node carrying most of its share.
        assert!(ticks < 30, "{ticks} ticks: {c:?}");
        assert!(c.iter().all(|&n| n <= 220), "{c:?}");
        assert!(c[2] >= 150, "{c:?}");
        assert_eq!(c.iter().sum::<u64>(), 600);
    }
}
