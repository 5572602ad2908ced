//! The request head the byte pipe (`pipe.rs`) writes to a plain-HTTP upstream, built from the
//! gateway's `proxy_request`: method and target checked (origin-form, nothing that ends the
//! line), header names and values checked for tokens and line breaks (nothing the gateway sent
//! can split the head), the Host the route asks for, the trace context, and chunked framing for
//! a body without a length.

use bytes::{BufMut, BytesMut};
use tunnelgate_proto::control::ProxyRequest;

use crate::rules::Target;

/// The request head as the upstream receives it, and whether its body goes chunked.
pub(super) fn request_head(
    r: &ProxyRequest,
    target: &Target,
    traceparent: Option<&str>,
) -> Result<(BytesMut, bool), String> {
    if !r.method.bytes().all(is_token) || r.method.is_empty() {
        return Err(format!("invalid method {:?}", r.method));
    }
    let mut head = BytesMut::with_capacity(256 + r.headers.len() * 48);
    head.put_slice(r.method.as_bytes());
    head.put_u8(b' ');
    put_target(&mut head, &r.method, &r.path, r.query.as_deref())?;
    head.put_slice(b" HTTP/1.1\r\n");
    let mut host = false;
    let mut length = false;
    let put = |head: &mut BytesMut, name: &str, value: &str| -> Result<(), String> {
        if name.is_empty() || !name.bytes().all(is_token) {
            return Err(format!("invalid header name {name:?}"));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(format!("invalid value of header {name}"));
        }
        head.put_slice(name.as_bytes());
        head.put_slice(b": ");
        head.put_slice(value.as_bytes());
        head.put_slice(b"\r\n");
        Ok(())
    };
    for (name, value) in &r.headers {
        if name.eq_ignore_ascii_case("host") {
            if target.host_header.is_some() {
                continue;
            }
            host = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = true;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // The gateway never sends it (hop-by-hop); the agent frames the body itself.
            continue;
        }
        put(&mut head, name, value)?;
    }
    match &target.host_header {
        Some(h) => put(&mut head, "host", h)?,
        None if !host => put(&mut head, "host", &target.authority)?,
        None => {}
    }
    if let Some(tp) = traceparent {
        put(&mut head, "traceparent", tp)?;
    }
    let chunked = r.body && !length && r.upgrade.is_none();
    if chunked {
        put(&mut head, "transfer-encoding", "chunked")?;
    }
    head.put_slice(b"\r\n");
    Ok((head, chunked))
}

/// Writes the request target: origin-form, or `*` for OPTIONS. Refused: CONNECT, a path that
/// is not origin-form (so no target can name another authority), and any byte that would end
/// or split the request line (controls, space, DEL) or start a fragment.
fn put_target(
    head: &mut BytesMut,
    method: &str,
    path: &str,
    query: Option<&str>,
) -> Result<(), String> {
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err("CONNECT is not forwarded".into());
    }
    if path == "*" && method == "OPTIONS" {
        head.put_u8(b'*');
        return Ok(());
    }
    if !path.starts_with('/') {
        return Err(format!("request path {path:?} is not origin-form"));
    }
    let bad = |b: u8| b <= b' ' || b == 0x7f || b == b'#';
    let query = query.unwrap_or_default();
    if path.bytes().chain(query.bytes()).any(bad) {
        return Err(format!("invalid request target {path:?}"));
    }
    head.put_slice(path.as_bytes());
    if !query.is_empty() {
        head.put_u8(b'?');
        head.put_slice(query.as_bytes());
    }
    Ok(())
}

/// A token character of RFC 9110 (header names, methods).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    // Test code: a failed unwrap is a failed test.
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn request(method: &str, headers: &[(&str, &str)], body: bool) -> ProxyRequest {
        ProxyRequest {
            method: method.into(),
            host: "app.demo.localhost".into(),
            path: "/a%20b".into(),
            query: Some("x=1".into()),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body,
            ..Default::default()
        }
    }

    fn head(r: &ProxyRequest, target: &str) -> Result<(String, bool), String> {
        let t = Target::parse(target)?;
        request_head(
            r,
            &t,
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        )
        .map(|(h, c)| (String::from_utf8(h.to_vec()).unwrap(), c))
    }

    #[test]
    fn writes_the_head_with_the_public_host_and_trace() {
        let r = request(
            "GET",
            &[("host", "app.demo.localhost"), ("accept", "*/*")],
            false,
        );
        let (h, chunked) = head(&r, "http://127.0.0.1:9000").unwrap();
        assert!(!chunked);
        assert!(h.starts_with("GET /a%20b?x=1 HTTP/1.1\r\n"), "{h}");
        assert!(h.contains("\r\nhost: app.demo.localhost\r\n"), "{h}");
        assert!(h.contains("\r\ntraceparent: 00-0af7"), "{h}");
        assert!(h.ends_with("\r\n\r\n"));
    }

    #[test]
    fn a_body_without_length_goes_chunked_and_transfer_encoding_is_the_agents() {
        let r = request("POST", &[("transfer-encoding", "gzip, chunked")], true);
        let (h, chunked) = head(&r, "http://127.0.0.1:9000").unwrap();
        assert!(chunked);
        assert_eq!(h.matches("transfer-encoding").count(), 1, "{h}");
        assert!(h.contains("transfer-encoding: chunked\r\n"), "{h}");
        // No Host from the gateway: the upstream's authority.
        assert!(h.contains("host: 127.0.0.1:9000\r\n"), "{h}");
        let r = request("POST", &[("content-length", "3")], true);
        assert!(!head(&r, "http://127.0.0.1:9000").unwrap().1);
    }

    #[test]
    fn targets_are_origin_form_or_an_options_asterisk() {
        let mut r = request("OPTIONS", &[], false);
        r.path = "*".into();
        assert!(
            head(&r, "http://127.0.0.1:9000")
                .unwrap()
                .0
                .starts_with("OPTIONS * HTTP/1.1\r\n")
        );
        r.method = "GET".into();
        assert!(head(&r, "http://127.0.0.1:9000").is_err());
        for (method, path, query) in [
            ("CONNECT", "/", None),
            ("GET", "@evil:80/", None),
            ("GET", "http://evil/", None),
            ("GET", "/x#frag", None),
            ("GET", "/a b", None),
            ("GET", "/a", Some("q=1 HTTP/1.1\r\nX: y")),
            ("GET", "/a\x7f", None),
        ] {
            let mut r = request(method, &[], false);
            r.path = path.into();
            r.query = query.map(str::to_string);
            assert!(
                head(&r, "http://127.0.0.1:9000").is_err(),
                "{method} {path} {query:?}"
            );
        }
        let mut r = request("GET", &[], false);
        r.query = None;
        assert!(
            head(&r, "http://127.0.0.1:9000")
                .unwrap()
                .0
                .starts_with("GET /a%20b HTTP/1.1\r\n")
        );
    }

    #[test]
    fn nothing_can_split_the_head() {
        for (method, headers) in [
            ("GET\r\nX: y", vec![]),
            ("", vec![]),
            ("GET", vec![("x-a", "ok\r\nx-injected: 1")]),
            ("GET", vec![("x-a", "nul\0")]),
            ("GET", vec![("bad name", "v")]),
            ("GET", vec![("", "v")]),
        ] {
            let r = request(method, &headers, false);
            assert!(
                head(&r, "http://127.0.0.1:9000").is_err(),
                "{method:?} {headers:?}"
            );
        }
    }
}
