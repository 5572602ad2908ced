//! Upstream clients: the pooled HTTP(S) clients that talk to upstreams. `http://` and `https://` targets share one pooled client with the
//! system's roots; a target with its own origin TLS options (a CA file, a server name, no
//! verification) gets a client of its own, built once when the rules are loaded.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The request body type sent upstream.
pub type UpBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A pooled upstream client, for `http://` and `https://` alike.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, UpBody>;

/// Idle upstream connections kept per host.
const POOL_MAX_IDLE_PER_HOST: usize = 256;
/// How long an idle upstream connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a TCP connect to an upstream may take (the default client's; `--upstream-connect-timeout`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Origin TLS options of one target, in the words cloudflared users know.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct OriginTls {
    /// PEM file of CA certificates trusted for this origin, beside the system's (`caPool`).
    pub ca_file: Option<std::path::PathBuf>,
    /// The name the origin's certificate is checked against, when not the URL's host
    /// (`originServerName`).
    pub server_name: Option<String>,
    /// Accept any certificate (`noTLSVerify`): an explicit, logged opt-in.
    pub insecure: bool,
}

impl OriginTls {
    pub fn is_default(&self) -> bool {
        *self == OriginTls::default()
    }
}

fn rustls_config(tls: &OriginTls) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    if tls.insecure {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in system_roots() {
        let _ = roots.add(cert);
    }
    if let Some(path) = &tls.ca_file {
        use rustls_pki_types::pem::PemObject;
        let mut n = 0;
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("CA file {}: {e}", path.display()))?
        {
            let cert = cert.map_err(|e| format!("CA file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("CA file {}: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("CA file {}: no certificate in it", path.display()));
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// The system's trusted roots: `SSL_CERT_FILE`, else the Debian or RHEL bundle (none when
/// neither can be read: only a CA file then works).
fn system_roots() -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    let from_env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    let bundles = from_env.into_iter().chain(
        [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
        ]
        .map(std::path::PathBuf::from),
    );
    for path in bundles {
        if let Ok(iter) = rustls_pki_types::CertificateDer::pem_file_iter(&path) {
            return iter.flatten().collect();
        }
    }
    tracing::debug!("no system CA bundle found; https upstreams need a CA file");
    Vec::new()
}

/// Accepts any server certificate (`noTLSVerify`); signatures are still checked.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client configuration for the agent's tunnel to the gateway (`wss://`): the
/// system's roots, plus `ca_file` (`--gateway-ca`) for a private CA; names are verified.
pub fn gateway_tls(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    rustls_config(&OriginTls {
        ca_file: ca_file.map(std::path::Path::to_path_buf),
        ..Default::default()
    })
    .map_err(|e| format!("--gateway-ca: {e}"))
}

/// A pooled client for `tls` (plain `http://` targets use it too).
pub fn client_with(connect_timeout: Duration, tls: &OriginTls) -> Result<UpstreamClient, String> {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(connect_timeout));
    conn.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(rustls_config(tls)?)
        .https_or_http();
    let https = match &tls.server_name {
        Some(name) => {
            let name = rustls_pki_types::ServerName::try_from(name.clone())
                .map_err(|e| format!("origin server name {name:?}: {e}"))?;
            builder
                .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
                .enable_http1()
                .wrap_connector(conn)
        }
        None => builder.enable_http1().wrap_connector(conn),
    };
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(https))
}

/// The shared client: system roots, no per-origin options.
pub fn client(connect_timeout: Duration) -> UpstreamClient {
    client_with(connect_timeout, &OriginTls::default())
        .or_else(|_| client_with(DEFAULT_CONNECT_TIMEOUT, &OriginTls::default()))
        .unwrap_or_else(|e| panic!("building the default TLS configuration cannot fail: {e}"))
}
