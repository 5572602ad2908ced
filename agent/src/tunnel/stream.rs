//! One proxied request on the agent: forwards it to the upstream, streams the body both ways
//! under flow control, and reports failures on this stream only.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Empty, StreamBody};
use tracing::Instrument;
use tunnelgate_mux::{Outbox, OutboxClosed, Outgoing, PipeReader, SendCredit};
use tunnelgate_proto::control::{ProxyError, ProxyErrorKind, ProxyRequest, ProxyResponse};
use tunnelgate_proto::limits::MAX_FRAME_PAYLOAD;
use tunnelgate_proto::{Control, Frame, ResetCode};

use crate::rules::Rules;
use crate::upstream::{UpBody, UpstreamClient};

/// What a stream task needs.
pub struct StreamTask {
    pub request: ProxyRequest,
    pub upload: Option<PipeReader>,
    pub credit: Arc<SendCredit>,
    pub outbox: Outbox,
    pub rules: Arc<Rules>,
    pub client: UpstreamClient,
    /// Idle connections to `http://` upstreams.
    pub pool: Arc<crate::pool::ConnPool>,
    /// The cluster's API server, with --kubernetes-api.
    pub kube_api: Option<Arc<crate::kubeapi::KubeApi>>,
    /// Log each upstream call (--access-log).
    pub access_log: bool,
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// The tunnel speaks protocol 3: response heads go as head frames, not JSON.
    pub binary_heads: bool,
}

impl StreamTask {
    /// Sends a response head the agent built (an HTTP client's, the Kubernetes API's) in the
    /// tunnel's protocol.
    pub(super) async fn send_head(&self, head: ProxyResponse) -> Result<(), OutboxClosed> {
        let head = Outgoing::response_head(head, self.binary_heads);
        self.outbox.send(head).await
    }

    pub(super) fn fail(&self, kind: ProxyErrorKind, message: String) -> Control {
        self.metrics.upstream_error(kind.as_str());
        tracing::warn!(
            stream = self.request.stream_id, host = %self.request.host, path = %self.request.path,
            kind = ?kind, error = %message, "upstream request failed"
        );
        Control::ProxyError(ProxyError {
            stream_id: self.request.stream_id,
            kind,
            message,
        })
    }

    /// Runs the request to completion inside a span carrying the gateway's request id, so
    /// every log line of it names the request as the gateway's lines do.
    pub async fn run(self) {
        let _open = crate::telemetry::StreamGuard::new(self.metrics.clone());
        let span = tracing::info_span!(
            "request",
            otel.name = "agent request",
            otel.kind = "server",
            request_id = self.request.request_id.as_deref().unwrap_or_default()
        );
        tunnelgate_telemetry::continue_trace(&span, self.request.traceparent.as_deref());
        self.serve().instrument(span).await
    }

