//! Request checks and header rewriting at the edge.
//!
//! Routing uses the `Host` header alone, never `Forwarded` or `X-Forwarded-Host` (a client
//! could name another tenant's host there), and the client address comes from the socket.
//! Framing that two parsers could read differently (Content-Length with Transfer-Encoding, two
//! Content-Lengths, no or two Hosts) is refused before anything is forwarded.

use std::net::IpAddr;

use actix_web::http::header::{self, HeaderMap, HeaderName};
use tunnelgate_proto::control::HeaderList;
use tunnelgate_proto::routes::normalize_host;

use super::Incoming;
use crate::error::ProxyError;

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the legacy ones proxies strip.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers a client may write but only the gateway may set (or that upstreams commonly trust
/// as set by a proxy). Dropped whatever the client sends, also when spelled with `_` for `-`
/// (`X_Forwarded_For`), which some servers (CGI, PHP, nginx with underscores_in_headers) read
/// as the same header.
const EDGE_OWNED: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    // Internal to the edge (`proxy::front`).
    "x-tunnelgate-upgrade",
    "x-tunnelgate-ignored",
];

/// Headers that a `Connection` token can never remove: what routing and framing depend on and
/// the client's credentials. (What the gateway sets is added after the filtering, whatever is
/// listed.)
const NOT_HOP_LISTABLE: &[&str] = &["host", "content-length", "cookie", "authorization"];

/// True for a header only the gateway may set, in any spelling.
fn is_edge_owned(name: &str) -> bool {
    if name.contains('_') {
        let dashed = name.replace('_', "-");
        return EDGE_OWNED.contains(&dashed.as_str());
    }
    EDGE_OWNED.contains(&name)
}

/// WebSocket handshake headers, dropped from requests that are not upgrades (a stray
/// handshake means nothing there); on an upgrade they pass end to end.
const WS_HANDSHAKE: &[&str] = &[
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-accept",
];

/// The framing and `Host` checks; returns the normalised host.
pub fn check_request(req: &Incoming, max_header_bytes: usize) -> Result<String, ProxyError> {
    let h = req.headers;
    let bad = |s: &'static str| Err(ProxyError::BadRequest(s.into()));
    if h.contains_key(header::CONTENT_LENGTH) && h.contains_key(header::TRANSFER_ENCODING) {
        return bad("request has both Content-Length and Transfer-Encoding");
    }
    if h.get_all(header::CONTENT_LENGTH).count() > 1 {
        return bad("request has more than one Content-Length");
    }
    let mut hosts = h.get_all(header::HOST);
    let host = match (hosts.next(), hosts.next()) {
        (None, _) => match req.uri.authority() {
            // HTTP/2 carries the host in :authority.
            Some(a) if req.version >= actix_web::http::Version::HTTP_2 => a.as_str().to_string(),
            _ => return bad("request has no Host header"),
        },
        (Some(_), Some(_)) => return bad("request has more than one Host header"),
        (Some(v), None) => match v.to_str() {
            Ok(s) => s.to_string(),
            Err(_) => return bad("Host header is not valid text"),
        },
    };
    let host = normalize_host(&host)
        .map_err(|e| ProxyError::BadRequest(format!("invalid Host header: {e}").into()))?;
    if let Some(authority) = req.uri.authority() {
        let target = normalize_host(authority.as_str()).unwrap_or_default();
        if target != host {
            return bad("request target and Host header name different hosts");
        }
    }
    let size: usize = h.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    if size > max_header_bytes {
        return Err(ProxyError::HeadersTooLarge(max_header_bytes));
    }
    Ok(host)
}

/// The `Upgrade` an HTTP/1.1 request asks for (`Connection: upgrade` and an `Upgrade` header),
/// for any protocol but h2c (HTTP/2 is negotiated at the edge, not tunnelled): WebSocket,
/// SPDY/3.1 (kubectl's exec and port-forward fallback), and the rest.
pub fn upgrade_request(req: &Incoming) -> Option<String> {
    if req.version != actix_web::http::Version::HTTP_11 {
        return None;
    }
    let h = req.headers;
    let asks = h
        .get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    // `proxy::front` moved a non-WebSocket `Upgrade` here (clients cannot set this header).
    let value = h
        .get(super::front::UPGRADE_HEADER)
        .or_else(|| h.get(header::UPGRADE))?
        .to_str()
        .ok()?
        .trim();
    let protocols: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.eq_ignore_ascii_case("h2c"))
        .collect();
    (asks && !protocols.is_empty()).then(|| protocols.join(", "))
}

