//! Message digests and HMACs chosen by name, for app code: the Node
//! `crypto.createHash`/`createHmac` and Web Crypto `subtle.digest`/HMAC that
//! Kiln's engine offers apps are built on these.
//!
//! MD5 and SHA-1 are here only because apps (and the libraries they bundle)
//! still ask for them to talk to systems that use them; nothing in Kiln
//! itself relies on either. `ring` offers SHA-1 for that reason and has no
//! MD5, so MD5 is implemented below (RFC 1321), as is HMAC over it (RFC 2104).

use std::fmt;

/// A digest algorithm an app may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    Md5,
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl DigestAlgorithm {
    /// The algorithm for a Node (`sha256`, `RSA-SHA256` is not one) or Web
    /// Crypto (`SHA-256`) name, in any case.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "md5" => Some(Self::Md5),
            "sha1" | "sha-1" => Some(Self::Sha1),
            "sha256" | "sha-256" => Some(Self::Sha256),
            "sha384" | "sha-384" => Some(Self::Sha384),
            "sha512" | "sha-512" => Some(Self::Sha512),
            _ => None,
        }
    }

    /// Length of a digest, in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Self::Md5 => 16,
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    fn ring_digest(self) -> Option<&'static ring::digest::Algorithm> {
        match self {
            Self::Md5 => None,
            Self::Sha1 => Some(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY),
            Self::Sha256 => Some(&ring::digest::SHA256),
            Self::Sha384 => Some(&ring::digest::SHA384),
            Self::Sha512 => Some(&ring::digest::SHA512),
        }
    }

    fn ring_hmac(self) -> Option<ring::hmac::Algorithm> {
        match self {
            Self::Md5 => None,
            Self::Sha1 => Some(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY),
            Self::Sha256 => Some(ring::hmac::HMAC_SHA256),
            Self::Sha384 => Some(ring::hmac::HMAC_SHA384),
            Self::Sha512 => Some(ring::hmac::HMAC_SHA512),
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Md5 => "md5",
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        })
    }
}

/// The digest of `data`.
pub fn digest(algorithm: DigestAlgorithm, data: &[u8]) -> Vec<u8> {
    match algorithm.ring_digest() {
        Some(ring_algorithm) => ring::digest::digest(ring_algorithm, data).as_ref().to_vec(),
        None => md5(data).to_vec(),
    }
}

/// The HMAC of `message` under `key` (RFC 2104).
pub fn hmac(algorithm: DigestAlgorithm, key: &[u8], message: &[u8]) -> Vec<u8> {
    match algorithm.ring_hmac() {
        Some(ring_algorithm) => {
            ring::hmac::sign(&ring::hmac::Key::new(ring_algorithm, key), message).as_ref().to_vec()
        }
        None => hmac_md5(key, message).to_vec(),
    }
}

/// MD5's block size in bytes, which is also HMAC-MD5's key block size.
const MD5_BLOCK: usize = 64;

/// HMAC-MD5 (RFC 2104 with RFC 1321's MD5).
fn hmac_md5(key: &[u8], message: &[u8]) -> [u8; 16] {
    let mut block = [0u8; MD5_BLOCK];
    if key.len() > MD5_BLOCK {
        block.iter_mut().zip(md5(key)).for_each(|(slot, b)| *slot = b);
    } else {
        block.iter_mut().zip(key).for_each(|(slot, b)| *slot = *b);
    }
    let mut inner = Vec::with_capacity(MD5_BLOCK + message.len());
    inner.extend(block.iter().map(|b| b ^ 0x36));
    inner.extend_from_slice(message);
    let mut outer = Vec::with_capacity(MD5_BLOCK + 16);
    outer.extend(block.iter().map(|b| b ^ 0x5c));
    outer.extend_from_slice(&md5(&inner));
    md5(&outer)
}

/// Per-round left rotations (RFC 1321, section 3.4).
const MD5_SHIFTS: [u32; 64] = [
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5,
    9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15, 21, 6, 10, 15, 21, 6,
    10, 15, 21, 6, 10, 15, 21,
];

/// `floor(abs(sin(i + 1)) * 2^32)` (RFC 1321, section 3.4).
const MD5_SINES: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

/// MD5 of `data` (RFC 1321).
fn md5(data: &[u8]) -> [u8; 16] {
    let mut state: [u32; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];
    // Padding: a 1 bit, zeros to 56 mod 64 bytes, then the bit length.
    let bit_len = (data.len() as u64).wrapping_mul(8);
    let mut tail = Vec::with_capacity(2 * MD5_BLOCK);
    let whole = data.len() - data.len() % MD5_BLOCK;
    tail.extend_from_slice(data.get(whole..).unwrap_or_default());
    tail.push(0x80);
    while tail.len() % MD5_BLOCK != 56 {
        tail.push(0);
    }
    tail.extend_from_slice(&bit_len.to_le_bytes());
    let blocks =
        data.get(..whole).unwrap_or_default().chunks_exact(MD5_BLOCK).chain(tail.chunks_exact(MD5_BLOCK));
    for block in blocks {
        md5_block(&mut state, block);
    }
    let mut out = [0u8; 16];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out
}

