//! Route lookup cost: the in-memory registry, the Redis registry with a warm cache, and the
//! Redis registry on a cache miss (the cluster's route table loaded with one HGETALL from a real
//! `redis-server` on loopback).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tunnelgate_gateway::config::{ClusterArg, Secret};
use tunnelgate_gateway::registry::{Claim, ConnRoutes, Registry};
use tunnelgate_proto::control::RouteAction;
use tunnelgate_proto::routes::RouteSpec;

struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis() -> (RedisServer, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server installed");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (RedisServer(child), format!("redis://127.0.0.1:{port}/"))
}

fn routes() -> Vec<RouteSpec> {
    (0..50)
        .map(|i| RouteSpec {
            host: format!("app{i}.demo.localhost"),
            path: "/api".into(),
            ..Default::default()
        })
        .chain(std::iter::once(RouteSpec {
            host: "app.demo.localhost".into(),
            ..Default::default()
        }))
        .collect()
}

fn lookups(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let clusters = [ClusterArg {
        id: "demo".into(),
        token: Secret::new("demo-token"),
    }];
    let mem = Registry::in_memory("localhost", &clusters);
    let publish = |reg: Arc<Registry>| async move {
        let Claim::Held(epoch) = reg
            .claim_tunnel("demo", "bench-0", Duration::from_secs(600), 0, 16)
            .await
            .unwrap()
        else {
            panic!("claim refused")
        };
        let cur = ConnRoutes {
            agent: "bench".into(),
            routes: Vec::new(),
        };
        let (_, _, stored) = reg
            .publish(
                "demo",
                "bench-0",
                Some(epoch),
                &cur,
                RouteAction::Sync,
                routes(),
            )
            .await;
        stored.unwrap();
    };
    rt.block_on(publish(mem.clone()));
    c.bench_function("lookup/memory", |b| {
        b.to_async(&rt)
            .iter(|| mem.lookup("app.demo.localhost", "/index.html"))
    });

    let (_server, url) = redis();
    let count: tunnelgate_gateway::registry::redis::CallCounter = Arc::new(|_| {});
    let reg = Registry::with_redis("localhost", "bench", &clusters, &url, count).unwrap();
    rt.block_on(async {
        reg.sync_clusters().await.unwrap();
        publish(reg.clone()).await;
        assert!(
            reg.lookup("app.demo.localhost", "/index.html")
                .await
                .unwrap()
                .is_some()
        );
    });
    c.bench_function("lookup/redis_cached", |b| {
        b.to_async(&rt)
            .iter(|| reg.lookup("app.demo.localhost", "/index.html"))
    });
    c.bench_function("lookup/redis_miss_table_load", |b| {
        b.to_async(&rt).iter(|| {
            // Nothing cached: the cluster's table is loaded (one HGETALL) and built.
            reg.clear_cache();
            let reg = reg.clone();
            async move {
                reg.lookup("app.demo.localhost", "/index.html")
                    .await
                    .unwrap()
            }
        })
    });
    c.bench_function("lookup/redis_unknown_host", |b| {
        b.to_async(&rt)
            .iter(|| reg.lookup("nobody.demo.localhost", "/"))
    });
}

criterion_group!(benches, lookups);
criterion_main!(benches);
