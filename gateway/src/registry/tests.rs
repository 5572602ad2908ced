//! The registry's facade in memory: tokens, claims, publishing and lookups.

use super::secret::{hex, token_hash, unhex};
use super::*;
use crate::config::Secret;
use tunnelgate_proto::control::{RouteAction, RoutesAck};
use tunnelgate_proto::routes::PathType;
use tunnelgate_proto::routes::RouteSpec;

fn reg() -> Arc<Registry> {
    Registry::in_memory(
        "gw.test",
        &[ClusterArg {
            id: "demo".into(),
            token: Secret::new("s3cret-s3cret-s3cret-s3cret-s3cret"),
        }],
    )
}

fn route(host: &str, path: &str) -> RouteSpec {
    RouteSpec {
        host: host.into(),
        path: path.into(),
        ..Default::default()
    }
}

async fn hit(r: &Registry, h: &str, p: &str) -> Option<(String, String)> {
    r.lookup(h, p)
        .await
        .unwrap()
        .map(|e| (e.spec.host.clone(), e.spec.path.clone()))
}

#[test]
fn tokens_identify_clusters() {
    let r = reg();
    assert_eq!(
        r.authenticate("s3cret-s3cret-s3cret-s3cret-s3cret"),
        Some(("demo".to_string(), tenants::BOOTSTRAP_TOKEN_ID.to_string()))
    );
    assert_eq!(r.authenticate("wrong"), None);
    assert_eq!(unhex(&hex(&token_hash("x"))), Some(token_hash("x")));
    assert_eq!(unhex("zz"), None);
}

#[test]
fn claims_only_own_names() {
    let r = reg();
    assert!(r.check_claim("demo", "demo.gw.test").is_ok());
    assert!(r.check_claim("demo", "app.demo.gw.test").is_ok());
    assert!(r.check_claim("demo", "*.demo.gw.test").is_ok());
    assert!(r.check_claim("demo", "a.b.demo.gw.test").is_ok());
    assert!(r.check_claim("demo", "other.gw.test").is_err());
    assert!(r.check_claim("demo", "evildemo.gw.test").is_err());
    assert!(r.check_claim("demo", "*.gw.test").is_err());
    assert!(r.check_claim("demo", "demo.gw.test.evil.com").is_err());
    let r = reg().with_policy(
        r.quotas(),
        vec!["demo.gw.test".into(), "t.demo.gw.test".into()],
    );
    assert!(r.check_claim("demo", "demo.gw.test").is_err());
    assert!(r.check_claim("demo", "t.demo.gw.test").is_err());
    assert!(r.check_claim("demo", "*.demo.gw.test").is_err());
    assert!(r.check_claim("demo", "app.demo.gw.test").is_ok());
    assert_eq!(r.names().owner_label("a.b.demo.gw.test"), Some("demo"));
    // The flat scheme: one label, `--` before the cluster.
    assert!(r.check_claim("demo", "app--demo.gw.test").is_ok());
    assert!(r.check_claim("demo", "app--other.gw.test").is_err());
    assert!(r.check_claim("demo", "--demo.gw.test").is_err());
    assert!(r.check_claim("demo", "x.app--demo.gw.test").is_err());
    assert_eq!(r.names().owner_label("app--demo.gw.test"), Some("demo"));
    assert_eq!(r.names().owner_label("a--b--demo.gw.test"), Some("demo"));
    assert!(check_cluster_id("a--b").is_err());
    assert_eq!(r.names().owner_label("demo.gw.test"), Some("demo"));
    assert_eq!(r.names().owner_label("gw.test"), None);
    assert_eq!(r.names().owner_label("evil.com"), None);
}

async fn publish(
    r: &Registry,
    conn: &str,
    action: RouteAction,
    routes: Vec<RouteSpec>,
) -> RoutesAck {
    let cur = ConnRoutes {
        agent: conn.into(),
        routes: r
            .cluster_routes("demo")
            .await
            .unwrap()
            .remove(conn)
            .map(|c| c.routes)
            .unwrap_or_default(),
    };
    let (_, ack, stored) = r.publish("demo", conn, Some(1), &cur, action, routes).await;
    stored.unwrap();
    ack
}

#[tokio::test]
async fn rejected_routes_are_not_stored() {
    let r = reg();
    let ack = publish(
        &r,
        "c1",
        RouteAction::Sync,
        vec![
            route("App.Demo.gw.test", "/"),
            route("bank.other.gw.test", "/"),
            route("big.demo.gw.test", &format!("/{}", "x".repeat(1 << 20))),
            route("dots.demo.gw.test", "/a/../b"),
        ],
    )
    .await;
    assert_eq!(ack.accepted.len(), 1);
    assert_eq!(ack.rejected.len(), 3);
    assert_eq!(ack.rejected[0].host, "bank.other.gw.test");
    assert!(
        ack.rejected[1].path.len() <= 256,
        "a refusal does not echo a megabyte"
    );
    assert!(hit(&r, "app.demo.gw.test", "/x").await.is_some());
    assert!(hit(&r, "bank.other.gw.test", "/").await.is_none());
}

#[tokio::test]
async fn sync_replaces_and_delete_removes_only_this_connections_routes() {
    let r = reg();
    publish(
        &r,
        "c1",
        RouteAction::Add,
        vec![route("a.demo.gw.test", "/")],
    )
    .await;
    publish(
        &r,
        "c1",
        RouteAction::Add,
        vec![route("b.demo.gw.test", "/")],
    )
    .await;
    publish(
        &r,
        "c2",
        RouteAction::Sync,
        vec![route("z.demo.gw.test", "/")],
    )
    .await;
    assert_eq!(r.route_count("demo"), 3);
    publish(
        &r,
        "c1",
        RouteAction::Sync,
        vec![route("c.demo.gw.test", "/")],
    )
    .await;
    assert!(hit(&r, "a.demo.gw.test", "/").await.is_none());
    assert!(hit(&r, "c.demo.gw.test", "/").await.is_some());
    assert!(
        hit(&r, "z.demo.gw.test", "/").await.is_some(),
        "c2's routes stay"
    );
    publish(
        &r,
        "c1",
        RouteAction::Delete,
        vec![route("c.demo.gw.test", "/")],
    )
    .await;
    assert_eq!(r.route_count("demo"), 1);
    r.withdraw("demo", "c2", Some(1)).await;
    assert_eq!(r.route_count("demo"), 0, "routes leave with their tunnel");
}

#[tokio::test]
async fn wildcard_and_path_precedence() {
    let r = reg();
    let mut exact = route("a.demo.gw.test", "/api");
    exact.path_type = PathType::Exact;
    publish(
        &r,
        "c1",
        RouteAction::Sync,
        vec![
            route("*.demo.gw.test", "/"),
            route("a.demo.gw.test", "/"),
            exact,
        ],
    )
    .await;
    let s = |h: &str, p: &str| Some((h.to_string(), p.to_string()));
    assert_eq!(
        hit(&r, "a.demo.gw.test", "/api").await,
        s("a.demo.gw.test", "/api")
    );
    assert_eq!(
        hit(&r, "a.demo.gw.test", "/api/x").await,
        s("a.demo.gw.test", "/")
    );
    assert_eq!(
        hit(&r, "zzz.demo.gw.test", "/").await,
        s("*.demo.gw.test", "/")
    );
    // A wildcard covers exactly one label.
    assert_eq!(hit(&r, "x.zzz.demo.gw.test", "/").await, None);
}
