//! Time-based one-time passwords (RFC 6238: HMAC-SHA1, 6 digits, 30-second
//! steps), the form every authenticator app reads, and the base32 their
//! enrollment URIs carry.
//!
//! Which steps are accepted, and that each is accepted once, is decided by
//! the caller (`kiln-access`), which stores the last step used.

use ring::hmac;
use zeroize::Zeroizing;

use crate::envelope::CryptoError;

/// Seconds per step.
pub const STEP_SECONDS: u64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;
/// Bytes of a new secret (160 bits, as RFC 4226 recommends).
pub const SECRET_BYTES: usize = 20;

/// The step a unix time falls in.
pub fn step_at(unix_seconds: u64) -> u64 {
    unix_seconds / STEP_SECONDS
}

/// The code for `step` (RFC 4226 dynamic truncation), `DIGITS` long.
pub fn code(secret: &[u8], step: u64) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &step.to_be_bytes());
    let mac = tag.as_ref();
    let offset = usize::from(mac.last().copied().unwrap_or(0) & 0x0f);
    let word = mac
        .get(offset..offset + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, |b| u32::from_be_bytes(b) & 0x7fff_ffff);
    word % 10u32.pow(DIGITS)
}

/// A new random secret.
pub fn new_secret() -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let mut secret = Zeroizing::new(vec![0u8; SECRET_BYTES]);
    crate::fill_random(&mut secret).map_err(|_| CryptoError::Random)?;
    Ok(secret)
}

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn symbol(five_bits: u32) -> char {
    char::from(ALPHABET.get((five_bits & 31) as usize).copied().unwrap_or(b'A'))
}

/// RFC 4648 base32 without padding, as `otpauth://` URIs carry secrets.
pub fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(symbol(buffer >> bits));
        }
    }
    if bits > 0 {
        out.push(symbol(buffer << (5 - bits)));
    }
    out
}

/// The bytes of RFC 4648 base32 without padding; `None` if `s` is not that.
pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// The enrollment URI an authenticator app scans: the secret, the issuer
/// and the account name (percent-encoded).
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
        enc(issuer),
        enc(account),
        base32(secret),
        enc(issuer)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vectors() {
        // RFC 6238 appendix B, SHA1 rows, last six of the eight digits.
        let secret = b"12345678901234567890";
        for (time, eight) in [
            (59u64, 94_287_082u32),
            (1_111_111_109, 7_081_804),
            (1_111_111_111, 14_050_471),
            (1_234_567_890, 89_005_924),
            (2_000_000_000, 69_279_037),
            (20_000_000_000, 65_353_130),
        ] {
            assert_eq!(code(secret, step_at(time)), eight % 1_000_000, "t={time}");
        }
    }

    #[test]
    fn base32_matches_rfc4648() {
        for (raw, enc) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32(raw.as_bytes()), enc);
            assert_eq!(base32_decode(enc).unwrap(), raw.as_bytes());
        }
        assert!(base32_decode("mzxw6").is_none(), "lower case is not base32 here");
    }

    #[test]
    fn the_uri_names_issuer_and_account_encoded() {
        let uri = otpauth_uri("Kiln", "alice smith", b"12345678901234567890");
        assert_eq!(
            uri,
            "otpauth://totp/Kiln:alice%20smith?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Kiln&algorithm=SHA1&digits=6&period=30"
        );
    }
}
