//! `kiln-crypto`: the only crate that talks to the cryptography provider.
//!
//! Keeping every primitive behind this crate means one place to review, one
//! provider (`ring`) in the build, and one place to swap it. It offers
//! content digests, system randomness, the digests and HMACs app code asks
//! for by name ([`digest`], including legacy MD5 and SHA-1), and envelope encryption
//! ([`envelope`]: AES-256-GCM values bound to where they live, data keys
//! wrapped by key-encryption keys held by a [`keys`] provider outside the
//! database), the audit trail's chain and checkpoint keys ([`audit`]), and
//! verification of the RSA and ECDSA signatures apps are sent
//! ([`signature`]: public keys only; it never signs for an app), and the
//! Ed25519-signed compact tokens Kiln's own components hand each other
//! ([`jws`]: the dev site's context tokens, verified by `kiln serve`).
//!
//! It deliberately does not choose *what* to hash or encrypt; callers decide
//! that and this crate only does the arithmetic.

#![forbid(unsafe_code)]

pub mod audit;
pub mod digest;
pub mod envelope;
pub mod jws;
pub mod keys;
pub mod otp;
pub mod password;
pub mod signature;
pub mod tls;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A SHA-256 digest, printed and parsed as `sha256:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256([u8; 32]);

const PREFIX: &str = "sha256:";

impl Sha256 {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, data);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    /// Lower-case hex of the 32 bytes, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A short form for tables: the first 12 hex digits.
    pub fn short(&self) -> String {
        let mut h = self.hex();
        h.truncate(12);
        h
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not a `sha256:` digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a sha256:<64 hex digits> digest")]
pub struct DigestParseError(String);

impl FromStr for Sha256 {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DigestParseError(s.chars().take(80).collect());
        let hex = s.strip_prefix(PREFIX).ok_or_else(bad)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let text = std::str::from_utf8(pair).map_err(|_| bad())?;
            *slot = u8::from_str_radix(text, 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

impl TryFrom<String> for Sha256 {
    type Error = DigestParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Sha256> for String {
    fn from(value: Sha256) -> Self {
        value.to_string()
    }
}

/// The system's random number generator failed (it does not on Linux once
/// the kernel's pool is initialised).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RandomError;

/// Fill `out` from the operating system's cryptographic random source.
pub fn fill_random(out: &mut [u8]) -> Result<(), RandomError> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new().fill(out).map_err(|_| RandomError)
}

/// HMAC-SHA256 of `message` under `key`: for signing webhook bodies.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), message);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Whether `a` and `b` are equal, in time that depends only on their
/// lengths: for comparing secrets and hashes of secrets.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_matches_rfc4231_case_2() {
        let tag = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn sha256_matches_the_standard_test_vector() {
        assert_eq!(
            Sha256::of(b"abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn digests_round_trip_and_refuse_malformed_text() {
        let d = Sha256::of(b"kiln");
        assert_eq!(d.to_string().parse::<Sha256>(), Ok(d));
        for bad in ["", "sha256:", "sha256:zz", "md5:abc", &format!("sha256:{}", "A".repeat(64))] {
            assert!(bad.parse::<Sha256>().is_err(), "{bad}");
        }
    }

    #[test]
    fn random_bytes_are_not_all_equal() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        fill_random(&mut a).unwrap();
        fill_random(&mut b).unwrap();
        assert_ne!(a, b);
    }
}
