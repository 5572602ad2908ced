//! Routes and how a request picks one, following Kubernetes Ingress rules: a host is an exact
//! name or a `*.` wildcard covering exactly one label; among the paths of the chosen host an
//! Exact match beats any Prefix, and the longest Prefix (matched by whole path elements) wins.
//! An exact host beats a wildcard one.

use serde::{Deserialize, Serialize};

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

/// Annotations carried with a route (Kubernetes Ingress annotations).
pub type Annotations = std::collections::BTreeMap<String, String>;

/// Checks a cluster id: one DNS label (it becomes `{id}.{domain}`), never with `--` (which
/// separates a name from its cluster in flat names `{name}--{cluster}.{domain}`).
pub fn check_cluster_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
        && !id.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "cluster id {id:?} must be one DNS label: a-z, 0-9 and '-' (never two in a row: \
             `--` separates a name from its cluster in flat names), at most 63 characters"
        ))
    }
}

/// Normalises a `Host` header value for lookup: lower case, port and trailing dot removed,
/// each label checked. IPv6 literals (`[::1]:8080`) are kept in brackets.
pub fn normalize_host(raw: &str) -> Result<String, HostError> {
    let raw = raw.trim();
    if let Some(rest) = raw.strip_prefix('[') {
        let end = rest.find(']').ok_or(HostError::BadLabel(raw.into()))?;
        let (ip, after) = (&rest[..end], &rest[end + 1..]);
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !port_ok {
            return Err(HostError::BadLabel(raw.into()));
        }
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

/// Why a request path cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path must start with '/'")]
    NotAbsolute,
    #[error("the request path has a malformed percent escape")]
    BadEscape,
    #[error("the request path has a control character, space or backslash")]
    BadByte,
}

/// Normalises a request path before routing (RFC 3986 §6.2.2): percent-escapes of unreserved
/// characters are decoded (`%7E` → `~`, `%2e` → `.`), other escapes get upper-case hex, and
/// dot segments are removed (§5.2.4), so `/api/../admin` and `/api/%2e%2e/admin` both become
/// `/admin`. The gateway matches routes on this path and forwards this path, so no request can
/// leave the prefix it was routed by.
///
/// Policy for `%2F` (an encoded `/`): it stays encoded and is part of its segment, never a
/// separator, for matching and upstream alike. A backslash, space or control byte is refused
/// (some servers read `\` as `/`). Empty segments (`//`) are kept. The result is idempotent.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let b = raw.as_bytes();
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = |x: u8| (x as char).to_digit(16);
            let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let v = (h * 16 + l) as u8;
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                decoded.push(v as char);
            } else {
                decoded.push('%');
                decoded.push_str(&format!("{v:02X}"));
            }
            i += 3;
            continue;
        }
        if c <= b' ' || c == 0x7f || c == b'\\' {
            return Err(PathError::BadByte);
        }
        // Multi-byte UTF-8 passes through whole (it was valid in `raw`).
        let len = utf8_len(c);
        decoded.push_str(raw.get(i..i + len).ok_or(PathError::BadByte)?);
        i += len;
    }
    Ok(remove_dot_segments(&decoded))
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// RFC 3986 §5.2.4 for an absolute path, segment by segment.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let n = segs.len();
    for (i, seg) in segs.into_iter().enumerate() {
        let last = i + 1 == n;
        match seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// Checks the sizes of a published route's fields; the gateway refuses a route that fails.
pub fn check_route_bounds(r: &RouteSpec) -> Result<(), String> {
    use crate::limits::*;
    if r.host.len() > MAX_ROUTE_HOST {
        return Err(format!("host is longer than {MAX_ROUTE_HOST} bytes"));
    }
    if r.path.len() > MAX_ROUTE_PATH {
        return Err(format!("path is longer than {MAX_ROUTE_PATH} bytes"));
    }
    let long = |f: &Option<String>| f.as_ref().is_some_and(|s| s.len() > MAX_ROUTE_SERVICE);
    if long(&r.service) || long(&r.namespace) {
        return Err(format!(
            "service or namespace is longer than {MAX_ROUTE_SERVICE} bytes"
        ));
    }
    let bytes: usize = r.annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if r.annotations.len() > MAX_ROUTE_ANNOTATIONS || bytes > MAX_ROUTE_ANNOTATION_BYTES {
        return Err(format!(
            "more than {MAX_ROUTE_ANNOTATIONS} annotations or {MAX_ROUTE_ANNOTATION_BYTES} bytes of them"
        ));
    }
    Ok(())
}

/// Bytes a route takes in the registry's accounting (its fields' lengths).
pub fn route_bytes(r: &RouteSpec) -> usize {
    let opt = |f: &Option<String>| f.as_ref().map_or(0, String::len);
    let ann: usize = r.annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    r.host.len() + r.path.len() + opt(&r.service) + opt(&r.namespace) + ann + 16
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
        assert!(normalize_host("[::1]x").is_err());
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

    #[test]
    fn normalises_paths() {
        let n = |p: &str| normalize_path(p);
        assert_eq!(n("/api/../admin").unwrap(), "/admin");
        assert_eq!(n("/api/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/api/%2E%2E/admin").unwrap(), "/admin");
        assert_eq!(n("/a/./b/").unwrap(), "/a/b/");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/../../x").unwrap(), "/x");
        assert_eq!(n("/..").unwrap(), "/");
        assert_eq!(n("/%7euser").unwrap(), "/~user");
        assert_eq!(n("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(n("/a%2F..%2Fb").unwrap(), "/a%2F..%2Fb");
        assert_eq!(n("/caf\u{e9}").unwrap(), "/caf\u{e9}");
        assert_eq!(n("//x").unwrap(), "//x");
        assert_eq!(n("*"), Err(PathError::NotAbsolute));
        assert_eq!(n("/%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/%2"), Err(PathError::BadEscape));
        assert_eq!(n("/a\\..\\b"), Err(PathError::BadByte));
    }

    #[test]
    fn route_bounds() {
        let mut r = route("h", "/", PathType::Prefix);
        assert!(check_route_bounds(&r).is_ok());
        r.path = format!("/{}", "x".repeat(crate::limits::MAX_ROUTE_PATH));
        assert!(check_route_bounds(&r).is_err());
        r.path = "/".into();
        r.service = Some("s".repeat(10_000));
        assert!(check_route_bounds(&r).is_err());
        r.service = None;
        for i in 0..40 {
            r.annotations.insert(format!("k{i}"), "v".into());
        }
        assert!(check_route_bounds(&r).is_err());
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn path_chars() -> impl Strategy<Value = String> {
            proptest::collection::vec(
                prop_oneof![
                    Just("/".to_string()),
                    Just(".".to_string()),
                    Just("..".to_string()),
                    Just("%2e".to_string()),
                    Just("%2F".to_string()),
                    Just("%41".to_string()),
                    Just("%".to_string()),
                    "[a-z~_-]{1,3}",
                    "\\PC",
                ],
                0..24,
            )
            .prop_map(|v| format!("/{}", v.concat()))
        }

        proptest! {
            #[test]
            fn path_normalisation_is_idempotent_and_safe(p in path_chars()) {
                if let Ok(once) = normalize_path(&p) {
                    prop_assert!(once.starts_with('/'));
                    prop_assert_eq!(normalize_path(&once), Ok(once.clone()));
                    // No dot segment survives: nothing can climb out of a prefix.
                    prop_assert!(!once.split('/').any(|s| s == ".." || s == "."));
                }
            }

            #[test]
            fn path_normalisation_never_panics(p in "\\PC{0,64}") {
                let _ = normalize_path(&p);
            }

            #[test]
            fn host_normalisation_is_idempotent(h in "[A-Za-z0-9.:\\[\\]_-]{0,40}") {
                if let Ok(once) = normalize_host(&h) {
                    prop_assert_eq!(normalize_host(&once), Ok(once.clone()));
                    prop_assert_eq!(once.to_ascii_lowercase(), once.clone());
                }
            }

            #[test]
            fn host_normalisation_never_panics(h in "\\PC{0,300}") {
                let _ = normalize_host(&h);
            }
        }
    }
}
