//! Proxy-path errors. Each says who failed and whether a retry is safe, and becomes an HTTP
//! response in exactly one place ([`ProxyError::to_response`]): a status, a one-line body
//! saying what happened, and an `x-tunnelgate-error` header with a stable code.

use std::borrow::Cow;
use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use tunnelgate_proto::control::ProxyErrorKind;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Client,
    Tunnel,
    Upstream,
    Gateway,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(Cow<'static, str>),
    #[error("a valid access token is required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("host {0} is not served on this TLS connection (its SNI names another cluster)")]
    Misdirected(String),
    #[error("the request body stalled: no bytes for {0:?}")]
    BodyTimeout(Duration),
    #[error("cluster {0} is over its request rate limit; retry in {1} s")]
    RateLimited(String, u64),
    #[error("method {0} is not allowed through the gateway")]
    MethodNotAllowed(&'static str),
    #[error("request headers are larger than {0} bytes")]
    HeadersTooLarge(usize),
    #[error("no route for host {0}")]
    NoRoute(String),
    #[error("cluster {0} is offline (no agent connected)")]
    ClusterOffline(String),
    #[error("the cluster's tunnel is at its stream limit; retry shortly")]
    TunnelBusy,
    #[error("upstream refused the connection: {0}")]
    UpstreamRefused(String),
    #[error("upstream failed: {0}")]
    UpstreamFailed(String),
    #[error("upstream did not respond within {0:?}")]
    Timeout(Duration),
    #[error("the agent disconnected before the response was complete")]
    TunnelLost,
    #[error("the agent has no upstream for this host and path")]
    AgentNoRoute,
    #[error("the agent refused the request; retry shortly")]
    AgentRefused,
    #[error("the node that held the cluster's tunnel no longer does")]
    NotHere,
    #[error("the route registry is unreachable and this host is not cached: {0}")]
    RegistryUnavailable(String),
    #[error("this gateway node is at its connection limit ({0}); retry shortly")]
    Overloaded(usize),
    #[error("this gateway node is over its memory limit; retry shortly")]
    MemoryOver,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Unauthorized => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::RateLimited(..) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::ClusterOffline(_)
            | ProxyError::TunnelBusy
            | ProxyError::AgentRefused
            | ProxyError::RegistryUnavailable(_)
            | ProxyError::Overloaded(_)
            | ProxyError::MemoryOver
            | ProxyError::NotHere => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamRefused(_)
            | ProxyError::UpstreamFailed(_)
            | ProxyError::TunnelLost
            | ProxyError::AgentNoRoute => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A stable code for the `x-tunnelgate-error` header and logs.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::Unauthorized => "unauthorized",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::BodyTimeout(_) => "body_timeout",
            ProxyError::RateLimited(..) => "rate_limited",
            ProxyError::Misdirected(_) => "misdirected",
            ProxyError::HeadersTooLarge(_) => "headers_too_large",
            ProxyError::NoRoute(_) => "no_route",
            ProxyError::ClusterOffline(_) => "cluster_offline",
            ProxyError::TunnelBusy => "tunnel_busy",
            ProxyError::UpstreamRefused(_) => "upstream_refused",
            ProxyError::UpstreamFailed(_) => "upstream_failed",
            ProxyError::Timeout(_) => "upstream_timeout",
            ProxyError::TunnelLost => "tunnel_lost",
            ProxyError::AgentNoRoute => "agent_no_route",
            ProxyError::AgentRefused => "agent_refused",
            ProxyError::RegistryUnavailable(_) => "registry_unavailable",
            ProxyError::Overloaded(_) | ProxyError::MemoryOver => "overloaded",
            ProxyError::NotHere => "cluster_moved",
        }
    }

    pub fn who(&self) -> Who {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::Unauthorized
            | ProxyError::Forbidden(_)
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::BodyTimeout(_)
            | ProxyError::RateLimited(..)
            | ProxyError::Misdirected(_)
            | ProxyError::HeadersTooLarge(_)
            | ProxyError::NoRoute(_) => Who::Client,
            ProxyError::ClusterOffline(_)
            | ProxyError::TunnelLost
            | ProxyError::AgentNoRoute
            | ProxyError::AgentRefused
            | ProxyError::NotHere => Who::Tunnel,
            ProxyError::TunnelBusy
            | ProxyError::RegistryUnavailable(_)
            | ProxyError::Overloaded(_)
            | ProxyError::MemoryOver => Who::Gateway,
            ProxyError::UpstreamRefused(_)
            | ProxyError::UpstreamFailed(_)
            | ProxyError::Timeout(_) => Who::Upstream,
        }
    }

    /// True when the request certainly did not reach the upstream, so a client may resend it
    /// even if it is not idempotent.
    pub fn retry_safe(&self) -> bool {
        matches!(
            self,
            ProxyError::ClusterOffline(_)
                | ProxyError::TunnelBusy
                | ProxyError::UpstreamRefused(_)
                | ProxyError::AgentNoRoute
                | ProxyError::AgentRefused
                | ProxyError::RegistryUnavailable(_)
                | ProxyError::Overloaded(_)
                | ProxyError::MemoryOver
                | ProxyError::NotHere
        )
    }

    /// The agent's account of a failed stream.
    pub fn from_agent(kind: ProxyErrorKind, message: String) -> Self {
        match kind {
            ProxyErrorKind::UpstreamRefused => ProxyError::UpstreamRefused(message),
            ProxyErrorKind::UpstreamFailed => ProxyError::UpstreamFailed(message),
            ProxyErrorKind::UpstreamTimeout => {
                ProxyError::UpstreamFailed(format!("timeout: {message}"))
            }
            ProxyErrorKind::NoRoute => ProxyError::AgentNoRoute,
            ProxyErrorKind::Refused => ProxyError::AgentRefused,
            ProxyErrorKind::NotHere => ProxyError::NotHere,
        }
    }

    /// How a peer reports this error to the entry node (the inverse of [`Self::from_agent`]).
    pub fn to_peer(&self) -> (ProxyErrorKind, String) {
        let kind = match self {
            ProxyError::UpstreamRefused(_) => ProxyErrorKind::UpstreamRefused,
            ProxyError::Timeout(_) => ProxyErrorKind::UpstreamTimeout,
            ProxyError::AgentNoRoute => ProxyErrorKind::NoRoute,
            ProxyError::AgentRefused | ProxyError::TunnelBusy => ProxyErrorKind::Refused,
            ProxyError::ClusterOffline(_) | ProxyError::NotHere => ProxyErrorKind::NotHere,
            _ => ProxyErrorKind::UpstreamFailed,
        };
        let message = match self {
            ProxyError::UpstreamRefused(m) | ProxyError::UpstreamFailed(m) => m.clone(),
            other => other.to_string(),
        };
        (kind, message)
    }

    /// The response the client sees.
    pub fn to_response(&self) -> HttpResponse {
        let status = self.status();
        let mut b = HttpResponse::build(status);
        b.insert_header(("x-tunnelgate-error", self.code()))
            .content_type("text/plain; charset=utf-8");
        if self.retry_safe() && status == StatusCode::SERVICE_UNAVAILABLE {
            b.insert_header(("retry-after", "1"));
        }
        if let ProxyError::RateLimited(_, wait) = self
            && let Ok(v) = actix_web::http::header::HeaderValue::from_str(&wait.to_string())
        {
            b.insert_header((actix_web::http::header::RETRY_AFTER, v));
        }
        // A connection past the node's limit is not kept.
        if matches!(self, ProxyError::Overloaded(_)) {
            b.force_close();
        }
        if matches!(self, ProxyError::MethodNotAllowed(_)) {
            b.insert_header((
                "allow",
                "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE",
            ));
        }
        let reason = status.canonical_reason().unwrap_or("");
        b.body(format!(
            "{} {reason}: {}\n",
            status.as_u16(),
            self.public_message()
        ))
    }

    /// What the client is told. Upstream failures name no address or internal error text
    /// (those go to the log); everything else is the error's own sentence.
    pub fn public_message(&self) -> Cow<'_, str> {
        match self {
            ProxyError::UpstreamRefused(_) => "the upstream service refused the connection".into(),
            ProxyError::UpstreamFailed(_) => "the upstream service failed to answer".into(),
            other => other.to_string().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_bodies_and_codes() {
        let e = ProxyError::NoRoute("x.demo.localhost".into());
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(e.who(), Who::Client);
        assert_eq!(e.to_string(), "no route for host x.demo.localhost");
        assert!(ProxyError::ClusterOffline("demo".into()).retry_safe());
        assert!(!ProxyError::TunnelLost.retry_safe());
        let leak = ProxyError::UpstreamRefused("tcp connect error: 10.1.2.3:8080".into());
        assert!(!leak.public_message().contains("10.1.2.3"));
        assert_eq!(
            ProxyError::MethodNotAllowed("CONNECT").status().as_u16(),
            405
        );
    }
}
