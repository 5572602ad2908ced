//! A cluster's routes as the union of what each of its live agent connections publishes. Pure:
//! no store, no I/O. Both stores keep one [`ConnRoutes`] per connection and build a
//! [`RouteTable`] from them for lookups.
//!
//! Rules (issue: tenants cannot harm each other):
//! - A connection's routes are its own: a `sync` replaces that connection's set, never another
//!   connection's, so a second agent cannot wipe the first one's hosts.
//! - A route is served through the connections that publish it, and only those.
//! - Two agents publishing the same host and path with different specs is a conflict: the one
//!   already published stays, the newcomer's route is refused in `routes_ack`. Connections of
//!   the same agent (its tunnels to several nodes) never conflict with each other.
//! - Quotas are per cluster: distinct routes (host, path) over all its connections, and bytes
//!   of route data summed over all its connections.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tunnelgate_proto::control::{RouteAction, RouteKey, RouteRejection, RoutesAck};
use tunnelgate_proto::routes::{RouteSpec, path_score, route_bytes, wildcard_parent};

/// The routes one agent connection publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ConnRoutes {
    /// The agent (process) the connection belongs to; its connections never conflict.
    pub agent: String,
    pub routes: Vec<RouteSpec>,
}

impl ConnRoutes {
    pub fn bytes(&self) -> usize {
        self.routes.iter().map(route_bytes).sum::<usize>() + self.agent.len()
    }
}

/// Connection id → its routes, for one cluster.
pub type ClusterRoutes = BTreeMap<String, ConnRoutes>;

/// Limits on one cluster's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Distinct (host, path) pairs over all the cluster's connections.
    pub max_routes: usize,
    /// Bytes of route data summed over all the cluster's connections.
    pub max_bytes: usize,
}

/// A route as the proxy uses it: what was published, by which cluster, through which
/// connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub cluster: String,
    pub spec: RouteSpec,
    /// Connections that publish this route; a request goes only to their tunnels.
    pub conns: Arc<[String]>,
}

/// A cluster's routes, ready for lookups.
#[derive(Debug, Default)]
pub struct RouteTable {
    hosts: HashMap<String, Vec<Arc<RouteEntry>>>,
    routes: usize,
    bytes: usize,
}

fn same_route(a: &RouteSpec, b: &RouteSpec) -> bool {
    a.host == b.host && a.path == b.path
}

impl RouteTable {
    /// The union of every connection's routes. Where connections disagree on a spec (two
    /// tunnels of one agent mid-update), the first connection in id order gives the spec.
    pub fn build(cluster: &str, conns: &ClusterRoutes) -> RouteTable {
        let mut by_key: BTreeMap<(&str, &str), (&RouteSpec, Vec<String>)> = BTreeMap::new();
        let mut bytes = 0;
        for (conn, set) in conns {
            bytes += set.bytes();
            for r in &set.routes {
                by_key
                    .entry((r.host.as_str(), r.path.as_str()))
                    .or_insert_with(|| (r, Vec::new()))
                    .1
                    .push(conn.clone());
            }
        }
        let routes = by_key.len();
        let mut hosts: HashMap<String, Vec<Arc<RouteEntry>>> = HashMap::new();
        for ((host, _), (spec, conns)) in by_key {
            hosts
                .entry(host.to_string())
                .or_default()
                .push(Arc::new(RouteEntry {
                    cluster: cluster.to_string(),
                    spec: spec.clone(),
                    conns: conns.into(),
                }));
        }
        RouteTable {
            hosts,
            routes,
            bytes,
        }
    }

    /// The route for a normalised host and path: the exact host's best path, else the
    /// wildcard parent's (Kubernetes Ingress rules).
    pub fn lookup(&self, host: &str, path: &str) -> Option<Arc<RouteEntry>> {
        let best_of = |h: &str| {
            self.hosts
                .get(h)?
                .iter()
                .filter_map(|e| path_score(e.spec.path_type, &e.spec.path, path).map(|s| (s, e)))
                .max_by_key(|(s, _)| *s)
                .map(|(_, e)| e.clone())
        };
        best_of(host).or_else(|| best_of(&wildcard_parent(host)?))
    }

    /// True when some route names `host` (or its wildcard parent covers it).
    pub fn serves_host(&self, host: &str) -> bool {
        self.hosts.contains_key(host)
            || wildcard_parent(host).is_some_and(|p| self.hosts.contains_key(&p))
    }

