//! The audit trail's key. One 32-byte secret, held by a key provider (never
//! in the database), from which two keys are derived: an HMAC-SHA256 key
//! that chains the records (so nobody without it can forge, edit or insert
//! one and recompute the chain) and an Ed25519 key that signs checkpoints
//! (so the chain's head can be vouched for outside the database).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use ring::{hkdf, hmac};
use zeroize::Zeroizing;

use crate::envelope::CryptoError;

/// The environment variable holding the audit key (`ID:BASE64`) when the
/// key-encryption keys come from the environment too.
pub const AUDIT_KEY_ENV_VAR: &str = "KILN_AUDIT_KEY";

/// Length of a chain MAC.
pub const MAC_LEN: usize = 32;

/// The derived keys, and the id records and checkpoints carry.
pub struct AuditKey {
    id: String,
    signing: Ed25519KeyPair,
    mac: hmac::Key,
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKey").field("id", &self.id).finish_non_exhaustive()
    }
}

fn frame(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
    for part in parts {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl AuditKey {
    /// The keys derived from `secret`.
    pub fn from_secret(id: &str, secret: &[u8; 32]) -> Result<AuditKey, CryptoError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"kiln audit key v1").extract(secret);
        let mut seed = Zeroizing::new([0u8; 32]);
        prk.expand(&[b"ed25519 checkpoint signing"], Len(32))
            .and_then(|okm| okm.fill(seed.as_mut()))
            .map_err(|_| CryptoError::Provider("cannot derive the audit signing key".into()))?;
        let signing = Ed25519KeyPair::from_seed_unchecked(seed.as_ref())
            .map_err(|_| CryptoError::Provider("cannot make the audit signing key".into()))?;
        let mac: hmac::Key = prk
            .expand(&[b"hmac-sha256 record chain"], hmac::HMAC_SHA256)
            .map_err(|_| CryptoError::Provider("cannot derive the audit chain key".into()))?
            .into();
        Ok(AuditKey { id: id.to_owned(), signing, mac })
    }

    /// A new random secret, base64, for a key file or the environment.
    pub fn new_secret() -> Result<Zeroizing<String>, CryptoError> {
        let mut raw = Zeroizing::new([0u8; 32]);
        SystemRandom::new().fill(raw.as_mut()).map_err(|_| CryptoError::Random)?;
        Ok(Zeroizing::new(STANDARD.encode(raw.as_ref())))
    }

    /// Parse a base64 secret.
    pub fn from_base64(id: &str, b64: &str) -> Result<AuditKey, CryptoError> {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(b64.trim())
                .map_err(|_| CryptoError::Provider(format!("audit key {id} is not base64")))?,
        );
        let secret: Zeroizing<[u8; 32]> = Zeroizing::new(
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| CryptoError::Provider(format!("audit key {id} is not 32 bytes")))?,
        );
        AuditKey::from_secret(id, &secret)
    }

    /// `ID:BASE64`, as in [`AUDIT_KEY_ENV_VAR`].
    pub fn from_env_value(value: &str) -> Result<AuditKey, CryptoError> {
        let (id, b64) = value
            .trim()
            .split_once(':')
            .ok_or_else(|| CryptoError::Provider(format!("{AUDIT_KEY_ENV_VAR} is ID:BASE64")))?;
        AuditKey::from_base64(id, b64)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The chain MAC of `parts`, each length-prefixed so that no two
    /// different sequences of parts give the same input.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let tag = hmac::sign(&self.mac, &frame(parts));
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Whether `tag` is the MAC of `parts` (compared in constant time).
    pub fn mac_matches(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        hmac::verify(&self.mac, &frame(parts), tag).is_ok()
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.signing.sign(message).as_ref().to_vec()
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, self.signing.public_key().as_ref())
            .verify(message, signature)
            .is_ok()
    }

    /// The checkpoint-verifying public key, hex, for publishing elsewhere.
    pub fn public_key_hex(&self) -> String {
        self.signing.public_key().as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn macs_and_signatures_depend_on_the_secret_and_the_framing() {
        let a = AuditKey::from_secret("a1", &[1; 32]).unwrap();
        let b = AuditKey::from_secret("b1", &[2; 32]).unwrap();
        assert_ne!(a.mac(&[b"x"]), b.mac(&[b"x"]));
        // Length prefixes: moving a byte between parts changes the MAC.
        assert_ne!(a.mac(&[b"ab", b"c"]), a.mac(&[b"a", b"bc"]));
        assert!(a.mac_matches(&[b"ab", b"c"], &a.mac(&[b"ab", b"c"])));
        let sig = a.sign(b"checkpoint");
        assert!(a.verify(b"checkpoint", &sig));
        assert!(!a.verify(b"checkpoint!", &sig));
        assert!(!b.verify(b"checkpoint", &sig));
        // Deterministic from the secret.
        assert_eq!(a.public_key_hex(), AuditKey::from_secret("a1", &[1; 32]).unwrap().public_key_hex());
    }

    #[test]
    fn env_values_are_checked() {
        let secret = AuditKey::new_secret().unwrap();
        assert!(AuditKey::from_env_value(&format!("a1:{}", secret.as_str())).is_ok());
        for bad in ["", "a1", "a1:not-base64!", "a1:AAAA"] {
            assert!(AuditKey::from_env_value(bad).is_err(), "{bad}");
        }
    }
}
