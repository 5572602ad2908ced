//! Telemetry: every metric name lives in [`metrics`]; logs and traces set up in [`init`]
//! (the `tunnelgate-telemetry` crate, shared with the agent).

pub mod metrics;

use crate::config::{Config, LogFormat};

/// Installs the global subscriber: JSON or text log lines on stdout, filtered by `RUST_LOG`
/// (default `info`), and spans to `--otlp-endpoint` when given. Keep the guard until exit: it
/// sends the last batch of spans when dropped.
pub fn init(config: &Config) -> Result<tunnelgate_telemetry::Guard, String> {
    tunnelgate_telemetry::init(
        config.log_format == LogFormat::Json,
        "tunnelgate-gateway",
        config.otlp_endpoint.clone(),
        config.otlp_flush_interval,
    )
}
