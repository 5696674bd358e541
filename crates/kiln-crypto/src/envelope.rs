//! Envelope encryption: values sealed with AES-256-GCM under a per-installation
//! data key; data keys wrapped by a key-encryption key (KEK) that a
//! [`KeyProvider`] holds outside the database.
//!
//! A sealed value is `[format 1][data key id: u32 BE][nonce: 12][ciphertext+tag]`.
//! Its associated data binds it to where it belongs — installation, namespace
//! (kvs, secret, variable, token, blob) and key — so a ciphertext copied to another
//! row, key or installation fails to open. A wrapped data key is
//! `[format 1][KEK id length][KEK id][nonce: 12][ciphertext+tag]`, bound to
//! its installation and data key id.

use std::fmt;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Format byte of sealed values and wrapped keys.
pub const FORMAT: u8 = 1;

/// Bytes a sealed value adds to its plaintext: format, key id, nonce, tag.
pub const SEAL_OVERHEAD: usize = 1 + 4 + NONCE_LEN + 16;

/// Raw key material, wiped from memory when dropped.
pub type KeyBytes = Zeroizing<[u8; 32]>;

/// What a sealed value belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Namespace {
    Kvs,
    Secret,
    Variable,
    Token,
    /// Bytes stored outside the key-value store (a queued event's body),
    /// bound to the row they live in by the binding's key.
    Blob,
}

impl Namespace {
    pub fn as_str(self) -> &'static str {
        match self {
            Namespace::Kvs => "kvs",
            Namespace::Secret => "secret",
            Namespace::Variable => "variable",
            Namespace::Token => "token",
            Namespace::Blob => "blob",
        }
    }
}

/// Where a sealed value lives; it opens only there.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// The installation (or, for app variables, the app and environment).
    pub owner: &'a str,
    pub namespace: Namespace,
    pub key: &'a str,
}

impl Binding<'_> {
    /// Length-prefixed so that no two bindings encode alike.
    fn aad(&self, key_id: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.owner.len() + self.key.len());
        out.extend_from_slice(b"kiln/value/v1");
        for part in [self.owner.as_bytes(), self.namespace.as_str().as_bytes(), self.key.as_bytes()] {
            out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(part);
        }
        out.extend_from_slice(&key_id.to_be_bytes());
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("the sealed value is truncated or not in a format Kiln wrote")]
    Malformed,
    #[error("the sealed value uses format {0}, which this Kiln cannot read")]
    UnknownFormat(u8),
    #[error("the sealed value does not open: it was altered, or it belongs to another key, owner or row")]
    Authentication,
    #[error("the system random number generator failed")]
    Random,
    #[error("key-encryption key {0:?} is not available from the key provider")]
    UnknownKek(String),
    #[error("key provider: {0}")]
    Provider(String),
}

/// A data key: seals and opens values for one owner.
pub struct DataKey {
    id: u32,
    key: LessSafeKey,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl DataKey {
    /// A new random data key with this id, and its raw bytes for wrapping.
    pub fn generate(id: u32) -> Result<(DataKey, KeyBytes), CryptoError> {
        let mut raw = Zeroizing::new([0u8; 32]);
        SystemRandom::new().fill(raw.as_mut()).map_err(|_| CryptoError::Random)?;
        Ok((DataKey::from_bytes(id, &raw)?, raw))
    }

    pub fn from_bytes(id: u32, raw: &KeyBytes) -> Result<DataKey, CryptoError> {
        let unbound = UnboundKey::new(&AES_256_GCM, raw.as_ref()).map_err(|_| CryptoError::Malformed)?;
        Ok(DataKey { id, key: LessSafeKey::new(unbound) })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// Seal `plaintext` where `binding` says it lives.
    pub fn seal(&self, binding: &Binding<'_>, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
        out.push(FORMAT);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(binding.aad(self.id)),
                &mut body,
            )
            .map_err(|_| CryptoError::Authentication)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Open a value sealed by this key for `binding`.
    pub fn open(&self, binding: &Binding<'_>, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let (id, nonce, body) = split_sealed(sealed)?;
        if id != self.id {
            return Err(CryptoError::Authentication);
        }
        let mut body = Zeroizing::new(body.to_vec());
        let plain_len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(binding.aad(id)),
                body.as_mut_slice(),
            )
            .map_err(|_| CryptoError::Authentication)?
            .len();
        body.truncate(plain_len);
        Ok(body)
    }
}

/// The data key id a sealed value names (to find its key before opening).
pub fn sealed_key_id(sealed: &[u8]) -> Result<u32, CryptoError> {
    split_sealed(sealed).map(|(id, _, _)| id)
}

fn split_sealed(sealed: &[u8]) -> Result<(u32, [u8; NONCE_LEN], &[u8]), CryptoError> {
    let (&format, rest) = sealed.split_first().ok_or(CryptoError::Malformed)?;
    if format != FORMAT {
        return Err(CryptoError::UnknownFormat(format));
    }
    if rest.len() < 4 + NONCE_LEN + 16 {
        return Err(CryptoError::Malformed);
    }
    let (id, rest) = rest.split_at(4);
    let (nonce, body) = rest.split_at(NONCE_LEN);
    let id = u32::from_be_bytes(id.try_into().map_err(|_| CryptoError::Malformed)?);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Malformed)?;
    Ok((id, nonce, body))
}