    /// Runs the request to completion; errors are reported to the gateway, never raised.
    async fn serve(mut self) {
        let id = self.request.stream_id;
        let started = std::time::Instant::now();
        // A plain-HTTP upstream (no origin TLS options, not the Kubernetes API) gets the
        // request as bytes on a pooled connection (ADR 0010); the others go through hyper.
        if self.request.kubernetes.is_none() {
            let rules = self.rules.clone();
            if let Some(t) = rules.find(&self.request.host, &self.request.path)
                && t.scheme == "http"
                && t.client.is_none()
            {
                return self.serve_piped(t, started).await;
            }
        }
        let (mut req, client) = match self.build_request() {
            Ok(r) => r,
            Err((kind, why)) => {
                let msg = self.fail(kind, why);
                let _ = self.outbox.send_control(&msg).await;
                return;
            }
        };
        // The upstream call is a span of its own; a traced upstream continues from it.
        let call = tracing::info_span!("upstream call", otel.kind = "client");
        if let Some(tp) = tunnelgate_telemetry::traceparent(&call)
            && let Ok(v) = http::HeaderValue::from_str(&tp)
        {
            req.headers_mut().insert("traceparent", v);
        }
        let resp = match client.request(req).instrument(call).await {
            Ok(r) => r,
            Err(e) => {
                let kind = if e.is_connect() {
                    ProxyErrorKind::UpstreamRefused
                } else {
                    ProxyErrorKind::UpstreamFailed
                };
                let msg = self.fail(kind, error_chain(&e));
                let _ = self.outbox.send_control(&msg).await;
                return;
            }
        };
        if self.access_log {
            let r = &self.request;
            tracing::info!(
                method = %r.method, host = %r.host, path = %r.path, status = resp.status().as_u16(),
                head_ms = started.elapsed().as_secs_f64() * 1000.0, "upstream call"
            );
        }
        if self.request.upgrade.is_some() && resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
        {
            return self.run_upgraded(resp).await;
        }
        let (parts, mut body) = resp.into_parts();
        let has_body = !http_body::Body::is_end_stream(&body);
        let headers = header_list(&parts.headers);
        let head = ProxyResponse {
            stream_id: id,
            status: parts.status.as_u16(),
            headers,
            body: has_body,
        };
        if self.send_head(head).await.is_err() || !has_body {
            return;
        }
        while let Some(frame) = body.frame().await {
            let data = match frame {
                Ok(f) => match f.into_data() {
                    Ok(d) => d,
                    Err(_trailers) => continue,
                },
                Err(e) => {
                    tracing::warn!(stream = id, error = %error_chain(&e), "upstream body failed mid-response");
                    self.outbox.reset(id, ResetCode::UPSTREAM);
                    return;
                }
            };
            if self.data(data).await.is_err() {
                return;
            }
        }
        let _ = self.outbox.send_frame(Frame::End { stream: id }).await;
    }

    /// Sends body bytes to the gateway in frames under the stream's credit. `Err(None)`: the
    /// stream or the tunnel is gone (nothing to report).
    pub(super) async fn data(&self, mut data: Bytes) -> Result<(), Option<String>> {
        let stream = self.request.stream_id;
        while !data.is_empty() {
            let piece = data.split_to(data.len().min(MAX_FRAME_PAYLOAD));
            self.credit.acquire(piece.len()).await.map_err(|_| None)?;
            let frame = Frame::Data {
                stream,
                data: piece,
            };
            self.outbox.send_frame(frame).await.map_err(|_| None)?;
        }
        Ok(())
    }

    /// After the upstream's 101: the head goes back, then the connection's raw bytes both
    /// ways, each direction under its stream credit, until both ends have finished.
    async fn run_upgraded(mut self, resp: http::Response<hyper::body::Incoming>) {
        let id = self.request.stream_id;
        let head = ProxyResponse {
            stream_id: id,
            status: 101,
            headers: header_list(resp.headers()),
            body: true,
        };
        let upgraded = match hyper::upgrade::on(resp).await {
            Ok(u) => u,
            Err(e) => {
                let msg = self.fail(ProxyErrorKind::UpstreamFailed, error_chain(&e));
                let _ = self.outbox.send_control(&msg).await;
                return;
            }
        };
        if self.send_head(head).await.is_err() {
            return;
        }
        let (rd, wr) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
        self.splice(rd, wr, bytes::BytesMut::new()).await;
    }

