//! Upstreams: parsing a rule's target, choosing the rule for a request, and the pooled HTTP
//! client that talks to them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tunnelgate_proto::routes::{RouteSpec, best_match, wildcard_parent};

use crate::config::Rule;

/// The request body type sent upstream.
pub type UpBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The pooled upstream client.
pub type UpstreamClient = Client<HttpConnector, UpBody>;

/// Idle upstream connections kept per host.
const POOL_MAX_IDLE_PER_HOST: usize = 256;
/// How long an idle upstream connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub fn client(connect_timeout: Duration) -> UpstreamClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(connect_timeout));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(conn)
}

/// Where a rule sends requests: `http://authority`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub authority: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let u = url::Url::parse(url).map_err(|e| format!("upstream {url:?}: {e}"))?;
        if u.scheme() != "http" {
            return Err(format!(
                "upstream {url:?}: only http:// upstreams are supported by this build"
            ));
        }
        if !matches!(u.path(), "" | "/") || u.query().is_some() {
            return Err(format!("upstream {url:?}: give only scheme, host and port"));
        }
        let host = u
            .host_str()
            .ok_or_else(|| format!("upstream {url:?}: no host"))?;
        let port = u.port_or_known_default().unwrap_or(80);
        Ok(Target {
            authority: format!("{host}:{port}"),
        })
    }
}

/// The agent's rules, ready for matching.
#[derive(Default)]
pub struct Rules {
    rules: Vec<(RouteSpec, Target)>,
}

impl Rules {
    pub fn new(rules: &[Rule]) -> Result<Arc<Rules>, String> {
        Ok(Rules::from_pairs(Rules::pairs(rules)?))
    }

    /// Static rules as routes and their targets.
    pub fn pairs(rules: &[Rule]) -> Result<Vec<(RouteSpec, Target)>, String> {
        rules
            .iter()
            .map(|r| {
                Ok((
                    RouteSpec {
                        host: r.hostname.clone(),
                        path: r.path.clone(),
                        path_type: r.path_type,
                        service: Some(r.service.clone()),
                        ..Default::default()
                    },
                    Target::parse(&r.service)?,
                ))
            })
            .collect()
    }

    pub fn from_pairs(rules: Vec<(RouteSpec, Target)>) -> Arc<Rules> {
        Arc::new(Rules { rules })
    }

    /// The target for a request, by the same rules the gateway used to route it here.
    pub fn find(&self, host: &str, path: &str) -> Option<&Target> {
        let of_host = |h: &str| {
            let spec = best_match(
                self.rules
                    .iter()
                    .filter(|(s, _)| s.host == h)
                    .map(|(s, _)| s),
                path,
            )?;
            self.rules
                .iter()
                .find(|(s, _)| std::ptr::eq(s, spec))
                .map(|(_, t)| t)
        };
        of_host(host).or_else(|| of_host(&wildcard_parent(host)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_matching() {
        assert_eq!(
            Target::parse("http://127.0.0.1:3000").unwrap().authority,
            "127.0.0.1:3000"
        );
        assert_eq!(Target::parse("http://svc").unwrap().authority, "svc:80");
        assert!(Target::parse("https://x").is_err());
        assert!(Target::parse("http://x/path").is_err());
        let rule = |h: &str, p: &str, s: &str| Rule {
            hostname: h.into(),
            path: p.into(),
            path_type: Default::default(),
            service: s.into(),
        };
        let rules = Rules::new(&[
            rule("*.demo.localhost", "/", "http://127.0.0.1:1"),
            rule("app.demo.localhost", "/", "http://127.0.0.1:2"),
            rule("app.demo.localhost", "/api", "http://127.0.0.1:3"),
        ])
        .unwrap();
        assert_eq!(
            rules
                .find("app.demo.localhost", "/api/x")
                .unwrap()
                .authority,
            "127.0.0.1:3"
        );
        assert_eq!(
            rules.find("app.demo.localhost", "/apix").unwrap().authority,
            "127.0.0.1:2"
        );
        assert_eq!(
            rules.find("other.demo.localhost", "/").unwrap().authority,
            "127.0.0.1:1"
        );
        assert!(rules.find("else.localhost", "/").is_none());
    }
}
