//! Short-lived signed tokens between Kiln's own components: compact JWS
//! (RFC 7515) signed with Ed25519 (`"alg": "EdDSA"`, RFC 8037), the shape
//! of a JWT.
//!
//! The product side (the dev site, or whatever stands in front of a UI)
//! holds an [`Ed25519Signer`] and publishes its [`Ed25519PublicKey`]s as a
//! JWK set; `kiln serve` is configured with that set and calls [`verify`].
//! Asymmetric on purpose: the server holds nothing that could mint a
//! token, so a leak of its configuration cannot be turned into a user's
//! identity.
//!
//! What this module checks is the envelope only: the shape, the algorithm
//! (EdDSA and nothing else: no `none`, no HMAC, so no algorithm
//! confusion), the key named by `kid`, and the signature. The claims come
//! back as bytes; what they mean (issuer, audience, expiry) is the
//! caller's to parse and decide.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::envelope::CryptoError;

/// Longest token [`verify`] reads. Kiln's context tokens are well under
/// 2 KiB; the limit stops a caller from making the server decode and parse
/// megabytes before the signature is even checked.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The only algorithm signed and accepted.
pub const ALGORITHM: &str = "EdDSA";

/// Why a token is refused. The variants are for logs and tests; a caller
/// answering a client should say no more than "invalid token".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    #[error("the token is not a compact JWS: {0}")]
    Malformed(&'static str),
    #[error("the token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("the token is signed with {0:?}; only EdDSA (Ed25519) is accepted")]
    Algorithm(String),
    #[error("the token names a critical header extension, which Kiln does not implement")]
    Critical,
    #[error("the token's key {0:?} is not one of the configured keys")]
    UnknownKey(String),
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the public key is not an Ed25519 JWK: {0}")]
    BadKey(&'static str),
}

/// An Ed25519 signing key, made fresh in memory (never written out by this
/// crate): whoever issues tokens publishes [`Ed25519Signer::public_key`].
pub struct Ed25519Signer {
    kid: String,
    pair: Ed25519KeyPair,
}

impl fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519Signer").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl Ed25519Signer {
    /// A new random key. Its `kid` is derived from the public key, so two
    /// keys never share one by accident.
    pub fn generate() -> Result<Self, CryptoError> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| CryptoError::Random)?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| CryptoError::Provider("cannot load the Ed25519 key just made".into()))?;
        let kid = key_id(pair.public_key().as_ref());
        Ok(Ed25519Signer { kid, pair })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key that verifies this signer's tokens.
    pub fn public_key(&self) -> Ed25519PublicKey {
        let mut x = [0u8; 32];
        x.copy_from_slice(self.pair.public_key().as_ref());
        Ed25519PublicKey { kid: self.kid.clone(), x }
    }

    /// `claims` (JSON, the caller's) as a compact JWS:
    /// `base64url(header).base64url(claims).base64url(signature)`.
    pub fn sign(&self, claims: &[u8]) -> String {
        // The kid is hex (see `key_id`), so this needs no JSON escaping.
        let header = format!(r#"{{"alg":"{ALGORITHM}","typ":"JWT","kid":"{}"}}"#, self.kid);
        let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
        let signature = self.pair.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

/// A key that verifies tokens, with the `kid` tokens name it by.
#[derive(Clone, PartialEq, Eq)]
pub struct Ed25519PublicKey {
    kid: String,
    x: [u8; 32],
}

impl fmt::Debug for Ed25519PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519PublicKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// An Ed25519 public key as a JWK (RFC 8037): `{"kty":"OKP","crv":"Ed25519",
/// "x":..., "kid":...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OkpJwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub kid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub key_use: Option<String>,
}

/// A JWK set of Ed25519 keys, as an issuer publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    pub keys: Vec<OkpJwk>,
}

/// Most keys a [`JwkSet`] may hold: an issuer rotating keeps two or three.
pub const MAX_KEYS: usize = 16;

