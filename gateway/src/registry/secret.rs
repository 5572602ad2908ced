//! Secrets as the registry keeps them: random tokens and ids, and the SHA-256 hashes under
//! which tokens are stored (the tokens themselves never are).

use sha2::{Digest, Sha256};

/// Hash under which a token is stored; the token itself is never kept.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// A new agent token: 256 random bits, shown once.
pub fn new_token() -> String {
    random_hex(32)
}
