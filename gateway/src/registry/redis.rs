//! The Redis store: what every node of a cluster shares. Writes that must be atomic (route
//! sets, ownership leases) are Lua scripts; every call has a timeout, so an unreachable Redis
//! costs a request at most [`REDIS_OP_TIMEOUT`], and is counted by operation.
//!
//! The scripts touch route keys derived from set members, which only a single Redis (or a
//! Sentinel group) allows; Redis Cluster would need hash tags on the cluster id.

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::{Connection, Pool, Runtime};
use redis::{AsyncCommands, Script};

use super::{RegistryError, keys};

/// Longest a single Redis operation may take before it counts as a failure.
pub const REDIS_OP_TIMEOUT: Duration = Duration::from_secs(1);

/// Operations sent to Redis, by name, for `gateway_registry_backend_calls_total`.
pub type CallCounter = Arc<dyn Fn(&'static str) + Send + Sync>;

/// Writes (or, with an empty value, removes) one connection's route set in `routes:{cluster}`.
/// Only the tunnel holding the connection's lease at that epoch may write (a fenced tunnel
/// cannot); a removal also goes through when the lease is gone. Sets of connections whose lease
/// is gone or expired for a minute are collected on the way. The byte ceiling is a safety net
/// for two nodes racing past the quota the gateway checks before writing.
/// 1: done; -1: fenced; -2: over the ceiling.
const PUT_ROUTES: &str = r"
local conn, epoch, value = ARGV[1], ARGV[2], ARGV[3]
local ceiling, now, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local lease = redis.call('HGET', KEYS[2], conn)
local held = lease and (string.match(lease, '^[^|]*|([^|]*)|') == epoch)
if value ~= '' and not held then return -1 end
if value == '' and lease and not held then return -1 end
local total = 0
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if f ~= conn then
    local l = redis.call('HGET', KEYS[2], f)
    local u = l and tonumber(string.match(l, '|([^|]*)$'))
    if u and u + 60000 > now then
      total = total + redis.call('HSTRLEN', KEYS[1], f)
    else
      redis.call('HDEL', KEYS[1], f)
    end
  end
end
if value == '' then
  redis.call('HDEL', KEYS[1], conn)
else
  if total + string.len(value) > ceiling then return -2 end
  redis.call('HSET', KEYS[1], conn, value)
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
";

/// GCRA over every node: takes up to ARGV[3] permits at ARGV[1] per second with a burst of
/// ARGV[2], on Redis's clock; returns how many were granted.
const TAKE_PERMITS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local emission = 1000 / tonumber(ARGV[1])
local tolerance = emission * tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local granted = 0
while granted < want and (tat + emission - now) <= tolerance do
  tat = tat + emission
  granted = granted + 1
end
if granted > 0 then
  redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tolerance + emission) + 1000)
end
return granted
";

/// Creates a cluster record and its membership unless the record exists. 1: created.
const CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
";

/// Lease values are `node|epoch|until_ms`: plain strings, so no float rounding in Lua. A claim
/// is refused (-1) when the cluster already holds `max` live leases besides this connection's.
const CLAIM: &str = r"
local now, max = tonumber(ARGV[5]), tonumber(ARGV[6])
local live = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    local u = tonumber(string.match(all[i + 1], '|([^|]*)$'))
    if u and u > now then live = live + 1 end
  end