impl Ed25519PublicKey {
    /// The key a JWK describes; anything but an Ed25519 signing key is
    /// refused by name.
    pub fn from_jwk(jwk: &OkpJwk) -> Result<Self, JwsError> {
        if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
            return Err(JwsError::BadKey("kty must be \"OKP\" and crv \"Ed25519\""));
        }
        if jwk.alg.as_deref().is_some_and(|a| a != ALGORITHM) {
            return Err(JwsError::BadKey("alg, when present, must be \"EdDSA\""));
        }
        if jwk.key_use.as_deref().is_some_and(|u| u != "sig") {
            return Err(JwsError::BadKey("use, when present, must be \"sig\""));
        }
        if jwk.kid.is_empty() || jwk.kid.len() > 128 {
            return Err(JwsError::BadKey("kid must be 1 to 128 characters"));
        }
        let bytes = URL_SAFE_NO_PAD.decode(&jwk.x).map_err(|_| JwsError::BadKey("x is not base64url"))?;
        let x: [u8; 32] = bytes.as_slice().try_into().map_err(|_| JwsError::BadKey("x is not 32 bytes"))?;
        Ok(Ed25519PublicKey { kid: jwk.kid.clone(), x })
    }

    /// The keys of a JWK set (at most [`MAX_KEYS`], kids unique).
    pub fn from_jwk_set(set: &JwkSet) -> Result<Vec<Self>, JwsError> {
        if set.keys.is_empty() || set.keys.len() > MAX_KEYS {
            return Err(JwsError::BadKey("a key set holds 1 to 16 keys"));
        }
        let keys = set.keys.iter().map(Self::from_jwk).collect::<Result<Vec<_>, _>>()?;
        for (i, k) in keys.iter().enumerate() {
            if keys.iter().skip(i + 1).any(|other| other.kid == k.kid) {
                return Err(JwsError::BadKey("two keys share a kid"));
            }
        }
        Ok(keys)
    }

    pub fn to_jwk(&self) -> OkpJwk {
        OkpJwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: URL_SAFE_NO_PAD.encode(self.x),
            kid: self.kid.clone(),
            alg: Some(ALGORITHM.into()),
            key_use: Some("sig".into()),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// A token whose signature verified: which key signed it, and its claims
/// (still to be parsed and judged by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub kid: String,
    pub claims: Vec<u8>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

/// Check `token`'s shape, algorithm, key and signature against `keys`.
pub fn verify(token: &str, keys: &[Ed25519PublicKey]) -> Result<Verified, JwsError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwsError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Malformed("it does not have three dot-separated parts"));
    };
    let header =
        URL_SAFE_NO_PAD.decode(header_b64).map_err(|_| JwsError::Malformed("the header is not base64url"))?;
    let header: Header = serde_json::from_slice(&header)
        .map_err(|_| JwsError::Malformed("the header is not a JSON object"))?;
    if header.alg != ALGORITHM {
        return Err(JwsError::Algorithm(header.alg.chars().take(32).collect()));
    }
    if header.crit.is_some() {
        return Err(JwsError::Critical);
    }
    let kid = header.kid.ok_or(JwsError::Malformed("the header names no kid"))?;
    let key = keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or_else(|| JwsError::UnknownKey(kid.chars().take(64).collect()))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| JwsError::Malformed("the signature is not base64url"))?;
    // The signing input is the two encoded parts as sent: re-encoding could
    // accept a token whose bytes differ from what was signed.
    let input_len = header_b64.len() + 1 + claims_b64.len();
    let input = token.get(..input_len).ok_or(JwsError::Malformed("the token is cut short"))?;
    UnparsedPublicKey::new(&ED25519, &key.x)
        .verify(input.as_bytes(), &signature)
        .map_err(|_| JwsError::BadSignature)?;
    let claims = URL_SAFE_NO_PAD
        .decode(claims_b64)
        .map_err(|_| JwsError::Malformed("the claims are not base64url"))?;
    Ok(Verified { kid, claims })
}

