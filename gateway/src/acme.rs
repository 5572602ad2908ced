//! Certificates for verified custom domains from an ACME CA (`--acme-directory`, RFC 8555,
//! through `instant-acme`). HTTP-01: the answer is shared through the registry, so whichever
//! node the CA reaches answers it; one node issues a hostname at a time (a lock). Chains and
//! their keys (sealed with `--state-key`, AES-256-GCM) are stored so every node serves them;
//! renewal starts `--acme-renew-before` (30 days) before expiry; failures back off (1 min
//! doubling to 6 h) and are shown with each domain in the admin API, while the certificate in
//! hand keeps serving.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use ring::aead;

use crate::AppState;
use crate::registry::acme_store::CertState;
use crate::registry::domains::DomainStatus;
use crate::registry::now_ms;

/// How often the certificates are looked at (installing other nodes' issues, starting due ones).
const TICK: Duration = Duration::from_secs(2);
const LOCK_TTL: Duration = Duration::from_secs(300);
const CHALLENGE_TTL: Duration = Duration::from_secs(600);
const BACKOFF_FIRST: Duration = Duration::from_secs(60);
const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);

/// Seals and opens private keys at rest.
pub struct Sealer(aead::LessSafeKey);

impl Sealer {
    /// From `--state-key` (64 hex characters), or a key of this process alone.
    pub fn new(hex_key: Option<&str>) -> Result<Sealer, String> {
        let bytes: Vec<u8> = match hex_key {
            Some(h) => {
                let h = h.trim();
                if h.len() != 64 {
                    return Err(
                        "--state-key must be 64 hex characters (openssl rand -hex 32)".into(),
                    );
                }
                (0..32)
                    .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16))
                    .collect::<Result<_, _>>()
                    .map_err(|_| "--state-key must be 64 hex characters (openssl rand -hex 32)")?
            }
            None => (0..32).map(|_| rand::random::<u8>()).collect(),
        };
        let key = aead::UnboundKey::new(&aead::AES_256_GCM, &bytes)
            .map_err(|_| "--state-key: not a usable AES-256 key")?;
        Ok(Sealer(aead::LessSafeKey::new(key)))
    }

    pub fn seal(&self, plain: &[u8]) -> String {
        let nonce: [u8; 12] = rand::random();
        let mut buf = plain.to_vec();
        // Sealing in place cannot fail for an in-memory buffer of this size.
        let _ = self.0.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::empty(),
            &mut buf,
        );
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, String> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| "sealed key: not base64")?;
        if raw.len() < 12 + 16 {
            return Err("sealed key: too short".into());
        }
        let (nonce, rest) = raw.split_at(12);
        let mut nonce_bytes = [0u8; 12];
        nonce_bytes.copy_from_slice(nonce);
        let mut buf = rest.to_vec();
        let plain = self
            .0
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce_bytes),
                aead::Aad::empty(),
                &mut buf,
            )
            .map_err(|_| "sealed key does not open with this --state-key")?;
        Ok(plain.to_vec())
    }
}

/// The ACME client side of a node.
pub struct Acme {
    directory: String,
    email: Option<String>,
    ca: Option<std::path::PathBuf>,
    pub sealer: Sealer,
    account: tokio::sync::Mutex<Option<Account>>,
}

impl Acme {
    pub fn new(
        directory: String,
        email: Option<String>,
        ca: Option<std::path::PathBuf>,
        sealer: Sealer,
    ) -> Acme {
        Acme {
            directory,
            email,
            ca,
            sealer,
            account: tokio::sync::Mutex::new(None),
        }
    }

    async fn account(&self) -> Result<Account, String> {
        let mut g = self.account.lock().await;
        if let Some(a) = g.as_ref() {
            return Ok(a.clone());
        }
        let builder = match &self.ca {
            Some(p) => Account::builder_with_root(p),
            None => Account::builder(),
        }
        .map_err(|e| format!("ACME client: {e}"))?;
        let contact = self.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, _) = builder
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.directory.clone(),
                None,
            )
            .await
            .map_err(|e| format!("ACME account at {}: {e}", self.directory))?;
        *g = Some(account.clone());
        Ok(account)
    }

    /// Runs one order for `host` by HTTP-01: (chain PEM, key PEM).
    async fn issue(&self, state: &AppState, host: &str) -> Result<(String, String), String> {
        let account = self.account().await?;
        let ids = [Identifier::Dns(host.to_string())];
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| format!("new order: {e}"))?;
        {
            let mut auths = order.authorizations();
            while let Some(a) = auths.next().await {
                let mut a = a.map_err(|e| format!("authorization: {e}"))?;
                match a.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    s => return Err(format!("authorization is {s:?}")),
                }
                let mut ch = a
                    .challenge(ChallengeType::Http01)
                    .ok_or("the CA offers no http-01 challenge")?;
                let key_auth = ch.key_authorization().as_str().to_string();
                state
                    .registry
                    .put_challenge(&ch.token, &key_auth, CHALLENGE_TTL)
                    .await;
                ch.set_ready()
                    .await
                    .map_err(|e| format!("challenge ready: {e}"))?;
            }
        }
        let retry = RetryPolicy::new().timeout(Duration::from_secs(60));
        let status = order
            .poll_ready(&retry)
            .await
            .map_err(|e| format!("order: {e}"))?;
        if status != OrderStatus::Ready {
            return Err(format!(
                "order is {status:?}: the CA could not validate http://{host}/.well-known/acme-challenge/… (does {host} reach this gateway on port 80?)"
            ));
        }
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let chain = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| format!("certificate: {e}"))?;
        Ok((chain, key_pem))
    }
}

