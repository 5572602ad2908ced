//! One request on its way to a tunnel, directly or over a peer link: the `proxy_request`
//! built from the checked client request, the stream opened and started, and the client's
//! response built from the agent's untrusted head — checked, framed by the gateway (no body
//! after HEAD, 204 or 304), or switched to raw bytes after a 101.

use std::time::Instant;

use actix_web::body::SizedStream;
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpResponse, web};
use tunnelgate_proto::control::{KubeIdentity, ProxyRequest};

use super::headers::{self, keep_response_header, response_connection_tokens};
use super::idle;
use crate::AppState;
use crate::error::ProxyError;
use crate::tunnel::{OpenError, Opener, Started, start_stream};

/// One request on its way to a tunnel, directly or over a peer link.
pub(super) struct Target<'a> {
    pub(super) req: &'a super::Incoming<'a>,
    pub(super) state: &'a web::Data<AppState>,
    pub(super) host: &'a str,
    /// The normalised path (or `*`) the upstream receives.
    pub(super) path: &'a str,
    pub(super) cluster: &'a str,
    /// Connections publishing the route (an owner node serves it only through those).
    pub(super) conns: std::sync::Arc<[String]>,
    pub(super) headers: tunnelgate_proto::control::HeaderList,
    pub(super) with_body: bool,
    pub(super) started: Instant,
    /// The `Upgrade` the client asked for (any protocol but h2c).
    pub(super) upgrade: Option<String>,
    /// The caller of the cluster's Kubernetes API, when this is a call to it.
    pub(super) kubernetes: Option<KubeIdentity>,
}

impl Target<'_> {
    /// Sends the request through `open`'s tunnel. The body is taken only once a stream is open:
    /// a tunnel that refuses the stream (NotHere) leaves it for the next one.
    pub(super) async fn forward(
        &mut self,
        open: Opener,
        via_peer: bool,
        payload: &mut Option<crate::tunnel::BodySource>,
    ) -> Result<HttpResponse, ProxyError> {
        let (req, state, cluster) = (self.req, self.state, self.cluster);
        let opened = match open.open() {
            Ok(o) => o,
            Err(OpenError::Busy) => return Err(ProxyError::TunnelBusy),
            // Draining or closing: nothing was sent, another tunnel may take it.
            Err(OpenError::Closed) => return Err(ProxyError::NotHere),
        };
        let request = ProxyRequest {
            stream_id: 0,
            method: req.method.as_str().to_string(),
            host: self.host.to_string(),
            path: self.path.to_string(),
            query: req.uri.query().map(str::to_string),
            // Taken, and put back once the head is written: no copy per attempt.
            headers: std::mem::take(&mut self.headers),
            body: self.with_body,
            request_id: (!req.id.is_empty()).then(|| req.id.clone()),
            cluster: via_peer.then(|| cluster.to_string()),
            conns: if via_peer {
                self.conns.to_vec()
            } else {
                Vec::new()
            },
            hops: u8::from(via_peer),
            upgrade: self.upgrade.clone(),
            kubernetes: self.kubernetes.clone(),
            probe: false,
            traceparent: tunnelgate_telemetry::traceparent(&tracing::Span::current()),
        };
        // Watches, `logs -f` and exec sessions are quiet for long stretches: the API's calls
        // have their own, longer idle timeout.
        let idle = match self.kubernetes {
            Some(_) => state.config.kubernetes_idle_timeout,
            None => state.config.body_idle_timeout,
        };
        let Started {
            head,
            body,
            shared,
            head_timeout,
            headers,
            ..
        } = start_stream(
            opened,
            request,
            payload.take(),
            state.config.response_timeout,
            idle,
            true,
        );
        self.headers = headers;
        let started = self.started;
        let head = crate::tunnel::wait_head(head, head_timeout, &shared).await?;
        if head.status() == 101
            && let Some(asked) = &self.upgrade
        {
            state
                .metrics
                .request(cluster, 101, Some(started.elapsed().as_secs_f64()));
            return upgraded_response(
                &head,
                asked,
                &self.own_names(),
                body,
                self.kubernetes.as_ref().map(|_| idle),
            );
        }
        let status = StatusCode::from_u16(head.status())
            .ok()
            .filter(|s| (200..600).contains(&s.as_u16()))
            .ok_or_else(|| {
                let status = head.status();
                ProxyError::UpstreamFailed(format!("invalid status {status} from the agent"))
            })?;
        state.metrics.request(
            cluster,
            status.as_u16(),
            Some(started.elapsed().as_secs_f64()),
        );
        let resp = response_head(status, &head, &self.own_names())?;
        // The gateway owns framing: no body ever follows a HEAD answer, 204 or 304, whatever
        // the agent sends (RFC 9112 §6.3); the stream's body is dropped, which resets it.
        let bodiless = req.method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let ResponseHead {
            mut resp,
            content_length,
        } = resp;
        if bodiless {
            drop(body);
            if let (Some(n), true) = (content_length, req.method == Method::HEAD) {
                // The size a GET would have, over a body of unknown size that has no bytes:
                // nothing can follow the head, also when actix loses track of the request
                // being HEAD (it does when a request is pipelined behind it, and would then
                // frame a sized body; a sized empty body would end the connection there).
                resp.no_chunking(n);
                let none = futures_util::stream::empty::<Result<bytes::Bytes, ProxyError>>();
                return Ok(resp.body(actix_web::body::BodyStream::new(none)));
            }
            return Ok(resp.body(actix_web::body::None::new()));
        }
        if !head.body() {
            return Ok(resp.finish());
        }
        let body = idle::IdleTimeout::new(body, idle);
        Ok(match content_length {
            Some(n) => resp.body(SizedStream::new(n, body)),
            // (Not `streaming`, which would invent a Content-Type the upstream did not send.)
            None => resp.body(actix_web::body::BodyStream::new(body)),
        })
    }

    /// Whether a name is the publishing cluster's (cookies may be scoped to it).
    fn own_names(&self) -> impl Fn(&str) -> bool + '_ {
        move |d: &str| self.state.registry.cluster_of(d).as_deref() == Some(self.cluster)
    }
}

