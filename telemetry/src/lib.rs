//! Logs and traces shared by the gateway and the agent. [`init`] installs the process's
//! subscriber: log lines (JSON or text, filtered by `RUST_LOG`) and, given an OTLP endpoint,
//! a trace exporter fed by the same spans (OTLP over HTTP with JSON, batched on its own thread).
//! [`traceparent`] and [`continue_trace`] carry a trace across a hop as a W3C `traceparent`: in
//! a stream's metadata between nodes and to the agent, in a header to the upstream.

use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where traces go.
#[derive(Debug, Clone)]
struct Otlp {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`), or its full traces URL.
    endpoint: String,
    /// `service.name` of this process's spans.
    service: &'static str,
    /// How long spans wait in the batch before they are sent.
    flush: Duration,
}

/// Keeps the trace exporter; dropping it sends what is still batched.
#[must_use = "dropping the guard stops the trace exporter"]
pub struct Guard(Option<SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.shutdown();
        }
    }
}

/// The traces URL of an OTLP/HTTP endpoint given as a base URL or a full URL.
pub fn traces_url(endpoint: &str) -> String {
    let e = endpoint.trim_end_matches('/');
    if e.ends_with("/v1/traces") {
        e.to_string()
    } else {
        format!("{e}/v1/traces")
    }
}

/// Installs the global subscriber: log lines on stdout (`json` or text), and spans of
/// `service` to the OTLP collector at `otlp_endpoint` when given, sent every `flush`. A second
/// call (tests embedding the agent or gateway) keeps the first subscriber.
pub fn init(
    json: bool,
    service: &'static str,
    otlp_endpoint: Option<String>,
    flush: Duration,
) -> Result<Guard, String> {
    let otlp = otlp_endpoint.map(|endpoint| Otlp {
        endpoint,
        service,
        flush,
    });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (provider, traces) = match otlp {
        None => (None, None),
        Some(o) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpJson)
                .with_endpoint(traces_url(&o.endpoint))
                .build()
                .map_err(|e| format!("OTLP exporter for {}: {e}", o.endpoint))?;
            let batch = BatchSpanProcessor::builder(exporter)
                .with_batch_config(
                    BatchConfigBuilder::default()
                        .with_scheduled_delay(o.flush)
                        .build(),
                )
                .build();
            let provider = SdkTracerProvider::builder()
                .with_span_processor(batch)
                .with_resource(Resource::builder().with_service_name(o.service).build())
                .build();
            let tracer = provider.tracer("tunnelgate");
            (
                Some(provider),
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
            )
        }
    };
    let lines = tracing_subscriber::fmt::layer().with_target(true);
    let lines = match json {
        true => lines.json().flatten_event(true).boxed(),
        false => lines.boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(traces)
        .try_init();
    Ok(Guard(provider))
}

/// The W3C `traceparent` naming `span`, when spans are exported (None otherwise).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = Carrier(None);
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.0
}

/// Makes `span` (not yet entered) a child of the span `traceparent` names, from the previous
/// hop; an absent or malformed value leaves it a root.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else {
        return;
    };
    let cx = TraceContextPropagator::new().extract(&One(tp));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

struct Carrier(Option<String>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

struct One<'a>(&'a str);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_urls() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }

    #[test]
    fn without_an_exporter_there_is_no_traceparent_and_bad_ones_are_ignored() {
        let span = tracing::info_span!("x");
        assert_eq!(traceparent(&span), None);
        continue_trace(&span, Some("not a traceparent"));
        continue_trace(&span, None);
        assert_eq!(traceparent(&span), None);
    }
}
