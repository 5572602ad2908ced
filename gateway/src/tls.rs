//! HTTPS at the edge (`--tls-listen`): rustls with certificates chosen by SNI from
//! `--tls-cert`/`--tls-key` file pairs (a wildcard `*.{domain}` pair is the usual one; a
//! Kubernetes Secret mounted as files works as is), reloaded when the files change without
//! touching open connections. The SNI a client sent travels with its connection so the proxy
//! can refuse a request whose `Host` names another cluster than its SNI (no domain fronting
//! across tenants).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// How often the certificate files are checked for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// Kept in the data of every connection that came over TLS, with the SNI name the client sent
/// (none for an IP literal).
#[derive(Debug, Clone)]
pub struct Tls {
    pub sni: Option<String>,
}

/// One certificate (chain and key) as loaded.
struct Loaded {
    key: Arc<CertifiedKey>,
}

impl Loaded {
    /// True when the leaf certificate is valid for `name`.
    fn serves(&self, name: &str) -> bool {
        let Some(leaf) = self.key.cert.first() else {
            return false;
        };
        let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
            return false;
        };
        let Ok(name) = ServerName::try_from(name) else {
            return false;
        };
        cert.verify_is_valid_for_subject_name(&name).is_ok()
    }
}

/// Reads a PEM certificate chain and its key; errors name the flag (`flag`-cert, `flag`-key).
fn read_pem_pair(
    flag: &str,
    cert: &PathBuf,
    key: &PathBuf,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{flag}-cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{flag}-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{flag}-cert {}: no certificate in it",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{flag}-key {}: {e}", key.display()))?;
    Ok((chain, key_der))
}

fn load_pair(cert: &PathBuf, key: &PathBuf) -> Result<Loaded, String> {
    let (chain, key_der) = read_pem_pair("--tls", cert, key)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    Ok(Loaded {
        key: Arc::new(CertifiedKey::new(chain, signing)),
    })
}

/// Certificates ACME issued for custom domains: exact hostname → (version, key).
#[derive(Default)]
pub struct IssuedCerts {
    map: RwLock<std::collections::HashMap<String, (u64, Arc<CertifiedKey>)>>,
}

impl IssuedCerts {
    /// The version installed for `host`, if any.
    pub fn version(&self, host: &str) -> Option<u64> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .map(|(v, _)| *v)
    }

    /// Installs a PEM chain and PEM key for `host`.
    pub fn install(
        &self,
        host: &str,
        version: u64,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<(), String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("certificate chain: {e}"))?;
        if chain.is_empty() {
            return Err("certificate chain: empty".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key: {e}"))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| format!("key: {e}"))?;
        self.map.write().unwrap_or_else(|p| p.into_inner()).insert(
            host.to_string(),
            (version, Arc::new(CertifiedKey::new(chain, signing))),
        );
        Ok(())
    }

    fn get(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .map(|(_, k)| k.clone())
    }
}

/// The certificates, by SNI, reloadable.
pub struct CertStore {
    /// ACME certificates of custom domains, looked at first.
    issued: Arc<IssuedCerts>,
    pairs: Vec<(PathBuf, PathBuf)>,
    loaded: RwLock<Arc<Vec<Loaded>>>,
    stamps: RwLock<Vec<Option<SystemTime>>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CertStore({} pairs)", self.pairs.len())
    }
}

fn stamps(pairs: &[(PathBuf, PathBuf)]) -> Vec<Option<SystemTime>> {
    pairs
        .iter()
        .flat_map(|(c, k)| [c, k])
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl CertStore {
    pub fn load(
        pairs: Vec<(PathBuf, PathBuf)>,
        issued: Arc<IssuedCerts>,
    ) -> Result<Arc<CertStore>, String> {
        if pairs.is_empty() {
            return Err("--tls-listen needs at least one --tls-cert/--tls-key pair".into());
        }
        let loaded = pairs
            .iter()
            .map(|(c, k)| load_pair(c, k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(CertStore {
            issued,
            stamps: RwLock::new(stamps(&pairs)),
            pairs,
            loaded: RwLock::new(Arc::new(loaded)),
        }))
    }

    /// Loads the files again if any changed; keeps the old certificates when the new ones do
    /// not load (a half-written Secret update), and says so.
    pub fn reload_if_changed(&self) {
        let now = stamps(&self.pairs);
        if *self.stamps.read().unwrap_or_else(|p| p.into_inner()) == now {
            return;
        }
        match self
            .pairs
            .iter()
            .map(|(c, k)| load_pair(c, k))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(loaded) => {
                *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
                *self.stamps.write().unwrap_or_else(|p| p.into_inner()) = now;
                tracing::info!(pairs = self.pairs.len(), "TLS certificates reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate files changed but do not load; serving the previous ones")
            }
        }
    }

    /// The server configuration (HTTP/2 or HTTP/1.1 by ALPN) that picks certificates from
    /// this store.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(k) = hello
            .server_name()
            .and_then(|n| self.issued.get(&n.to_ascii_lowercase()))
        {
            return Some(k);
        }
        let loaded = self
            .loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(name) = hello.server_name()
            && let Some(l) = loaded.iter().find(|l| l.serves(name))
        {
            return Some(l.key.clone());
        }
        // No SNI (an IP literal) or no match: the first pair.
        loaded.first().map(|l| l.key.clone())
    }
}

/// Mutual TLS on peer links: each node presents its `--peer-cert` and trusts only `--peer-ca`.
pub struct PeerTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

impl PeerTls {
    pub fn load(cert: &PathBuf, key: &PathBuf, ca: &PathBuf) -> Result<PeerTls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (chain, key) = read_pem_pair("--peer", cert, key)?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("--peer-ca {}: {e}", ca.display()))?
        {
            roots
                .add(c.map_err(|e| format!("--peer-ca {}: {e}", ca.display()))?)
                .map_err(|e| format!("--peer-ca {}: {e}", ca.display()))?;
        }
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("--peer-ca: {e}"))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("--peer-cert: {e}"))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("--peer-cert: {e}"))?;
        Ok(PeerTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}
