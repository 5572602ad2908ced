//! The cluster's Kubernetes API for callers the gateway authenticated (`--kubernetes-api`).
//! A request whose stream metadata carries an identity goes to the API server over TLS
//! verified with the ServiceAccount CA, with this agent's ServiceAccount token (re-read when
//! the file changes: projected tokens rotate), impersonating that identity. The caller's own
//! `Authorization` and every `Impersonate-*` header are removed first, so only the identity
//! the gateway vouches for reaches the API server and Kubernetes RBAC decides.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tunnelgate_proto::control::{HeaderList, KubeIdentity};

use crate::rules::Target;
use crate::upstream::{OriginTls, client_with};

/// Where a pod finds its ServiceAccount's token and CA.
pub const SA_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const SA_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
pub const DEFAULT_URL: &str = "https://kubernetes.default.svc";

/// The API server and the credentials the agent uses with it.
pub struct KubeApi {
    target: Target,
    token_file: PathBuf,
    /// The token as last read, with the file's (modified time, length) then.
    token: Mutex<(Option<(SystemTime, u64)>, String)>,
}

impl KubeApi {
    /// Checks the URL, the CA and the token file now, so a mistake stops the agent at start
    /// with a clear message instead of failing each call.
    pub fn new(
        url: &str,
        ca_file: Option<PathBuf>,
        token_file: PathBuf,
        connect_timeout: Duration,
    ) -> Result<KubeApi, String> {
        let mut target = Target::parse(url).map_err(|e| format!("--kubernetes-api-url: {e}"))?;
        if target.scheme != "https" {
            return Err(format!(
                "--kubernetes-api-url {url:?} must be https:// (the agent sends its ServiceAccount token)"
            ));
        }
        let tls = OriginTls {
            ca_file,
            ..Default::default()
        };
        target.client = Some(
            client_with(connect_timeout, &tls).map_err(|e| format!("--kubernetes-ca-file: {e}"))?,
        );
        let api = KubeApi {
            target,
            token_file,
            token: Mutex::new((None, String::new())),
        };
        api.token()?;
        Ok(api)
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The ServiceAccount token, read again whenever the file's time or size changed.
    pub fn token(&self) -> Result<String, String> {
        let file = &self.token_file;
        let why = |e: std::io::Error| format!("ServiceAccount token {}: {e}", file.display());
        let meta = std::fs::metadata(file).map_err(why)?;
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        let mut g = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 != Some(stamp) {
            let t = std::fs::read_to_string(file)
                .map_err(why)?
                .trim()
                .to_string();
            if t.is_empty() {
                return Err(format!("ServiceAccount token {} is empty", file.display()));
            }
            *g = (Some(stamp), t);
        }
        Ok(g.1.clone())
    }
}

/// Whether a caller's header must not reach the API server: credentials, impersonation, and
/// the front-proxy identity headers.
fn caller_only(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "authorization"
        || n == "proxy-authorization"
        || n == "host"
        || n.starts_with("impersonate-")
        || n.starts_with("x-remote-")
}

/// The headers the API server receives: the caller's, less [`caller_only`] ones, plus the
/// agent's token and the impersonated identity.
pub fn api_headers(caller: &HeaderList, who: &KubeIdentity, token: &str) -> HeaderList {
    let mut out: HeaderList = caller
        .iter()
        .filter(|(n, _)| !caller_only(n))
        .cloned()
        .collect();
    out.push(("authorization".into(), format!("Bearer {token}")));
    out.push(("impersonate-user".into(), who.user.clone()));
    for g in &who.groups {
        out.push(("impersonate-group".into(), g.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_cannot_bring_their_own_identity() {
        let caller: HeaderList = vec![
            ("Authorization".into(), "Bearer stolen".into()),
            ("Impersonate-User".into(), "admin".into()),
            ("impersonate-group".into(), "system:masters".into()),
            ("Impersonate-Extra-scopes".into(), "x".into()),
            ("Impersonate-Uid".into(), "1".into()),
            ("X-Remote-User".into(), "admin".into()),
            ("Proxy-Authorization".into(), "Basic x".into()),
            ("Host".into(), "acme.k8s.gw.test".into()),
            ("Accept".into(), "application/json".into()),
        ];
        let who = KubeIdentity {
            user: "alice".into(),
            groups: vec!["devs".into(), "ops".into()],
        };
        let h = api_headers(&caller, &who, "sa-token");
        let get = |n: &str| -> Vec<&str> {
            h.iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(get("authorization"), ["Bearer sa-token"]);
        assert_eq!(get("impersonate-user"), ["alice"]);
        assert_eq!(get("impersonate-group"), ["devs", "ops"]);
        assert!(get("impersonate-extra-scopes").is_empty());
        assert!(get("impersonate-uid").is_empty());
        assert!(get("x-remote-user").is_empty());
        assert!(get("proxy-authorization").is_empty());
        assert!(get("host").is_empty());
        assert_eq!(get("accept"), ["application/json"]);
    }

    #[test]
    fn the_token_is_read_again_when_it_rotates() {
        let dir = std::env::temp_dir().join(format!("tg-sa-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "first\n").unwrap();
        let api = KubeApi::new(
            "https://127.0.0.1:6443",
            None,
            f.clone(),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(api.token().unwrap(), "first");
        std::fs::write(&f, "second-token\n").unwrap();
        assert_eq!(api.token().unwrap(), "second-token");
        std::fs::write(&f, "").unwrap();
        assert!(api.token().unwrap_err().contains("empty"));
        assert!(
            KubeApi::new(
                "http://127.0.0.1:6443",
                None,
                f.clone(),
                Duration::from_secs(1)
            )
            .is_err()
        );
        assert!(
            KubeApi::new(
                "https://127.0.0.1:6443",
                None,
                dir.join("nope"),
                Duration::from_secs(1)
            )
            .is_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
