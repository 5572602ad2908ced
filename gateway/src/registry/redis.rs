//! The Redis store: what every node of a cluster shares. Writes that must be atomic (route
//! sets, ownership leases) are Lua scripts; every call has a timeout, so an unreachable Redis
//! costs a request at most [`REDIS_OP_TIMEOUT`], and is counted by operation.
//!
//! The scripts touch route keys derived from set members, which only a single Redis (or a
//! Sentinel group) allows; Redis Cluster would need hash tags on the cluster id.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::{Connection, Pool, Runtime};
use redis::{AsyncCommands, Script};
use tunnelgate_proto::control::RouteAction;

use super::{RegistryError, keys};

/// Longest a single Redis operation may take before it counts as a failure.
pub const REDIS_OP_TIMEOUT: Duration = Duration::from_secs(1);

/// Operations sent to Redis, by name, for `gateway_registry_backend_calls_total`.
pub type CallCounter = Arc<dyn Fn(&'static str) + Send + Sync>;

const APPLY: &str = r"
local mode = ARGV[1]
local ttl = tonumber(ARGV[2])
local prefix = ARGV[3]
if mode == 'sync' then
  local keep = {}
  for i = 4, #ARGV, 2 do keep[ARGV[i]] = true end
  for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    if not keep[m] then
      redis.call('DEL', prefix .. m)
      redis.call('SREM', KEYS[1], m)
    end
  end
end
if mode == 'delete' then
  for i = 4, #ARGV do
    redis.call('DEL', prefix .. ARGV[i])
    redis.call('SREM', KEYS[1], ARGV[i])
  end
else
  for i = 4, #ARGV, 2 do
    redis.call('SET', prefix .. ARGV[i], ARGV[i + 1], 'EX', ttl)
    redis.call('SADD', KEYS[1], ARGV[i])
  end
end
redis.call('DEL', KEYS[2])
local members = redis.call('SMEMBERS', KEYS[1])
for _, m in ipairs(members) do
  redis.call('SADD', KEYS[2], string.match(m, '^([^:]*):'))
end
if #members > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
return #members
";

const TOUCH: &str = r"
local members = redis.call('SMEMBERS', KEYS[1])
if #members == 0 then return 0 end
local alive = 0
for _, m in ipairs(members) do
  alive = alive + redis.call('EXPIRE', ARGV[2] .. m, ARGV[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
if alive < #members then return 0 end
return #members
";

/// Lease values are `node|epoch|until_ms`: plain strings, so no float rounding in Lua.
const CLAIM: &str = r"
local epoch = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. epoch .. '|' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return epoch
";

/// 1: refreshed; 0: the lease is gone (expired or Redis lost it); -1: a newer epoch or another
/// node holds it now (fenced: the caller must give the tunnel up).
const REFRESH: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local node, epoch = string.match(cur, '^([^|]*)|([^|]*)|')
if node ~= ARGV[2] or epoch ~= ARGV[3] then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], node .. '|' .. epoch .. '|' .. ARGV[4])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[5]) then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
return 1
";

const RELEASE: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local _, epoch = string.match(cur, '^([^|]*)|([^|]*)|')
if epoch == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
";

/// One owner lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub conn: String,
    pub node: String,
    pub epoch: u64,
    pub until_ms: u64,
}

fn parse_lease(conn: String, v: &str) -> Option<Lease> {
    let mut it = v.split('|');
    let node = it.next()?.to_string();
    let epoch = it.next()?.parse().ok()?;
    let until_ms = it.next()?.parse().ok()?;
    Some(Lease {
        conn,
        node,
        epoch,
        until_ms,
    })
}

pub struct RedisStore {
    pool: Pool,
    client: redis::Client,
    count: CallCounter,
    apply: Script,
    touch: Script,
    claim: Script,
    refresh: Script,
    release: Script,
}

fn err(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable(e.to_string())
}

