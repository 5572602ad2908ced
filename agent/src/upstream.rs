//! Upstreams: parsing a rule's target, choosing the rule for a request, and the pooled HTTP(S)
//! clients that talk to them. `http://` and `https://` targets share one pooled client with the
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
use tunnelgate_proto::routes::{RouteSpec, best_match, wildcard_parent};

use crate::config::Rule;

/// The request body type sent upstream.
pub type UpBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A pooled upstream client, for `http://` and `https://` alike.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, UpBody>;

/// Idle upstream connections kept per host.
const POOL_MAX_IDLE_PER_HOST: usize = 256;
/// How long an idle upstream connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a TCP connect to an upstream may take (the default client's; `--upstream-connect-timeout`).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
    fn is_default(&self) -> bool {
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

/// Where a rule sends requests: `http(s)://authority`, with its origin options.
#[derive(Clone)]
pub struct Target {
    pub authority: String,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The `Host` header the upstream receives instead of the public name (`httpHostHeader`).
    pub host_header: Option<String>,
    /// A client of its own when the origin has TLS options; else the shared one is used.
    pub client: Option<UpstreamClient>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.authority == other.authority && self.scheme == other.scheme
    }
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let u = url::Url::parse(url).map_err(|e| format!("upstream {url:?}: {e}"))?;
        let scheme = match u.scheme() {
            "http" => "http",
            "https" => "https",
            other => {
                return Err(format!(
                    "upstream {url:?}: scheme {other:?} is not supported (use http:// or https://)"
                ));
            }
        };
        if !matches!(u.path(), "" | "/") || u.query().is_some() {
            return Err(format!("upstream {url:?}: give only scheme, host and port"));
        }
        let host = u
            .host_str()
            .ok_or_else(|| format!("upstream {url:?}: no host"))?;
        let port = u.port_or_known_default().unwrap_or(80);
        Ok(Target {
            authority: format!("{host}:{port}"),
            scheme,
            host_header: None,
            client: None,
        })
    }

    /// A target with a rule's origin options applied.
    pub fn for_rule(r: &Rule, connect_timeout: Duration) -> Result<Target, String> {
        let mut t = Target::parse(&r.service)?;
        let tls = OriginTls {
            ca_file: r.ca_file.clone(),
            server_name: r.origin_server_name.clone(),
            insecure: r.no_tls_verify,
        };
        if !tls.is_default() {
            if t.scheme != "https" {
                return Err(format!(
                    "upstream {}: origin TLS options need an https:// service",
                    r.service
                ));
            }
            if tls.insecure {
                tracing::warn!(upstream = %r.service, "no_tls_verify: the origin's certificate is not checked");
            }
            t.client = Some(client_with(connect_timeout, &tls)?);
        }
        t.host_header = r.http_host_header.clone();
        Ok(t)
    }
}

/// The agent's rules, ready for matching.
#[derive(Default)]
pub struct Rules {
    rules: Vec<(RouteSpec, Target)>,
}

impl Rules {
    pub fn new(rules: &[Rule]) -> Result<Arc<Rules>, String> {
        Ok(Rules::from_pairs(Rules::pairs(rules)?))
    }

    /// Static rules as routes and their targets (with their origin options).
    pub fn pairs(rules: &[Rule]) -> Result<Vec<(RouteSpec, Target)>, String> {
        rules
            .iter()
            .map(|r| {
                Ok((
                    RouteSpec {
                        host: r.hostname.clone(),
                        path: r.path.clone(),
                        path_type: r.path_type,
                        service: Some(r.service.clone()),
                        ..Default::default()
                    },
                    Target::for_rule(r, DEFAULT_CONNECT_TIMEOUT)?,
                ))
            })
            .collect()
    }

    pub fn from_pairs(rules: Vec<(RouteSpec, Target)>) -> Arc<Rules> {
        Arc::new(Rules { rules })
    }

    /// The target for a request, by the same rules the gateway used to route it here.
    pub fn find(&self, host: &str, path: &str) -> Option<&Target> {
        let of_host = |h: &str| {
            let spec = best_match(
                self.rules
                    .iter()
                    .filter(|(s, _)| s.host == h)
                    .map(|(s, _)| s),
                path,
            )?;
            self.rules
                .iter()
                .find(|(s, _)| std::ptr::eq(s, spec))
                .map(|(_, t)| t)
        };
        of_host(host).or_else(|| of_host(&wildcard_parent(host)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_matching() {
        assert_eq!(
            Target::parse("http://127.0.0.1:3000").unwrap().authority,
            "127.0.0.1:3000"
        );
        assert_eq!(Target::parse("http://svc").unwrap().authority, "svc:80");
        let https = Target::parse("https://x").unwrap();
        assert_eq!((https.scheme, https.authority.as_str()), ("https", "x:443"));
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("http://x/path").is_err());
        let rule = |h: &str, p: &str, s: &str| Rule {
            hostname: h.into(),
            path: p.into(),
            path_type: Default::default(),
            service: s.into(),
            ..Default::default()
        };
        let rules = Rules::new(&[
            rule("*.demo.localhost", "/", "http://127.0.0.1:1"),
            rule("app.demo.localhost", "/", "http://127.0.0.1:2"),
            rule("app.demo.localhost", "/api", "http://127.0.0.1:3"),
        ])
        .unwrap();
        assert_eq!(
            rules
                .find("app.demo.localhost", "/api/x")
                .unwrap()
                .authority,
            "127.0.0.1:3"
        );
        assert_eq!(
            rules.find("app.demo.localhost", "/apix").unwrap().authority,
            "127.0.0.1:2"
        );
        assert_eq!(
            rules.find("other.demo.localhost", "/").unwrap().authority,
            "127.0.0.1:1"
        );
        assert!(rules.find("else.localhost", "/").is_none());
    }
}