end
if live >= max then return -1 end
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
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[6]) end
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
    put_routes: Script,
    pub(super) create: Script,
    pub(super) take_permits: Script,
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
            put_routes: Script::new(PUT_ROUTES),
            create: Script::new(CREATE),
            take_permits: Script::new(TAKE_PERMITS),
            claim: Script::new(CLAIM),
            refresh: Script::new(REFRESH),
            release: Script::new(RELEASE),
        })
    }

    /// Runs one operation with a connection, under the timeout, counted as `op`.
    pub(super) async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, RegistryError>
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

    /// Reports a route-table cache outcome through the same counter (`cache_hit`, `cache_miss`).
    pub fn note_cache(&self, hit: bool) {
        (self.count)(if hit { "cache_hit" } else { "cache_miss" });
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

    /// Every connection's route set of `cluster`: (connection, JSON).
    pub async fn load_routes(&self, cluster: &str) -> Result<Vec<(String, String)>, RegistryError> {
        let key = keys::cluster_routes(cluster);
        self.run("load_routes", |mut c| async move { c.hgetall(key).await })
            .await
    }

    /// Writes `conn`'s set (`None` removes it). Ok(false) when the tunnel is fenced or the
    /// cluster's byte ceiling is reached.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_routes(
        &self,
        cluster: &str,
        conn: &str,
        epoch: u64,
        json: Option<String>,
        ceiling: usize,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<bool, RegistryError> {
        let mut inv = self.put_routes.prepare_invoke();
        inv.key(keys::cluster_routes(cluster))
            .key(keys::tunnel(cluster))
            .arg(conn)
            .arg(epoch)
            .arg(json.unwrap_or_default())
            .arg(ceiling)
            .arg(now_ms)
            .arg(ttl.as_millis() as u64);
        let n: i64 = self
            .run("put_routes", |mut c| async move {
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(n == 1)
    }

    /// Claims a lease for `conn`; `None` when the cluster holds `max` live leases already.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim(
        &self,
        cluster: &str,
        conn: &str,
        node: &str,
        until_ms: u64,
        ttl: Duration,
        now_ms: u64,
        max: usize,
    ) -> Result<Option<u64>, RegistryError> {
        let mut inv = self.claim.prepare_invoke();
        inv.key(keys::tunnel(cluster))
            .key(keys::tunnel_epoch(cluster))
            .arg(conn)
            .arg(node)
            .arg(until_ms)
            .arg(ttl.as_millis() as u64)
            .arg(now_ms)
            .arg(max);
        let n: i64 = self
            .run("claim_tunnel", |mut c| async move {
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(u64::try_from(n).ok())
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn refresh(
        &self,
        cluster: &str,
        conn: &str,
        node: &str,
        epoch: u64,
        until_ms: u64,
        ttl: Duration,
        routes_ttl: Duration,
    ) -> Result<i64, RegistryError> {
        let mut inv = self.refresh.prepare_invoke();
        inv.key(keys::tunnel(cluster))
            .key(keys::cluster_routes(cluster))
            .arg(conn)
            .arg(node)
            .arg(epoch)
            .arg(until_ms)
            .arg(ttl.as_millis() as u64)
            .arg(routes_ttl.as_millis() as u64);
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
        now: u64,
    ) -> Result<(), RegistryError> {
        let key = keys::node(id);
        let id = id.to_string();
        let expires = now + ttl.as_millis() as u64;
        self.run("put_node", |mut c| async move {
            redis::pipe()
                .set_ex(key, record, ttl.as_secs().max(1))
                .ignore()
                .zadd(keys::NODES, id, expires)
                .ignore()
                .zrembyscore(keys::NODES, "-inf", now)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    pub async fn del_node(&self, id: &str) -> Result<(), RegistryError> {
        let key = keys::node(id);
        let id = id.to_string();
        self.run("del_node", |mut c| async move {
            redis::pipe()
                .del(key)
                .ignore()
                .zrem(keys::NODES, id)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// The live nodes' records (expiring after `now`): (node id, record JSON).
    pub async fn nodes(&self, now: u64) -> Result<Vec<(String, String)>, RegistryError> {
        let ids: Vec<String> = self
            .run("nodes", |mut c| async move {
                c.zrangebyscore(keys::NODES, now, "+inf").await
            })
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ks: Vec<String> = ids.iter().map(|i| keys::node(i)).collect();
        let records: Vec<Option<String>> = self
            .run("nodes", |mut c| async move {
                redis::cmd("MGET").arg(&ks).query_async(&mut c).await
            })
            .await?;
        Ok(ids
            .into_iter()
            .zip(records)
            .filter_map(|(i, r)| Some((i, r?)))
            .collect())
    }

    pub async fn publish(&self, event: String) -> Result<(), RegistryError> {
        self.run("publish", |mut c| async move {
            c.publish(keys::EVENTS, event).await
        })
        .await
    }
}