impl RedisStore {
    pub fn new(url: &str, count: CallCounter) -> Result<RedisStore, RegistryError> {
        let client = redis::Client::open(url)
            .map_err(|e| RegistryError::Config(format!("--redis-url: {e}")))?;
        let mut cfg = deadpool_redis::Config::from_url(url);
        cfg.pool = Some(deadpool_redis::PoolConfig {
            max_size: 32,
            timeouts: deadpool_redis::Timeouts {
                wait: Some(REDIS_OP_TIMEOUT),
                create: Some(REDIS_OP_TIMEOUT),
                recycle: Some(REDIS_OP_TIMEOUT),
            },
            ..Default::default()
        });
        let pool = cfg
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| RegistryError::Config(format!("--redis-url: {e}")))?;
        Ok(RedisStore {
            pool,
            client,
            count,
            apply: Script::new(APPLY),
            touch: Script::new(TOUCH),
            claim: Script::new(CLAIM),
            refresh: Script::new(REFRESH),
            release: Script::new(RELEASE),
        })
    }

    /// Runs one operation with a connection, under the timeout, counted as `op`.
    async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, RegistryError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        (self.count)(op);
        let work = async {
            let conn = self.pool.get().await.map_err(err)?;
            f(conn).await.map_err(err)
        };
        tokio::time::timeout(REDIS_OP_TIMEOUT, work)
            .await
            .map_err(|_| RegistryError::Unavailable(format!("redis {op} timed out")))?
    }

    pub fn pubsub_client(&self) -> &redis::Client {
        &self.client
    }

    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.run("ping", |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map(|_| ())
    }

    pub async fn put_cluster(&self, id: &str, record: String) -> Result<(), RegistryError> {
        let (key, id) = (keys::cluster(id), id.to_string());
        self.run("put_cluster", |mut c| async move {
            redis::pipe()
                .atomic()
                .set(&key, record)
                .sadd(keys::CLUSTERS, id)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// Every cluster record (id, JSON).
    pub async fn load_clusters(&self) -> Result<Vec<(String, String)>, RegistryError> {
        let ids: Vec<String> = self
            .run("load_clusters", |mut c| async move {
                c.smembers(keys::CLUSTERS).await
            })
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ks: Vec<String> = ids.iter().map(|i| keys::cluster(i)).collect();
        let vals: Vec<Option<String>> = self
            .run("load_clusters", |mut c| async move {
                redis::cmd("MGET").arg(&ks).query_async(&mut c).await
            })
            .await?;
        Ok(ids
            .into_iter()
            .zip(vals)
            .filter_map(|(i, v)| Some((i, v?)))
            .collect())
    }

    pub async fn cluster_hosts(&self, cluster: &str) -> Result<HashSet<String>, RegistryError> {
        let key = keys::cluster_hosts(cluster);
        self.run(
            "cluster_hosts",
            |mut c| async move { c.smembers(key).await },
        )
        .await
    }

    pub async fn mget(&self, ks: Vec<String>) -> Result<Vec<Option<String>>, RegistryError> {
        self.run("route_mget", |mut c| async move {
            redis::cmd("MGET").arg(&ks).query_async(&mut c).await
        })
        .await
    }

    /// Applies a route change; `items` are (member, JSON) pairs, or members alone for delete.
    pub async fn apply(
        &self,
        cluster: &str,
        action: RouteAction,
        items: Vec<(String, Option<String>)>,
        ttl: Duration,
    ) -> Result<usize, RegistryError> {
        let mode = match action {
            RouteAction::Add | RouteAction::Update => "add",
            RouteAction::Delete => "delete",
            RouteAction::Sync => "sync",
        };
        let mut inv = self.apply.prepare_invoke();
        inv.key(keys::cluster_routes(cluster))
            .key(keys::cluster_hosts(cluster))
            .arg(mode)
            .arg(ttl.as_secs())
            .arg(keys::ROUTE_PREFIX);
        for (member, json) in items {
            inv.arg(member);
            if let Some(j) = json {
                inv.arg(j);
            }
        }
        self.run("apply_routes", |mut c| async move {
            inv.invoke_async(&mut c).await
        })
        .await
    }

    /// Extends the cluster's routes; false when they are gone (Redis lost them).
    pub async fn touch(&self, cluster: &str, ttl: Duration) -> Result<bool, RegistryError> {
        let mut inv = self.touch.prepare_invoke();
        inv.key(keys::cluster_routes(cluster))
            .key(keys::cluster_hosts(cluster))
            .arg(ttl.as_secs())
            .arg(keys::ROUTE_PREFIX);
        let n: i64 = self
            .run("touch_routes", |mut c| async move {
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(n > 0)
    }

    pub async fn claim(
        &self,
        cluster: &str,
        conn: &str,
        node: &str,
        until_ms: u64,
        ttl: Duration,
    ) -> Result<u64, RegistryError> {
        let mut inv = self.claim.prepare_invoke();
        inv.key(keys::tunnel(cluster))
            .key(keys::tunnel_epoch(cluster))
            .arg(conn)
            .arg(node)
            .arg(until_ms)
            .arg(ttl.as_millis() as u64);
        self.run("claim_tunnel", |mut c| async move {
            inv.invoke_async(&mut c).await
        })
        .await
    }

    pub async fn refresh(
        &self,
        cluster: &str,
        conn: &str,
        node: &str,
        epoch: u64,
        until_ms: u64,
        ttl: Duration,
    ) -> Result<i64, RegistryError> {
        let mut inv = self.refresh.prepare_invoke();
        inv.key(keys::tunnel(cluster))
            .arg(conn)
            .arg(node)
            .arg(epoch)
            .arg(until_ms)
            .arg(ttl.as_millis() as u64);
        self.run("refresh_tunnel", |mut c| async move {
            inv.invoke_async(&mut c).await
        })
        .await
    }

    pub async fn release(
        &self,
        cluster: &str,
        conn: &str,
        epoch: u64,
    ) -> Result<(), RegistryError> {
        let mut inv = self.release.prepare_invoke();
        inv.key(keys::tunnel(cluster)).arg(conn).arg(epoch);
        self.run("release_tunnel", |mut c| async move {
            inv.invoke_async::<i64>(&mut c).await
        })
        .await
        .map(|_| ())
    }

    /// Live leases of `cluster` whose node is alive, with the node's record.
    pub async fn owners(
        &self,
        cluster: &str,
        now_ms: u64,
    ) -> Result<Vec<(Lease, String)>, RegistryError> {
        let key = keys::tunnel(cluster);
        let all: Vec<(String, String)> = self
            .run("owners", |mut c| async move { c.hgetall(key).await })
            .await?;
        let leases: Vec<Lease> = all
            .into_iter()
            .filter_map(|(conn, v)| parse_lease(conn, &v))
            .filter(|l| l.until_ms > now_ms)
            .collect();
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ks: Vec<String> = leases.iter().map(|l| keys::node(&l.node)).collect();
        let nodes: Vec<Option<String>> = self
            .run("owners", |mut c| async move {
                redis::cmd("MGET").arg(&ks).query_async(&mut c).await
            })
            .await?;
        Ok(leases
            .into_iter()
            .zip(nodes)
            .filter_map(|(l, n)| Some((l, n?)))
            .collect())
    }

    pub async fn put_node(
        &self,
        id: &str,
        record: String,
        ttl: Duration,
    ) -> Result<(), RegistryError> {
        let key = keys::node(id);
        self.run("put_node", |mut c| async move {
            c.set_ex(key, record, ttl.as_secs().max(1)).await
        })
        .await
    }

    pub async fn del_node(&self, id: &str) -> Result<(), RegistryError> {
        let key = keys::node(id);
        self.run("del_node", |mut c| async move { c.del(key).await })
            .await
    }

    pub async fn publish(&self, event: String) -> Result<(), RegistryError> {
        self.run("publish", |mut c| async move {
            c.publish(keys::EVENTS, event).await
        })
        .await
    }
}