/// The client's 101: the upstream's headers (hop-by-hop ones dropped, the `Upgrade` it chose
/// kept), then its raw bytes for as long as the connection lives, with no idle timeout unless
/// one is given (the Kubernetes API's sessions). If the
/// tunnel, a peer or the agent goes away, the body fails and actix drops the client's
/// connection: a WebSocket client sees 1006, never a clean close it would take as deliberate.
fn upgraded_response(
    head: &crate::tunnel::Head,
    asked: &str,
    own: &dyn Fn(&str) -> bool,
    body: tunnelgate_mux::PipeReader,
    idle_timeout: Option<std::time::Duration>,
) -> Result<HttpResponse, ProxyError> {
    let chosen = head.with_fields(|fields, _| {
        fields
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("upgrade"))
            .map_or(asked.to_string(), |h| {
                String::from_utf8_lossy(h.value).into_owned()
            })
    });
    let ResponseHead { mut resp, .. } = response_head(StatusCode::SWITCHING_PROTOCOLS, head, own)?;
    resp.upgrade(chosen);
    Ok(match idle_timeout {
        Some(t) => resp.body(actix_web::body::BodyStream::new(idle::IdleTimeout::new(
            body, t,
        ))),
        None => resp.body(actix_web::body::BodyStream::new(body)),
    })
}

/// A response head built from the agent's, and the body length it announced.
struct ResponseHead {
    resp: actix_web::HttpResponseBuilder,
    content_length: Option<u64>,
}

/// Builds the client's response head from what the agent sent, which is untrusted: hop-by-hop
/// headers dropped, names and values checked (a bad one is a 502, never a 500 or a header
/// split), one Content-Length at most, cookies kept within `own` names.
fn response_head(
    status: StatusCode,
    head: &crate::tunnel::Head,
    own: &dyn Fn(&str) -> bool,
) -> Result<ResponseHead, ProxyError> {
    head.with_fields(|fields, shared| build_response_head(status, fields, shared, own))
}

/// [`response_head`] from the head's fields; `shared`: the bytes their values are borrowed
/// from, when values may be shared with it rather than copied.
fn build_response_head(
    status: StatusCode,
    fields: &[httparse::Header<'_>],
    shared: Option<&bytes::Bytes>,
    own: &dyn Fn(&str) -> bool,
) -> Result<ResponseHead, ProxyError> {
    use actix_web::http::header::{HeaderName, HeaderValue};
    use std::borrow::Cow;
    let bad = |what: &str| ProxyError::UpstreamFailed(format!("the agent sent {what}"));
    let listed: Vec<String> = fields
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| {
            let value = String::from_utf8_lossy(h.value);
            response_connection_tokens(&value).collect::<Vec<_>>()
        })
        .collect();
    let mut resp = HttpResponse::build(status);
    let mut content_length = None;
    for h in fields {
        // Names come lower case from JSON; a head frame's as the upstream sent them.
        let lower: Cow<'_, str> = if h.name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(h.name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(h.name)
        };
        let lower = lower.as_ref();
        if lower == "content-length" {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| bad("an invalid Content-Length"))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(bad("conflicting Content-Lengths"));
            }
            content_length = Some(n);
            continue;
        }
        if !keep_response_header(lower, &listed) {
            continue;
        }
        let hname =
            HeaderName::from_bytes(lower.as_bytes()).map_err(|_| bad("an invalid header name"))?;
        let hvalue = if hname == actix_web::http::header::SET_COOKIE {
            let text = String::from_utf8_lossy(h.value);
            HeaderValue::from_str(&headers::scope_set_cookie(&text, own))
        } else {
            match shared {
                // Shared with the head frame, not copied.
                Some(b) => HeaderValue::from_maybe_shared(b.slice_ref(h.value)),
                None => HeaderValue::from_bytes(h.value),
            }
        };
        resp.append_header((hname, hvalue.map_err(|_| bad("an invalid header value"))?));
    }
    Ok(ResponseHead {
        resp,
        content_length,
    })
}