/// True when the request carries a body the upstream must receive.
pub fn has_body(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// Header names the client listed in `Connection` (hop-by-hop for this connection), less
/// those a token may never remove.
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && !NOT_HOP_LISTABLE.contains(&t.as_str()))
        .collect()
}

fn is_hop(name: &HeaderName, listed: &[String]) -> bool {
    let n = name.as_str();
    HOP_BY_HOP.contains(&n) || listed.iter().any(|t| t == n)
}

/// The headers sent to the agent: hop-by-hop and edge-owned ones removed, ours added. For an
/// upgrade, `Connection: upgrade` and the `Upgrade` asked for go on, and the handshake headers
/// (`Sec-WebSocket-*`) pass: client and upstream do their handshake end to end.
pub fn upstream_request_headers(
    headers: &HeaderMap,
    client_ip: Option<IpAddr>,
    upgrade: Option<&str>,
    proto: &str,
) -> Result<HeaderList, ProxyError> {
    let listed = connection_tokens(headers);
    let mut out = HeaderList::with_capacity(headers.len() + 3);
    let mut original_host = None;
    for (name, value) in headers.iter() {
        if is_hop(name, &listed)
            || is_edge_owned(name.as_str())
            || (upgrade.is_none() && WS_HANDSHAKE.contains(&name.as_str()))
        {
            continue;
        }
        let value = value.to_str().map_err(|_| {
            ProxyError::BadRequest(format!("header {name} is not valid text").into())
        })?;
        if name == header::HOST {
            original_host = Some(value.to_string());
        }
        out.push((name.as_str().to_string(), value.to_string()));
    }
    if let Some(u) = upgrade {
        out.push(("connection".into(), "upgrade".into()));
        out.push(("upgrade".into(), u.to_string()));
    }
    if let Some(ip) = client_ip {
        out.push(("x-forwarded-for".into(), ip.to_string()));
    }
    out.push(("x-forwarded-proto".into(), proto.into()));
    if let Some(h) = original_host {
        out.push(("x-forwarded-host".into(), h));
    }
    Ok(out)
}

/// Whether a response header from the agent is passed to the client.
pub fn keep_response_header(name: &str, listed: &[String]) -> bool {
    !HOP_BY_HOP.contains(&name) && !listed.iter().any(|t| t == name)
}

