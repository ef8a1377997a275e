//! Secrets at rest: what a job brings of its own (S3 keys, a database
//! password) is sealed with the cluster's secret key (AES-256-GCM) before
//! anything is written, and opened only in memory where it is used. The key
//! is 32 random bytes, hex-encoded, in `BATCHMILL_SECRET_KEY`; the
//! deployment makes it (`deploy/local/up`, a Kubernetes Secret).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};

/// The variable holding the cluster's secret key.
pub const SECRET_KEY_VAR: &str = "BATCHMILL_SECRET_KEY";

/// Errors sealing or opening.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("{SECRET_KEY_VAR} is not set: jobs that bring their own credentials need the cluster's secret key")]
    NoKey,
    #[error("{SECRET_KEY_VAR} must be 64 hex digits (32 bytes)")]
    BadKey,
    #[error("a sealed secret did not open: it was sealed with another key, or altered")]
    Unopenable,
    #[error("no randomness from the operating system")]
    NoRandomness,
}

/// A sealed secret, as stored: a random nonce and the ciphertext with its tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub nonce: String,
    pub data: String,
}

/// The cluster's secret key.
#[derive(Clone)]
pub struct ClusterKey {
    bytes: [u8; 32],
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(…)")
    }
}

impl ClusterKey {
    /// A key from its hex text.
    pub fn parse(text: &str) -> Result<ClusterKey, SealError> {
        let bytes = hex::decode(text.trim()).map_err(|_| SealError::BadKey)?;
        Ok(ClusterKey { bytes: bytes.try_into().map_err(|_| SealError::BadKey)? })
    }

    /// The key in [`SECRET_KEY_VAR`], if set.
    pub fn from_env() -> Result<Option<ClusterKey>, SealError> {
        match std::env::var(SECRET_KEY_VAR) {
            Ok(text) if !text.trim().is_empty() => ClusterKey::parse(&text).map(Some),
            _ => Ok(None),
        }
    }

    /// A new random key, as hex.
    pub fn generate() -> Result<String, SealError> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| SealError::NoRandomness)?;
        Ok(hex::encode(bytes))
    }

    fn key(&self) -> Result<LessSafeKey, SealError> {
        Ok(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.bytes).map_err(|_| SealError::BadKey)?))
    }

    pub fn seal(&self, secret: &[u8]) -> Result<Sealed, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError::NoRandomness)?;
        let mut data = secret.to_vec();
        self.key()?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .map_err(|_| SealError::Unopenable)?;
        Ok(Sealed { nonce: hex::encode(nonce), data: hex::encode(data) })
    }

    pub fn open(&self, sealed: &Sealed) -> Result<Vec<u8>, SealError> {
        let nonce: [u8; NONCE_LEN] =
            hex::decode(&sealed.nonce).ok().and_then(|n| n.try_into().ok()).ok_or(SealError::Unopenable)?;
        let mut data = hex::decode(&sealed.data).map_err(|_| SealError::Unopenable)?;
        let plain = self
            .key()?
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .map_err(|_| SealError::Unopenable)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_hides_its_text() {
        let key = ClusterKey::parse(&ClusterKey::generate().unwrap_or_default()).expect("key");
        let sealed = key.seal(b"wJalrXUtnFEMI/K7MDENG").expect("sealed");
        assert!(
            !sealed.data.contains("wJalrXUtnFEMI")
                && !hex::decode(&sealed.data).unwrap_or_default().windows(5).any(|w| w == b"wJalr")
        );
        assert_eq!(key.open(&sealed).expect("opens"), b"wJalrXUtnFEMI/K7MDENG");
        let other = ClusterKey::parse(&ClusterKey::generate().unwrap_or_default()).expect("key");
        assert_eq!(other.open(&sealed), Err(SealError::Unopenable));
        let mut altered = sealed.clone();
        altered.data.replace_range(0..2, if altered.data.starts_with("00") { "01" } else { "00" });
        assert_eq!(key.open(&altered), Err(SealError::Unopenable));
        assert_ne!(key.seal(b"x").expect("sealed").nonce, key.seal(b"x").expect("sealed").nonce);
        assert_eq!(ClusterKey::parse("abc").err(), Some(SealError::BadKey));
    }
}
