//! The agent's rules: what a rule is (`--route HOST=URL`, an `ingress` entry of the config
//! file, or an Ingress the agent watches), where it sends requests ([`Target`], with its
//! origin TLS options), and choosing the rule for a request by the gateway's own matching.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tunnelgate_proto::routes::{PathType, RouteSpec, best_match, wildcard_parent};

use crate::upstream::{DEFAULT_CONNECT_TIMEOUT, OriginTls, UpstreamClient, client_with};

/// `--route HOST=URL` or one `ingress` rule of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Host the rule serves (`app.demo.localhost` or `*.demo.localhost`).
    pub hostname: String,
    /// Path prefix (or exact path with `path_type: Exact`); default `/`.
    #[serde(default = "root")]
    pub path: String,
    #[serde(default)]
    pub path_type: PathType,
    /// Upstream base URL, `http://host:port` or `https://host:port`.
    pub service: String,
    /// PEM file of CA certificates trusted for this https origin (cloudflared's `caPool`).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Name the origin's certificate is checked against (`originServerName`).
    #[serde(default)]
    pub origin_server_name: Option<String>,
    /// `Host` header the upstream receives instead of the public name (`httpHostHeader`).
    #[serde(default)]
    pub http_host_header: Option<String>,
    /// Do not check the origin's certificate (`noTLSVerify`): explicit opt-in, logged.
    #[serde(default)]
    pub no_tls_verify: bool,
}

pub(crate) fn root() -> String {
    "/".into()
}

/// Where a rule sends requests: `http(s)://authority`, with its origin options.
#[derive(Clone)]
pub struct Target {
    pub authority: String,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The `Host` header the upstream receives instead of the public name (`httpHostHeader`).
    pub host_header: Option<String>,
    /// A client of its own when the origin has TLS options; else the shared one is used.
    pub client: Option<UpstreamClient>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.authority == other.authority && self.scheme == other.scheme
    }
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let u = url::Url::parse(url).map_err(|e| format!("upstream {url:?}: {e}"))?;
        let scheme = match u.scheme() {
            "http" => "http",
            "https" => "https",
            other => {
                return Err(format!(
                    "upstream {url:?}: scheme {other:?} is not supported (use http:// or https://)"
                ));
            }
        };
        if !matches!(u.path(), "" | "/") || u.query().is_some() {
            return Err(format!("upstream {url:?}: give only scheme, host and port"));
        }
        let host = u
            .host_str()
            .ok_or_else(|| format!("upstream {url:?}: no host"))?;
        let port = u.port_or_known_default().unwrap_or(80);
        Ok(Target {
            authority: format!("{host}:{port}"),
            scheme,
            host_header: None,
            client: None,
        })
    }

    /// A target with a rule's origin options applied.
    pub fn for_rule(r: &Rule, connect_timeout: Duration) -> Result<Target, String> {
        let mut t = Target::parse(&r.service)?;
        let tls = OriginTls {
            ca_file: r.ca_file.clone(),
            server_name: r.origin_server_name.clone(),
            insecure: r.no_tls_verify,
        };
        if !tls.is_default() {
            if t.scheme != "https" {
                return Err(format!(
                    "upstream {}: origin TLS options need an https:// service",
                    r.service
                ));
            }
            if tls.insecure {
                tracing::warn!(upstream = %r.service, "no_tls_verify: the origin's certificate is not checked");
            }
            t.client = Some(client_with(connect_timeout, &tls)?);
        }
        t.host_header = r.http_host_header.clone();
        Ok(t)
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

    /// Static rules as routes and their targets (with their origin options).
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
                    Target::for_rule(r, DEFAULT_CONNECT_TIMEOUT)?,
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
        let https = Target::parse("https://x").unwrap();
        assert_eq!((https.scheme, https.authority.as_str()), ("https", "x:443"));
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("http://x/path").is_err());
        let rule = |h: &str, p: &str, s: &str| Rule {
            hostname: h.into(),
            path: p.into(),
            path_type: Default::default(),
            service: s.into(),
            ..Default::default()
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