/// (issuer, not-after in ms) of a PEM chain's leaf.
fn leaf_facts(chain_pem: &str) -> Option<(String, u64)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let not_after = cert.validity().not_after.timestamp();
    Some((
        cert.issuer().to_string(),
        u64::try_from(not_after).ok()? * 1000,
    ))
}

/// Every tick: install the certificates any node issued, then issue or renew what is due.
pub async fn run(state: Arc<AppState>) {
    let Some(acme) = state.acme.as_ref() else {
        return;
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let certs = state.registry.certs().await;
        for c in &certs {
            if let (Some(chain), Some(sealed)) = (&c.chain_pem, &c.key_sealed)
                && state.issued.version(&c.hostname) != Some(c.updated_ms)
            {
                match acme.sealer.open(sealed).and_then(|key| {
                    state
                        .issued
                        .install(&c.hostname, c.updated_ms, chain.as_bytes(), &key)
                }) {
                    Ok(()) => tracing::info!(hostname = %c.hostname, "ACME certificate installed"),
                    Err(e) => {
                        tracing::warn!(hostname = %c.hostname, error = %e, "stored certificate not usable")
                    }
                }
            }
        }
        let now = now_ms();
        for rec in state.registry.clusters() {
            for d in rec
                .domains
                .iter()
                .filter(|d| d.status == DomainStatus::Verified && !d.hostname.starts_with("*."))
            {
                let cur = certs.iter().find(|c| c.hostname == d.hostname);
                let due = cur.is_none_or(|c| {
                    c.chain_pem.is_none()
                        || c.not_after_ms
                            < now.saturating_add(state.config.acme_renew_before.as_millis() as u64)
                });
                let waiting = cur.is_some_and(|c| c.next_attempt_ms > now);
                if !due || waiting || !state.registry.lock_issuance(&d.hostname, LOCK_TTL).await {
                    continue;
                }
                let mut next = cur.cloned().unwrap_or_else(|| CertState {
                    hostname: d.hostname.clone(),
                    ..Default::default()
                });
                tracing::info!(cluster = %rec.name, hostname = %d.hostname, "requesting an ACME certificate");
                match acme.issue(&state, &d.hostname).await {
                    Ok((chain, key)) => {
                        let (issuer, not_after) = leaf_facts(&chain).unwrap_or_default();
                        next.key_sealed = Some(acme.sealer.seal(key.as_bytes()));
                        next.chain_pem = Some(chain);
                        next.issuer = Some(issuer);
                        next.not_after_ms = not_after;
                        next.last_error = None;
                        next.failures = 0;
                        next.next_attempt_ms = 0;
                        tracing::info!(hostname = %d.hostname, not_after_ms = not_after, "ACME certificate issued");
                    }
                    Err(e) => {
                        next.failures = next.failures.saturating_add(1);
                        let wait = BACKOFF_FIRST
                            .saturating_mul(1 << next.failures.min(10).saturating_sub(1))
                            .min(BACKOFF_MAX);
                        next.next_attempt_ms = now_ms() + wait.as_millis() as u64;
                        tracing::warn!(hostname = %d.hostname, error = %e, retry_in_s = wait.as_secs(), "ACME certificate not issued");
                        next.last_error = Some(e);
                    }
                }
                next.updated_ms = now_ms();
                state.registry.put_cert(next).await;
                state.registry.unlock_issuance(&d.hostname).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_with_their_key() {
        let k = "11".repeat(32);
        let s = Sealer::new(Some(&k)).unwrap();
        let sealed = s.seal(b"-----BEGIN PRIVATE KEY-----");
        assert!(!sealed.contains("PRIVATE"));
        assert_eq!(s.open(&sealed).unwrap(), b"-----BEGIN PRIVATE KEY-----");
        let other = Sealer::new(Some(&"22".repeat(32))).unwrap();
        assert!(other.open(&sealed).is_err());
        assert!(s.open("AAAA").is_err());
        assert!(Sealer::new(Some("short")).is_err());
        assert!(Sealer::new(Some(&"zz".repeat(32))).is_err());
    }
}