/// The first 8 bytes of the public key's SHA-256, hex.
fn key_id(public: &[u8]) -> String {
    crate::Sha256::of(public).as_bytes().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code: a panic is a failed test")]

    use super::*;

    fn encode(part: &str) -> String {
        URL_SAFE_NO_PAD.encode(part)
    }

    #[test]
    fn a_signed_token_verifies_with_its_key_and_returns_the_claims() {
        let signer = Ed25519Signer::generate().unwrap();
        let token = signer.sign(br#"{"sub":"alice"}"#);
        let got = verify(&token, &[signer.public_key()]).unwrap();
        assert_eq!(got.claims, br#"{"sub":"alice"}"#);
        assert_eq!(got.kid, signer.kid());
    }

    #[test]
    fn a_changed_claim_header_or_signature_is_refused() {
        let signer = Ed25519Signer::generate().unwrap();
        let keys = [signer.public_key()];
        let token = signer.sign(br#"{"sub":"alice"}"#);
        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims = format!("{}.{}.{}", parts[0], encode(r#"{"sub":"mallory"}"#), parts[2]);
        assert_eq!(verify(&forged_claims, &keys), Err(JwsError::BadSignature));
        let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        sig[0] ^= 1;
        let forged_sig = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
        assert_eq!(verify(&forged_sig, &keys), Err(JwsError::BadSignature));
        let header = format!(r#"{{"alg":"EdDSA","kid":"{}","typ":"jwt"}}"#, signer.kid());
        let forged_header = format!("{}.{}.{}", encode(&header), parts[1], parts[2]);
        assert_eq!(verify(&forged_header, &keys), Err(JwsError::BadSignature));
    }

    #[test]
    fn another_issuers_key_or_an_unknown_kid_is_refused() {
        let ours = Ed25519Signer::generate().unwrap();
        let theirs = Ed25519Signer::generate().unwrap();
        let token = theirs.sign(b"{}");
        assert!(matches!(verify(&token, &[ours.public_key()]), Err(JwsError::UnknownKey(_))));
        // The same kid with another key's material: the signature decides.
        let mut impostor = ours.public_key();
        impostor.kid = theirs.kid().to_owned();
        assert_eq!(verify(&token, &[impostor]), Err(JwsError::BadSignature));
    }

    #[test]
    fn alg_none_hmac_and_critical_extensions_are_refused() {
        let signer = Ed25519Signer::generate().unwrap();
        let keys = [signer.public_key()];
        let claims = encode("{}");
        for alg in ["none", "HS256", "ES256", "eddsa"] {
            let header = encode(&format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, signer.kid()));
            assert_eq!(verify(&format!("{header}.{claims}."), &keys), Err(JwsError::Algorithm(alg.into())));
        }
        let header = encode(&format!(r#"{{"alg":"EdDSA","kid":"{}","crit":["exp"]}}"#, signer.kid()));
        assert_eq!(verify(&format!("{header}.{claims}.AAAA"), &keys), Err(JwsError::Critical));
    }

    #[test]
    fn malformed_and_oversized_tokens_are_refused_before_any_key_is_used() {
        let keys = [Ed25519Signer::generate().unwrap().public_key()];
        for bad in ["", "a.b", "a.b.c.d", "!!.e30.AA", "e30.e30.AA"] {
            assert!(matches!(verify(bad, &keys), Err(JwsError::Malformed(_))), "{bad}");
        }
        assert_eq!(verify(&"a".repeat(MAX_TOKEN_LEN + 1), &keys), Err(JwsError::TooLong));
    }

    #[test]
    fn keys_round_trip_through_a_jwk_set_and_bad_jwks_are_refused() {
        let signer = Ed25519Signer::generate().unwrap();
        let set = JwkSet { keys: vec![signer.public_key().to_jwk()] };
        let text = serde_json::to_string(&set).unwrap();
        let back: JwkSet = serde_json::from_str(&text).unwrap();
        let keys = Ed25519PublicKey::from_jwk_set(&back).unwrap();
        assert_eq!(keys, vec![signer.public_key()]);
        assert!(verify(&signer.sign(b"{}"), &keys).is_ok());
        let mut rsa = signer.public_key().to_jwk();
        rsa.kty = "RSA".into();
        assert!(Ed25519PublicKey::from_jwk(&rsa).is_err());
        let mut short = signer.public_key().to_jwk();
        short.x = "AAAA".into();
        assert!(Ed25519PublicKey::from_jwk(&short).is_err());
        let twice = JwkSet { keys: vec![signer.public_key().to_jwk(), signer.public_key().to_jwk()] };
        assert!(Ed25519PublicKey::from_jwk_set(&twice).is_err());
        assert!(Ed25519PublicKey::from_jwk_set(&JwkSet { keys: vec![] }).is_err());
    }
}
