//! Routes and how a request picks one, following Kubernetes Ingress rules: a host is an exact
//! name or a `*.` wildcard covering exactly one label; among the paths of the chosen host an
//! Exact match beats any Prefix, and the longest Prefix (matched by whole path elements) wins.
//! An exact host beats a wildcard one.

use serde::{Deserialize, Serialize};

use crate::control::Annotations;

/// How a route's path is compared with a request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum PathType {
    Exact,
    #[default]
    Prefix,
    /// Treated as Prefix, as most ingress controllers do.
    ImplementationSpecific,
}

/// One published route, as the agent sends it and the registry stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteSpec {
    pub host: String,
    pub path: String,
    pub path_type: PathType,
    /// Kubernetes Service name, or the upstream URL for a static route.
    pub service: Option<String>,
    pub namespace: Option<String>,
    pub port: Option<u16>,
    pub tls: bool,
    pub annotations: Annotations,
}

impl Default for RouteSpec {
    fn default() -> Self {
        RouteSpec {
            host: String::new(),
            path: "/".into(),
            path_type: PathType::Prefix,
            service: None,
            namespace: None,
            port: None,
            tls: false,
            annotations: Annotations::new(),
        }
    }
}

/// Why a host name is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("host is empty")]
    Empty,
    #[error("host is longer than 253 characters")]
    TooLong,
    #[error("host has an invalid label {0:?}")]
    BadLabel(String),
    #[error("a wildcard must be the whole first label (`*.example.com`)")]
    BadWildcard,
}

/// Normalises a `Host` header value for lookup: lower case, port and trailing dot removed,
/// each label checked. IPv6 literals (`[::1]:8080`) are kept in brackets.
pub fn normalize_host(raw: &str) -> Result<String, HostError> {
    let raw = raw.trim();
    if let Some(rest) = raw.strip_prefix('[') {
        let end = rest.find(']').ok_or(HostError::BadLabel(raw.into()))?;
        let ip = &rest[..end];
        if ip.is_empty()
            || !ip
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(HostError::BadLabel(raw.into()));
        }
        return Ok(format!("[{}]", ip.to_ascii_lowercase()));
    }
    let name = match raw.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        Some(_) => return Err(HostError::BadLabel(raw.into())),
        None => raw,
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    check_name(&name, false)?;
    Ok(name)
}

/// Checks a route's host: a DNS name, or `*.` followed by one.
pub fn check_route_host(host: &str) -> Result<(), HostError> {
    match host.strip_prefix("*.") {
        Some(rest) => check_name(rest, true),
        None => check_name(host, false),
    }
}

fn check_name(name: &str, after_wildcard: bool) -> Result<(), HostError> {
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.len() > 253 {
        return Err(HostError::TooLong);
    }
    for label in name.split('.') {
        if label == "*" {
            return Err(HostError::BadWildcard);
        }
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(HostError::BadLabel(label.into()));
        }
    }
    let _ = after_wildcard;
    Ok(())
}

/// The wildcard route host that would cover `host`: `a.b.c` → `*.b.c`. None for a single label.
pub fn wildcard_parent(host: &str) -> Option<String> {
    let (_, parent) = host.split_once('.')?;
    Some(format!("*.{parent}"))
}

/// How well a route path matches a request path; None when it does not match. Exact matches
/// rank above every prefix match, longer prefixes above shorter ones.
pub fn path_score(path_type: PathType, route_path: &str, req_path: &str) -> Option<usize> {
    match path_type {
        PathType::Exact => (route_path == req_path).then_some(usize::MAX),
        PathType::Prefix | PathType::ImplementationSpecific => {
            let prefix = route_path.trim_end_matches('/');
            if prefix.is_empty() {
                return Some(0);
            }
            let rest = req_path.strip_prefix(prefix)?;
            (rest.is_empty() || rest.starts_with('/')).then_some(prefix.len())
        }
    }
}

/// The best route among those of one host for `req_path`.
pub fn best_match<'a, I>(routes: I, req_path: &str) -> Option<&'a RouteSpec>
where
    I: IntoIterator<Item = &'a RouteSpec>,
{
    routes
        .into_iter()
        .filter_map(|r| path_score(r.path_type, &r.path, req_path).map(|s| (s, r)))
        .max_by_key(|(s, _)| *s)
        .map(|(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: &str, path: &str, t: PathType) -> RouteSpec {
        RouteSpec {
            host: host.into(),
            path: path.into(),
            path_type: t,
            ..Default::default()
        }
    }

    #[test]
    fn normalises_hosts() {
        assert_eq!(
            normalize_host("App.Demo.Localhost:8080").unwrap(),
            "app.demo.localhost"
        );
        assert_eq!(
            normalize_host("app.demo.localhost.").unwrap(),
            "app.demo.localhost"
        );
        assert_eq!(normalize_host("[::1]:80").unwrap(), "[::1]");
        assert_eq!(normalize_host("127.0.0.1:8080").unwrap(), "127.0.0.1");
        assert!(normalize_host("").is_err());
        assert!(normalize_host("a..b").is_err());
        assert!(normalize_host("a b").is_err());
        assert!(normalize_host("*.a.b").is_err());
        assert!(normalize_host("a.b:x").is_err());
        assert!(normalize_host("evil.com/x").is_err());
    }

    #[test]
    fn route_hosts() {
        assert!(check_route_host("*.demo.localhost").is_ok());
        assert!(check_route_host("a.*.localhost").is_err());
        assert!(check_route_host("*").is_err());
        assert_eq!(wildcard_parent("a.b.c").as_deref(), Some("*.b.c"));
        assert_eq!(wildcard_parent("localhost"), None);
    }

    #[test]
    fn ingress_path_rules() {
        assert_eq!(path_score(PathType::Prefix, "/foo", "/foo/bar"), Some(4));
        assert_eq!(path_score(PathType::Prefix, "/foo/", "/foo"), Some(4));
        assert_eq!(path_score(PathType::Prefix, "/foo", "/foobar"), None);
        assert_eq!(path_score(PathType::Prefix, "/", "/anything"), Some(0));
        assert_eq!(path_score(PathType::Exact, "/foo", "/foo/"), None);
        let routes = [
            route("h", "/", PathType::Prefix),
            route("h", "/api", PathType::Prefix),
            route("h", "/api/v1", PathType::Prefix),
            route("h", "/api", PathType::Exact),
        ];
        assert_eq!(best_match(&routes, "/api/v1/x").unwrap().path, "/api/v1");
        assert_eq!(
            best_match(&routes, "/api").unwrap().path_type,
            PathType::Exact
        );
        assert_eq!(best_match(&routes, "/api/v2").unwrap().path, "/api");
        assert_eq!(best_match(&routes, "/other").unwrap().path, "/");
        assert!(best_match(&routes[1..2], "/other").is_none());
    }
}
