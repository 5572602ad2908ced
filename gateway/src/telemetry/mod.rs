//! Telemetry: every metric name lives in [`metrics`]; logging set-up in [`init_logs`].

pub mod metrics;

use crate::config::LogFormat;

/// Installs the global log subscriber: JSON or text lines on stdout, filtered by `RUST_LOG`
/// (default `info`). Calling it twice is harmless (tests embed the gateway).
pub fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