/// Holds key-encryption keys outside the database and wraps data keys with
/// them. Implementations: a key file, an environment variable; an HSM
/// (PKCS#11) provider fits the same trait, since key material never has to
/// leave it: only wrap and unwrap are asked for.
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// The id of the KEK new wraps use.
    fn current_kek(&self) -> String;
    /// Wrap a data key for `owner` with the current KEK.
    fn wrap(&self, owner: &str, data_key_id: u32, key: &KeyBytes) -> Result<Vec<u8>, CryptoError>;
    /// Unwrap a data key, with whichever KEK wrapped it.
    fn unwrap(&self, owner: &str, data_key_id: u32, wrapped: &[u8]) -> Result<KeyBytes, CryptoError>;
}

/// The KEK id a wrapped data key names.
pub fn wrapped_kek_id(wrapped: &[u8]) -> Result<String, CryptoError> {
    split_wrapped(wrapped).map(|(id, _, _)| id.to_owned())
}

fn wrap_aad(owner: &str, data_key_id: u32, kek_id: &str) -> Vec<u8> {
    let mut out = b"kiln/data-key/v1".to_vec();
    for part in [owner.as_bytes(), kek_id.as_bytes()] {
        out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&data_key_id.to_be_bytes());
    out
}

/// Wrap `key` with a raw KEK (for providers that hold key material).
pub(crate) fn wrap_with(
    kek_id: &str,
    kek: &LessSafeKey,
    owner: &str,
    data_key_id: u32,
    key: &KeyBytes,
) -> Result<Vec<u8>, CryptoError> {
    let id = kek_id.as_bytes();
    let id_len =
        u8::try_from(id.len()).map_err(|_| CryptoError::Provider("KEK id longer than 255 bytes".into()))?;
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| CryptoError::Random)?;
    let mut body = key.to_vec();
    kek.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(wrap_aad(owner, data_key_id, kek_id)),
        &mut body,
    )
    .map_err(|_| CryptoError::Authentication)?;
    let mut out = vec![FORMAT, id_len];
    out.extend_from_slice(id);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    Ok(out)
}

pub(crate) fn unwrap_with(
    kek: &LessSafeKey,
    owner: &str,
    data_key_id: u32,
    wrapped: &[u8],
) -> Result<KeyBytes, CryptoError> {
    let (kek_id, nonce, body) = split_wrapped(wrapped)?;
    let mut body = Zeroizing::new(body.to_vec());
    let plain = kek
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(wrap_aad(owner, data_key_id, kek_id)),
            body.as_mut_slice(),
        )
        .map_err(|_| CryptoError::Authentication)?;
    let mut out = Zeroizing::new([0u8; 32]);
    if plain.len() != 32 {
        return Err(CryptoError::Malformed);
    }
    out.copy_from_slice(plain);
    Ok(out)
}

