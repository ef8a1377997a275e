//! API keys: `<key_id>.<secret>`, as Modzy writes them. The key id is
//! public (jobs name it as their submitter); the secret is random, shown
//! once, and only its SHA-256 is stored. A secret has 190 bits from the
//! operating system's CSPRNG, so a fast hash is enough: there is nothing to
//! guess from it.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// Characters of a key id and of a secret.
pub const KEY_ID_LEN: usize = 20;
pub const SECRET_LEN: usize = 32;

/// A key as its holder sends it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey {
    key_id: String,
    secret: String,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({}.…)", self.key_id)
    }
}

/// The operating system gave no randomness.
#[derive(Debug, thiserror::Error)]
#[error("no randomness from the operating system: {0}")]
pub struct NoRandomness(getrandom::Error);

fn random_text(len: usize) -> Result<String, NoRandomness> {
    // 248 is the largest multiple of 62 below 256: rejecting bytes above
    // it keeps every character equally likely.
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf).map_err(NoRandomness)?;
        for b in buf {
            if b < 248 && out.len() < len {
                out.push(ALPHABET[usize::from(b) % ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

impl SecretKey {
    /// A new random key.
    pub fn generate() -> Result<SecretKey, NoRandomness> {
        Ok(SecretKey { key_id: random_text(KEY_ID_LEN)?, secret: random_text(SECRET_LEN)? })
    }

    /// A key as sent; `None` if it is not of the form `<key_id>.<secret>`.
    pub fn parse(text: &str) -> Option<SecretKey> {
        let (key_id, secret) = text.split_once('.')?;
        let plain = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_alphanumeric());
        (plain(key_id, KEY_ID_LEN) && plain(secret, SECRET_LEN))
            .then(|| SecretKey { key_id: key_id.to_owned(), secret: secret.to_owned() })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The key as its holder sends it. Shown once, at creation.
    pub fn reveal(&self) -> String {
        format!("{}.{}", self.key_id, self.secret)
    }

    /// What is stored: the hex SHA-256 of the whole key.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.reveal().as_bytes()))
    }

    /// Whether this key is the one whose hash is `stored`, compared in
    /// constant time.
    pub fn matches(&self, stored: &str) -> bool {
        self.hash().as_bytes().ct_eq(stored.as_bytes()).into()
    }
}

/// The key in an `authorization` header: `Bearer <key>` or Modzy's
/// `ApiKey <key>` (either case). `None` when there is no such header.
pub fn from_authorization(header: &str) -> Option<&str> {
    let (scheme, key) = header.trim().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("apikey")).then(|| key.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_parses_back_and_matches_only_its_hash() {
        let key = SecretKey::generate().expect("random");
        let text = key.reveal();
        assert_eq!(text.len(), KEY_ID_LEN + 1 + SECRET_LEN);
        let parsed = SecretKey::parse(&text).expect("parses");
        assert_eq!(parsed, key);
        assert!(parsed.matches(&key.hash()));
        let other = SecretKey::generate().expect("random");
        assert_ne!(other.key_id(), key.key_id());
        assert!(!other.matches(&key.hash()));
        assert!(!format!("{key:?}").contains(&text[KEY_ID_LEN + 1..]), "Debug must not show the secret");
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        for bad in [
            "",
            "abc",
            "abc.def",
            &format!("{}.{}", "a".repeat(20), "b".repeat(31)),
            &format!("{}.{}!", "a".repeat(20), "b".repeat(31)),
        ] {
            assert!(SecretKey::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn both_header_forms_are_read() {
        assert_eq!(from_authorization("Bearer k.s"), Some("k.s"));
        assert_eq!(from_authorization("ApiKey k.s"), Some("k.s"));
        assert_eq!(from_authorization("apikey  k.s "), Some("k.s"));
        assert_eq!(from_authorization("Basic dXNlcg=="), None);
        assert_eq!(from_authorization("k.s"), None);
    }
}