/// The tokens of one response `Connection` field's value (lower case).
pub fn response_connection_tokens(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .split(',')
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// A `Set-Cookie` value with any `Domain` attribute that `is_own` refuses (a name that is not
/// the publishing cluster's) removed, so the cookie stays with the host that set it. A tenant
/// cannot set cookies for the gateway's shared parent domain or another tenant.
pub fn scope_set_cookie<'a>(
    value: &'a str,
    is_own: impl Fn(&str) -> bool,
) -> std::borrow::Cow<'a, str> {
    let within = |d: &str| {
        let d = d.trim().trim_start_matches('.').trim_end_matches('.');
        is_own(&d.to_ascii_lowercase())
    };
    let mut parts = value.split(';');
    let first = parts.next().unwrap_or("");
    let mut removed = false;
    let mut out = String::with_capacity(value.len());
    out.push_str(first);
    for attr in parts {
        let name = attr.split('=').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("domain") {
            let dom = attr.split_once('=').map_or("", |(_, v)| v);
            if !within(dom) {
                removed = true;
                continue;
            }
        }
        out.push(';');
        out.push_str(attr);
    }
    if removed {
        std::borrow::Cow::Owned(out)
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn rewrites_forwarding_headers() {
        let req = TestRequest::default()
            .insert_header(("host", "app.demo.localhost:8080"))
            .insert_header(("x-forwarded-for", "6.6.6.6"))
            .insert_header(("forwarded", "for=6.6.6.6;host=bank.other.localhost"))
            .insert_header(("connection", "keep-alive, x-secret-hop"))
            .insert_header(("x-secret-hop", "1"))
            .insert_header(("authorization", "Bearer abc"))
            .to_http_request();
        let h = upstream_request_headers(
            req.headers(),
            Some("127.0.0.1".parse().unwrap()),
            None,
            "http",
        )
        .unwrap();
        let get = |n: &str| {
            h.iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("x-forwarded-for"), vec!["127.0.0.1"]);
        assert_eq!(get("x-forwarded-host"), vec!["app.demo.localhost:8080"]);
        assert_eq!(get("host"), vec!["app.demo.localhost:8080"]);
        assert_eq!(get("authorization"), vec!["Bearer abc"]);
        assert!(get("forwarded").is_empty());
        assert!(get("connection").is_empty());
        assert!(get("x-secret-hop").is_empty());
    }

    #[test]
    fn connection_cannot_remove_host_or_edge_headers() {
        let req = TestRequest::default()
            .insert_header(("host", "app.demo.localhost"))
            .insert_header(("connection", "host, x-forwarded-for, x-auth-user, cookie"))
            .insert_header(("x-auth-user", "alice"))
            .insert_header(("cookie", "a=1"))
            .insert_header(("x-real-ip", "6.6.6.6"))
            .insert_header(("true-client-ip", "6.6.6.6"))
            .insert_header(("x-original-url", "/admin"))
            .insert_header(("x_forwarded_for", "6.6.6.6"))
            .insert_header(("X_Real_IP", "6.6.6.6"))
            .to_http_request();
        let h = upstream_request_headers(
            req.headers(),
            Some("10.0.0.1".parse().unwrap()),
            None,
            "http",
        )
        .unwrap();
        let names: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
        assert!(names.contains(&"host"), "{names:?}");
        assert!(names.contains(&"cookie"), "{names:?}");
        assert!(!names.contains(&"x-auth-user"), "{names:?}");
        for gone in [
            "x-real-ip",
            "true-client-ip",
            "x-original-url",
            "x_forwarded_for",
            "x_real_ip",
        ] {
            assert!(!names.contains(&gone), "{gone} passed: {names:?}");
        }
        let xff: Vec<&str> = h
            .iter()
            .filter(|(k, _)| k == "x-forwarded-for")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(xff, vec!["10.0.0.1"]);
    }

    #[test]
    fn cookies_stay_within_the_cluster() {
        let own = |d: &str| d == "demo.localhost" || d.ends_with(".demo.localhost");
        assert_eq!(
            scope_set_cookie("a=1; Domain=localhost; Path=/", own),
            "a=1; Path=/"
        );
        assert_eq!(scope_set_cookie("a=1; domain=.other.localhost", own), "a=1");
        assert_eq!(
            scope_set_cookie("a=1; Domain=app.demo.localhost", own),
            "a=1; Domain=app.demo.localhost"
        );
        assert_eq!(
            scope_set_cookie("a=1; Domain=.Demo.Localhost", own),
            "a=1; Domain=.Demo.Localhost"
        );
        assert_eq!(
            scope_set_cookie("a=1; Domain=evildemo.localhost", own),
            "a=1"
        );
        assert_eq!(scope_set_cookie("a=1; HttpOnly", own), "a=1; HttpOnly");
    }

    #[test]
    fn routes_on_host_not_forwarded_headers() {
        let req = TestRequest::default()
            .insert_header(("host", "app.demo.localhost"))
            .insert_header(("x-forwarded-host", "bank.other.localhost"))
            .insert_header(("forwarded", "host=bank.other.localhost"))
            .to_http_request();
        assert_eq!(
            check_request(&Incoming::of(&req), 8192).unwrap(),
            "app.demo.localhost"
        );
    }

    #[test]
    fn refuses_ambiguous_framing() {
        let both = TestRequest::default()
            .insert_header(("host", "a.b"))
            .insert_header(("content-length", "3"))
            .insert_header(("transfer-encoding", "chunked"))
            .to_http_request();
        assert!(matches!(
            check_request(&Incoming::of(&both), 8192),
            Err(ProxyError::BadRequest(_))
        ));
        let nohost = TestRequest::default().to_http_request();
        assert!(matches!(
            check_request(&Incoming::of(&nohost), 8192),
            Err(ProxyError::BadRequest(_))
        ));
        let big = TestRequest::default()
            .insert_header(("host", "a.b"))
            .insert_header(("x-big", "y".repeat(100)))
            .to_http_request();
        assert!(matches!(
            check_request(&Incoming::of(&big), 64),
            Err(ProxyError::HeadersTooLarge(64))
        ));
    }
}