fn md5_block(state: &mut [u32; 4], block: &[u8]) {
    let mut words = [0u32; 16];
    for (word, bytes) in words.iter_mut().zip(block.chunks_exact(4)) {
        *word = u32::from_le_bytes([
            bytes.first().copied().unwrap_or_default(),
            bytes.get(1).copied().unwrap_or_default(),
            bytes.get(2).copied().unwrap_or_default(),
            bytes.get(3).copied().unwrap_or_default(),
        ]);
    }
    let [mut a, mut b, mut c, mut d] = *state;
    for (i, (shift, sine)) in MD5_SHIFTS.iter().zip(MD5_SINES).enumerate() {
        let (f, g) = match i / 16 {
            0 => ((b & c) | (!b & d), i),
            1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
            2 => (b ^ c ^ d, (3 * i + 5) % 16),
            _ => (c ^ (b | !d), (7 * i) % 16),
        };
        let word = words.get(g).copied().unwrap_or_default();
        let rotated = a.wrapping_add(f).wrapping_add(sine).wrapping_add(word).rotate_left(*shift);
        a = d;
        d = c;
        c = b;
        b = b.wrapping_add(rotated);
    }
    let [sa, sb, sc, sd] = state;
    *sa = sa.wrapping_add(a);
    *sb = sb.wrapping_add(b);
    *sc = sc.wrapping_add(c);
    *sd = sd.wrapping_add(d);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn md5_matches_the_rfc_1321_test_suite() {
        let cases = [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            ("abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"),
            (
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                "d174ab98d277d9f5a5611c2c9f419d9f",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(hex(&digest(DigestAlgorithm::Md5, input.as_bytes())), expected, "md5({input:?})");
        }
    }

    #[test]
    fn md5_pads_correctly_around_the_block_boundary() {
        // 55, 56 and 64 bytes: the padding fits, just does not fit, and
        // needs a whole extra block (values from a reference implementation).
        let cases = [
            (55, "ef1772b6dff9a122358552954ad0df65"),
            (56, "3b0c8ac703f828b04c6c197006d17218"),
            (64, "014842d480b571495a4a0363793f7367"),
        ];
        for (n, expected) in cases {
            assert_eq!(hex(&digest(DigestAlgorithm::Md5, &vec![b'a'; n])), expected, "{n} bytes");
        }
    }

    #[test]
    fn hmac_md5_matches_rfc_2202() {
        assert_eq!(
            hex(&hmac(DigestAlgorithm::Md5, &[0x0b; 16], b"Hi There")),
            "9294727a3638bb1c13f48ef8158bfc9d"
        );
        assert_eq!(
            hex(&hmac(DigestAlgorithm::Md5, b"Jefe", b"what do ya want for nothing?")),
            "750c783e6ab0b503eaa86e310a5db738"
        );
        // A key longer than the block is hashed first.
        assert_eq!(
            hex(&hmac(
                DigestAlgorithm::Md5,
                &[0xaa; 80],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd"
        );
    }

    #[test]
    fn sha_family_matches_fips_180_vectors() {
        let abc = b"abc";
        assert_eq!(hex(&digest(DigestAlgorithm::Sha1, abc)), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            hex(&digest(DigestAlgorithm::Sha256, abc)),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&digest(DigestAlgorithm::Sha384, abc)),
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"
        );
        assert_eq!(
            hex(&digest(DigestAlgorithm::Sha512, abc)),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
    }

    #[test]
    fn hmac_sha_family_matches_rfc_4231_case_1_and_rfc_2202() {
        let key = [0x0b; 20];
        assert_eq!(
            hex(&hmac(DigestAlgorithm::Sha256, &key, b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex(&hmac(DigestAlgorithm::Sha384, &key, b"Hi There")),
            "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6"
        );
        assert_eq!(
            hex(&hmac(DigestAlgorithm::Sha512, &key, b"Hi There")),
            "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cdedaa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"
        );
        assert_eq!(
            hex(&hmac(DigestAlgorithm::Sha1, &key, b"Hi There")),
            "b617318655057264e28bc0b6fb378c8ef146be00"
        );
    }

    #[test]
    fn names_are_read_in_node_and_web_spellings_only() {
        assert_eq!(DigestAlgorithm::from_name("SHA-256"), Some(DigestAlgorithm::Sha256));
        assert_eq!(DigestAlgorithm::from_name("sha1"), Some(DigestAlgorithm::Sha1));
        assert_eq!(DigestAlgorithm::from_name("MD5"), Some(DigestAlgorithm::Md5));
        assert_eq!(DigestAlgorithm::from_name("sha224"), None);
        assert_eq!(DigestAlgorithm::from_name("whirlpool"), None);
        for a in [DigestAlgorithm::Md5, DigestAlgorithm::Sha1, DigestAlgorithm::Sha512] {
            assert_eq!(DigestAlgorithm::from_name(&a.to_string()), Some(a));
            assert_eq!(digest(a, b"x").len(), a.output_len());
        }
    }
}