    /// Distinct routes.
    pub fn len(&self) -> usize {
        self.routes
    }

    pub fn is_empty(&self) -> bool {
        self.routes == 0
    }

    /// Bytes of route data over all connections (the quota's measure, and the cache's weight).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The new set of `conn` after one `ingress_routes` message, given the other connections of
/// the cluster. `vetted` passed the claim and size checks; `ack` already lists what did not.
/// Conflicts and quotas refuse routes here; refused routes change nothing.
pub fn apply_message(
    others: &ClusterRoutes,
    current: &ConnRoutes,
    action: RouteAction,
    vetted: Vec<RouteSpec>,
    mut ack: RoutesAck,
    quotas: Quotas,
) -> (ConnRoutes, RoutesAck) {
    let mut next = current.clone();
    let reject = |ack: &mut RoutesAck, r: &RouteSpec, reason: String| {
        ack.rejected.push(RouteRejection {
            host: r.host.clone(),
            path: r.path.clone(),
            reason,
        })
    };
    if action == RouteAction::Delete {
        for r in vetted {
            next.routes.retain(|x| !same_route(x, &r));
            ack.accepted.push(RouteKey {
                host: r.host,
                path: r.path,
            });
        }
        return (next, ack);
    }
    if action == RouteAction::Sync {
        next.routes.clear();
    }
    // What the other agents publish, for conflicts; what every other connection publishes
    // and weighs, for quotas.
    let mut foreign: HashMap<(&str, &str), &RouteSpec> = HashMap::new();
    let mut other_keys: HashSet<(&str, &str)> = HashSet::new();
    let mut other_bytes = 0;
    for set in others.values() {
        other_bytes += set.bytes();
        for r in &set.routes {
            other_keys.insert((r.host.as_str(), r.path.as_str()));
            if set.agent != current.agent {
                foreign
                    .entry((r.host.as_str(), r.path.as_str()))
                    .or_insert(r);
            }
        }
    }
    let mut accepted = Vec::with_capacity(vetted.len());
    for r in vetted {
        if let Some(theirs) = foreign.get(&(r.host.as_str(), r.path.as_str()))
            && **theirs != r
        {
            let why = "conflict: another agent of this cluster publishes this host and path with a different upstream".to_string();
            reject(&mut ack, &r, why);
            continue;
        }
        next.routes.retain(|x| !same_route(x, &r));
        accepted.push(r);
    }
    // Quotas: keep what fits, in the order the agent sent it.
    let mut keys: HashSet<(String, String)> = next
        .routes
        .iter()
        .map(|r| (r.host.clone(), r.path.clone()))
        .collect();
    let mut bytes = other_bytes + next.bytes();
    let in_others = |k: &(String, String)| other_keys.contains(&(k.0.as_str(), k.1.as_str()));
    let mut distinct = other_keys.len() + keys.iter().filter(|k| !in_others(k)).count();
    for r in accepted {
        let key = (r.host.clone(), r.path.clone());
        let new_key = !keys.contains(&key) && !in_others(&key);
        let size = route_bytes(&r);
        if new_key && distinct >= quotas.max_routes {
            let why = format!(
                "the cluster's route quota ({}) is reached",
                quotas.max_routes
            );
            reject(&mut ack, &r, why);
            continue;
        }
        if bytes + size > quotas.max_bytes {
            let why = format!(
                "the cluster's route data quota ({} bytes) is reached",
                quotas.max_bytes
            );
            reject(&mut ack, &r, why);
            continue;
        }
        bytes += size;
        distinct += usize::from(new_key);
        keys.insert(key);
        ack.accepted.push(RouteKey {
            host: r.host.clone(),
            path: r.path.clone(),
        });
        next.routes.push(r);
    }
    (next, ack)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(host: &str, path: &str, svc: &str) -> RouteSpec {
        RouteSpec {
            host: host.into(),
            path: path.into(),
            service: Some(svc.into()),
            ..Default::default()
        }
    }

    const Q: Quotas = Quotas {
        max_routes: 100,
        max_bytes: 1 << 20,
    };

    fn conn(agent: &str, routes: Vec<RouteSpec>) -> ConnRoutes {
        ConnRoutes {
            agent: agent.into(),
            routes,
        }
    }

    #[test]
    fn union_over_connections_routes_to_publishers_only() {
        let mut all = ClusterRoutes::new();
        all.insert("a-0".into(), conn("a", vec![r("x.demo.gw", "/", "s1")]));
        all.insert("a-1".into(), conn("a", vec![r("x.demo.gw", "/", "s1")]));
        all.insert("b-0".into(), conn("b", vec![r("y.demo.gw", "/", "s2")]));
        let t = RouteTable::build("demo", &all);
        assert_eq!(t.len(), 2);
        let x = t.lookup("x.demo.gw", "/q").unwrap();
        assert_eq!(&*x.conns, &["a-0".to_string(), "a-1".to_string()]);
        let y = t.lookup("y.demo.gw", "/").unwrap();
        assert_eq!(&*y.conns, &["b-0".to_string()]);
        assert!(t.lookup("z.demo.gw", "/").is_none());
    }

    #[test]
    fn a_second_agent_cannot_wipe_or_take_the_first_ones_routes() {
        let mut others = ClusterRoutes::new();
        others.insert("a-0".into(), conn("a", vec![r("x.demo.gw", "/", "s1")]));
        let (mine, ack) = apply_message(
            &others,
            &conn("b", vec![]),
            RouteAction::Sync,
            vec![r("x.demo.gw", "/", "evil"), r("y.demo.gw", "/", "s2")],
            RoutesAck::default(),
            Q,
        );
        assert_eq!(ack.rejected.len(), 1);
        assert!(ack.rejected[0].reason.contains("conflict"));
        assert_eq!(mine.routes, vec![r("y.demo.gw", "/", "s2")]);
        // The same spec from another agent (a replica) is a union, not a conflict.
        let (mine, ack) = apply_message(
            &others,
            &conn("b", vec![]),
            RouteAction::Sync,
            vec![r("x.demo.gw", "/", "s1")],
            RoutesAck::default(),
            Q,
        );
        assert!(ack.rejected.is_empty());
        assert_eq!(mine.routes.len(), 1);
        // The same agent's other connection may change its spec (an update in progress).
        let (_, ack) = apply_message(
            &others,
            &conn("a", vec![]),
            RouteAction::Update,
            vec![r("x.demo.gw", "/", "s9")],
            RoutesAck::default(),
            Q,
        );
        assert!(ack.rejected.is_empty());
    }

    #[test]
    fn quotas_count_the_whole_cluster() {
        let q = Quotas {
            max_routes: 3,
            max_bytes: 1 << 20,
        };
        let mut others = ClusterRoutes::new();
        others.insert(
            "a-0".into(),
            conn(
                "a",
                vec![r("a.demo.gw", "/", "s"), r("b.demo.gw", "/", "s")],
            ),
        );
        let (mine, ack) = apply_message(
            &others,
            &conn("b", vec![]),
            RouteAction::Sync,
            vec![
                r("a.demo.gw", "/", "s"),
                r("c.demo.gw", "/", "s"),
                r("d.demo.gw", "/", "s"),
            ],
            RoutesAck::default(),
            q,
        );
        assert_eq!(mine.routes.len(), 2, "a (shared) and c fit, d does not");
        assert_eq!(ack.rejected.len(), 1);
        assert!(ack.rejected[0].reason.contains("quota"));
        let small = Quotas {
            max_routes: 100,
            max_bytes: others.values().map(ConnRoutes::bytes).sum::<usize>() + 10,
        };
        let (mine, ack) = apply_message(
            &others,
            &conn("b", vec![]),
            RouteAction::Sync,
            vec![r("e.demo.gw", "/", "s")],
            RoutesAck::default(),
            small,
        );
        assert!(mine.routes.is_empty());
        assert!(ack.rejected[0].reason.contains("bytes"));
    }

    #[test]
    fn add_update_delete_touch_only_this_connection() {
        let cur = conn("a", vec![r("a.demo.gw", "/", "s")]);
        let (next, _) = apply_message(
            &ClusterRoutes::new(),
            &cur,
            RouteAction::Add,
            vec![r("b.demo.gw", "/", "s"), r("a.demo.gw", "/", "s2")],
            RoutesAck::default(),
            Q,
        );
        assert_eq!(next.routes.len(), 2);
        assert!(next.routes.contains(&r("a.demo.gw", "/", "s2")));
        let (next, ack) = apply_message(
            &ClusterRoutes::new(),
            &next,
            RouteAction::Delete,
            vec![r("a.demo.gw", "/", "")],
            RoutesAck::default(),
            Q,
        );
        assert_eq!(next.routes, vec![r("b.demo.gw", "/", "s")]);
        assert_eq!(ack.accepted.len(), 1);
    }
}
