//! Operator passwords: Argon2id (RFC 9106) with OWASP's parameters, stored
//! as a PHC string so that the parameters can be raised later and old
//! hashes still verify.

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use zeroize::Zeroizing;

use crate::envelope::CryptoError;

/// Memory in KiB, iterations and lanes (OWASP: 19 MiB, 2, 1).
const M_COST: u32 = 19 * 1024;
const T_COST: u32 = 2;
const P_COST: u32 = 1;
const SALT_BYTES: usize = 16;
const HASH_BYTES: usize = 32;
/// Longest password accepted, in bytes: enough for any passphrase, and a
/// bound on the work one request can ask for.
pub const MAX_PASSWORD_BYTES: usize = 1024;

fn argon(m: u32, t: u32, p: u32) -> Result<Argon2<'static>, CryptoError> {
    let params = Params::new(m, t, p, Some(HASH_BYTES))
        .map_err(|e| CryptoError::Provider(format!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn raw(argon: &Argon2<'_>, password: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; HASH_BYTES]>, CryptoError> {
    let mut out = Zeroizing::new([0u8; HASH_BYTES]);
    argon
        .hash_password_into(password, salt, out.as_mut())
        .map_err(|e| CryptoError::Provider(format!("argon2: {e}")))?;
    Ok(out)
}

/// Hash `password` with a new salt: `$argon2id$v=19$m=..,t=..,p=..$salt$hash`.
pub fn hash(password: &str) -> Result<String, CryptoError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(CryptoError::Provider(format!("passwords are at most {MAX_PASSWORD_BYTES} bytes")));
    }
    let mut salt = [0u8; SALT_BYTES];
    crate::fill_random(&mut salt).map_err(|_| CryptoError::Random)?;
    let digest = raw(&argon(M_COST, T_COST, P_COST)?, password.as_bytes(), &salt)?;
    Ok(format!(
        "$argon2id$v=19$m={M_COST},t={T_COST},p={P_COST}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(digest.as_ref())
    ))
}

/// Whether `password` matches `phc`. A malformed hash is an error, not a
/// mismatch, so that a damaged row is noticed.
pub fn verify(password: &str, phc: &str) -> Result<bool, CryptoError> {
    let bad = || CryptoError::Provider("the stored password hash is not an argon2id PHC string".into());
    if password.len() > MAX_PASSWORD_BYTES {
        return Ok(false);
    }
    let parts: Vec<&str> = phc.split('$').collect();
    let ["", "argon2id", "v=19", params, salt, digest] = parts.as_slice() else { return Err(bad()) };
    let mut m = None;
    let mut t = None;
    let mut p = None;
    for kv in params.split(',') {
        match kv.split_once('=') {
            Some(("m", v)) => m = v.parse::<u32>().ok(),
            Some(("t", v)) => t = v.parse::<u32>().ok(),
            Some(("p", v)) => p = v.parse::<u32>().ok(),
            _ => return Err(bad()),
        }
    }
    let (Some(m), Some(t), Some(p)) = (m, t, p) else { return Err(bad()) };
    // A stored hash must not ask for unbounded work.
    if m > 1024 * 1024 || t > 16 || p > 8 {
        return Err(bad());
    }
    let salt = STANDARD_NO_PAD.decode(salt).map_err(|_| bad())?;
    let want = STANDARD_NO_PAD.decode(digest).map_err(|_| bad())?;
    if want.len() != HASH_BYTES {
        return Err(bad());
    }
    let got = raw(&argon(m, t, p)?, password.as_bytes(), &salt)?;
    Ok(crate::constant_time_eq(got.as_ref(), &want))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash("correct horse battery staple").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify("correct horse battery staple", &h).unwrap());
        assert!(!verify("correct horse battery stapl", &h).unwrap());
        assert!(!verify("", &h).unwrap());
        assert_ne!(h, hash("correct horse battery staple").unwrap(), "salted");
    }

    #[test]
    fn malformed_or_greedy_hashes_are_errors() {
        assert!(verify("x", "").is_err());
        assert!(verify("x", "$argon2i$v=19$m=19456,t=2,p=1$AAAA$AAAA").is_err());
        assert!(verify("x", "$argon2id$v=19$m=99999999,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").is_err());
        let long = "x".repeat(MAX_PASSWORD_BYTES + 1);
        assert!(hash(&long).is_err());
    }

    #[test]
    fn a_hash_from_another_implementation_verifies() {
        // Computed with argon2-cffi (the reference C implementation):
        // hash_secret_raw(b"password", b"kilnkilnkilnkiln", time_cost=2,
        // memory_cost=19456, parallelism=1, hash_len=32, type=Type.ID).
        let phc = "$argon2id$v=19$m=19456,t=2,p=1$a2lsbmtpbG5raWxua2lsbg$qMc6zwu0CtshqaA8VQKkJ7v6CrlnM0OcVgrsnNyDnO8";
        assert!(verify("password", phc).unwrap());
        assert!(!verify("Password", phc).unwrap());
    }
}