    /// The upstream request and the client for its target (the target's own, for an origin
    /// with TLS options).
    fn build_request(
        &mut self,
    ) -> Result<(http::Request<UpBody>, UpstreamClient), (ProxyErrorKind, String)> {
        let r = &self.request;
        // A call to the cluster's API goes to the API server with the agent's credentials and
        // the identity the gateway authenticated, never by the rules.
        let api_headers;
        let (target, headers) = match (&r.kubernetes, &self.kube_api) {
            (Some(who), Some(api)) => {
                let token = api
                    .token()
                    .map_err(|e| (ProxyErrorKind::UpstreamFailed, e))?;
                api_headers = crate::kubeapi::api_headers(&r.headers, who, &token);
                (api.target(), &api_headers)
            }
            (Some(_), None) => {
                return Err((
                    ProxyErrorKind::NoRoute,
                    "this agent does not serve the cluster's Kubernetes API (start it with --kubernetes-api)".into(),
                ));
            }
            (None, _) => match self.rules.find(&r.host, &r.path) {
                Some(t) => (t, &r.headers),
                None => {
                    return Err((
                        ProxyErrorKind::NoRoute,
                        format!("no rule for {}{}", r.host, r.path),
                    ));
                }
            },
        };
        let uri = upstream_uri(
            target.scheme,
            &target.authority,
            &r.method,
            &r.path,
            r.query.as_deref(),
        )
        .map_err(|why| (ProxyErrorKind::UpstreamFailed, why))?;
        let mut b = http::Request::builder().method(r.method.as_str()).uri(uri);
        for (name, value) in headers {
            if target.host_header.is_some() && name.eq_ignore_ascii_case("host") {
                continue;
            }
            b = b.header(name.as_str(), value.as_str());
        }
        if let Some(h) = &target.host_header {
            b = b.header("host", h.as_str());
        }
        let client = target.client.clone().unwrap_or_else(|| self.client.clone());
        // An upgrade request has no body of its own: the upload carries the bytes after 101.
        let upload = match r.upgrade {
            Some(_) => None,
            None => self.upload.take(),
        };
        let body: UpBody = match upload {
            Some(pipe) => {
                StreamBody::new(pipe.map_ok(http_body::Frame::data).map_err(|e| e.into()))
                    .boxed_unsync()
            }
            None => Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync(),
        };
        let req = b.body(body).map_err(|e| {
            (
                ProxyErrorKind::UpstreamFailed,
                format!("cannot build the upstream request: {e}"),
            )
        })?;
        Ok((req, client))
    }
}

/// A response's headers as the wire carries them.
fn header_list(h: &http::HeaderMap) -> tunnelgate_proto::control::HeaderList {
    h.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// An error and its causes on one line (`connection refused` is in the source, not the top).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The upstream URI, built from parts so that no request target can change the scheme, host
/// or port the agent dials: the path must be origin-form (`/…`), or `*` for OPTIONS alone;
/// CONNECT is never sent upstream.
pub fn upstream_uri(
    scheme: &str,
    authority: &str,
    method: &str,
    path: &str,
    query: Option<&str>,
) -> Result<http::Uri, String> {
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err("CONNECT is not forwarded".into());
    }
    let asterisk = path == "*" && method == "OPTIONS";
    if !asterisk && !path.starts_with('/') {
        return Err(format!("request path {path:?} is not origin-form"));
    }
    let pq = match query {
        Some(q) if !asterisk => format!("{path}?{q}"),
        _ => path.to_string(),
    };
    let pq: http::uri::PathAndQuery = pq
        .parse()
        .map_err(|e| format!("invalid request target: {e}"))?;
    let authority: http::uri::Authority = authority
        .parse()
        .map_err(|e| format!("invalid upstream address: {e}"))?;
    let uri = http::Uri::builder()
        .scheme(scheme)
        .authority(authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|e| format!("cannot build the upstream URI: {e}"))?;
    // Belt and braces: whatever the parts were, the dialled address is the rule's.
    if uri.authority() != Some(&authority) {
        return Err("request target changed the upstream address".into());
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_targets_cannot_change_the_upstream() {
        let a = "127.0.0.1:3000";
        let u = upstream_uri("http", a, "GET", "/x", Some("a=1")).unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:3000/x?a=1");
        let star = upstream_uri("http", a, "OPTIONS", "*", None).unwrap();
        assert_eq!(star.authority().unwrap().as_str(), a);
        assert_eq!(star.path(), "*");
        assert!(upstream_uri("http", a, "GET", "*", None).is_err());
        assert!(upstream_uri("http", a, "CONNECT", "/", None).is_err());
        assert!(upstream_uri("http", a, "GET", "@evil:80/", None).is_err());
        assert!(
            upstream_uri("http", a, "GET", "//evil:80/x", None)
                .map(|u| u.authority().unwrap().as_str() == a)
                .unwrap_or(true)
        );
        assert!(
            upstream_uri("http", a, "GET", "/x#frag", None)
                .map(|u| u.authority().unwrap().as_str() == a)
                .unwrap_or(true)
        );
    }
}
