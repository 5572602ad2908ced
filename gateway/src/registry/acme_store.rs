//! What ACME needs shared between nodes: HTTP-01 challenge answers (any node the CA reaches
//! answers), one issuing node per hostname at a time (a lock), and each custom domain's
//! certificate state — the chain, its key sealed with `--state-key`, issuer, expiry, last
//! error. In memory on a single node; in Redis (`acme:http01:{token}`, `acme:lock:{host}`,
//! `certs` hash) with several.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Registry, now_ms};

/// A custom domain's certificate, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertState {
    pub hostname: String,
    /// PEM chain, leaf first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_pem: Option<String>,
    /// The private key (PEM), sealed (AES-256-GCM, base64 of nonce and ciphertext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sealed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub not_after_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Failures in a row (backoff).
    #[serde(default)]
    pub failures: u32,
    /// No attempt before this (ms since the epoch).
    #[serde(default)]
    pub next_attempt_ms: u64,
    #[serde(default)]
    pub updated_ms: u64,
}

/// The in-memory side.
#[derive(Default)]
pub struct AcmeMemory {
    challenges: HashMap<String, (String, u64)>,
    locks: HashMap<String, u64>,
    certs: HashMap<String, CertState>,
}

impl Registry {
    fn acme_mem(&self) -> std::sync::MutexGuard<'_, AcmeMemory> {
        self.acme.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the answer to an HTTP-01 challenge for `ttl`.
    pub async fn put_challenge(&self, token: &str, key_auth: &str, ttl: Duration) {
        match self.redis_store() {
            None => {
                let until = now_ms() + ttl.as_millis() as u64;
                self.acme_mem()
                    .challenges
                    .insert(token.to_string(), (key_auth.to_string(), until));
            }
            Some(r) => {
                let _ = self.note(r.put_acme_challenge(token, key_auth, ttl).await);
            }
        }
    }

    /// The answer to HTTP-01 challenge `token`, if this gateway set one.
    pub async fn challenge(&self, token: &str) -> Option<String> {
        match self.redis_store() {
            None => {
                let now = now_ms();
                let mut g = self.acme_mem();
                g.challenges.retain(|_, (_, until)| *until > now);
                g.challenges.get(token).map(|(k, _)| k.clone())
            }
            Some(r) => self.note(r.acme_challenge(token).await).ok().flatten(),
        }
    }

    /// Takes the issuing lock of `host` for `ttl`; false when another node holds it.
    pub async fn lock_issuance(&self, host: &str, ttl: Duration) -> bool {
        match self.redis_store() {
            None => {
                let now = now_ms();
                let mut g = self.acme_mem();
                match g.locks.get(host) {
                    Some(until) if *until > now => false,
                    _ => {
                        g.locks
                            .insert(host.to_string(), now + ttl.as_millis() as u64);
                        true
                    }
                }
            }
            Some(r) => self
                .note(r.acme_lock(host, &self.node_id, ttl).await)
                .unwrap_or(false),
        }
    }

    pub async fn unlock_issuance(&self, host: &str) {
        match self.redis_store() {
            None => {
                self.acme_mem().locks.remove(host);
            }
            Some(r) => {
                let _ = self.note(r.acme_unlock(host).await);
            }
        }
    }

    pub async fn put_cert(&self, state: CertState) {
        match self.redis_store() {
            None => {
                self.acme_mem().certs.insert(state.hostname.clone(), state);
            }
            Some(r) => {
                let json = serde_json::to_string(&state).unwrap_or_default();
                let _ = self.note(r.put_cert(&state.hostname, json).await);
            }
        }
    }

    /// Every custom domain's certificate state.
    pub async fn certs(&self) -> Vec<CertState> {
        match self.redis_store() {
            None => self.acme_mem().certs.values().cloned().collect(),
            Some(r) => match self.note(r.certs().await) {
                Ok(v) => v
                    .iter()
                    .filter_map(|j| serde_json::from_str(j).ok())
                    .collect(),
                Err(_) => Vec::new(),
            },
        }
    }

    pub async fn cert(&self, host: &str) -> Option<CertState> {
        self.certs().await.into_iter().find(|c| c.hostname == host)
    }
}