fn split_wrapped(wrapped: &[u8]) -> Result<(&str, [u8; NONCE_LEN], &[u8]), CryptoError> {
    let (&format, rest) = wrapped.split_first().ok_or(CryptoError::Malformed)?;
    if format != FORMAT {
        return Err(CryptoError::UnknownFormat(format));
    }
    let (&id_len, rest) = rest.split_first().ok_or(CryptoError::Malformed)?;
    let id_len = usize::from(id_len);
    if rest.len() < id_len + NONCE_LEN + 16 {
        return Err(CryptoError::Malformed);
    }
    let (id, rest) = rest.split_at(id_len);
    let (nonce, body) = rest.split_at(NONCE_LEN);
    let id = std::str::from_utf8(id).map_err(|_| CryptoError::Malformed)?;
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Malformed)?;
    Ok((id, nonce, body))
}

pub(crate) fn kek_from_bytes(raw: &KeyBytes) -> Result<LessSafeKey, CryptoError> {
    let unbound = UnboundKey::new(&AES_256_GCM, raw.as_ref()).map_err(|_| CryptoError::Malformed)?;
    Ok(LessSafeKey::new(unbound))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding<'a>(owner: &'a str, key: &'a str) -> Binding<'a> {
        Binding { owner, namespace: Namespace::Kvs, key }
    }

    #[test]
    fn sealed_values_open_only_where_they_were_sealed() {
        let (dk, _) = DataKey::generate(7).unwrap();
        let sealed = dk.seal(&binding("inst-a", "k1"), b"canary-value").unwrap();
        assert_eq!(dk.open(&binding("inst-a", "k1"), &sealed).unwrap().as_slice(), b"canary-value");
        assert_eq!(sealed_key_id(&sealed).unwrap(), 7);
        // Another key, owner or namespace: refused.
        assert_eq!(dk.open(&binding("inst-a", "k2"), &sealed).unwrap_err(), CryptoError::Authentication);
        assert_eq!(dk.open(&binding("inst-b", "k1"), &sealed).unwrap_err(), CryptoError::Authentication);
        let secret = Binding { owner: "inst-a", namespace: Namespace::Secret, key: "k1" };
        assert_eq!(dk.open(&secret, &sealed).unwrap_err(), CryptoError::Authentication);
        // Another data key: refused.
        let (other, _) = DataKey::generate(7).unwrap();
        assert_eq!(other.open(&binding("inst-a", "k1"), &sealed).unwrap_err(), CryptoError::Authentication);
    }

    #[test]
    fn edited_truncated_or_foreign_ciphertext_is_refused() {
        let (dk, _) = DataKey::generate(1).unwrap();
        let b = binding("o", "k");
        let sealed = dk.seal(&b, b"hello").unwrap();
        for i in 0..sealed.len() {
            let mut edited = sealed.clone();
            edited[i] ^= 0x01;
            assert!(dk.open(&b, &edited).is_err(), "flipping byte {i} must be detected");
        }
        assert_eq!(dk.open(&b, &sealed[..sealed.len() - 1]).unwrap_err(), CryptoError::Authentication);
        assert_eq!(dk.open(&b, &sealed[..10]).unwrap_err(), CryptoError::Malformed);
        assert_eq!(dk.open(&b, &[]).unwrap_err(), CryptoError::Malformed);
        let mut future = sealed.clone();
        future[0] = 9;
        assert_eq!(dk.open(&b, &future).unwrap_err(), CryptoError::UnknownFormat(9));
    }

    #[test]
    fn the_same_plaintext_seals_differently_each_time() {
        let (dk, _) = DataKey::generate(1).unwrap();
        let b = binding("o", "k");
        assert_ne!(dk.seal(&b, b"same").unwrap(), dk.seal(&b, b"same").unwrap());
    }

    #[test]
    fn wrapped_keys_are_bound_to_owner_and_id() {
        let mut raw = Zeroizing::new([0u8; 32]);
        raw[0] = 42;
        let kek = kek_from_bytes(&raw).unwrap();
        let (_, dek) = DataKey::generate(3).unwrap();
        let wrapped = wrap_with("k1", &kek, "inst-a", 3, &dek).unwrap();
        assert_eq!(wrapped_kek_id(&wrapped).unwrap(), "k1");
        assert_eq!(*unwrap_with(&kek, "inst-a", 3, &wrapped).unwrap(), *dek);
        assert!(unwrap_with(&kek, "inst-b", 3, &wrapped).is_err());
        assert!(unwrap_with(&kek, "inst-a", 4, &wrapped).is_err());
    }
}
