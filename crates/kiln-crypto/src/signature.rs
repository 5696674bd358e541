//! Verifying signatures with public keys, for app code: Node's
//! `crypto.createVerify`/`crypto.verify`/`crypto.createPublicKey` and Web
//! Crypto's `subtle.verify` in Kiln's engine are built on this, so that apps
//! can check RS256, PS256 and ES256 tokens from identity providers.
//!
//! Keys arrive as untrusted bytes (PEM text, DER, JWK fields) and become a
//! [`PublicKey`] in one place each ([`PublicKey::from_pem`],
//! [`PublicKey::from_spki_der`], [`PublicKey::from_pkcs1_der`],
//! [`PublicKey::from_jwk`]); everything past that sees only its components.
//! The DER reader below is deliberately small: it reads exactly the shapes of
//! SubjectPublicKeyInfo, PKCS#1 `RSAPublicKey` and an X.509 certificate's
//! path to its key, checks every length against what is left, and refuses
//! anything else by name.
//!
//! It deliberately does not sign (Kiln holds no private keys for apps), read
//! private keys, or judge certificates: a certificate is only a wrapper for
//! its key here, its signature, validity and chain are not checked, as in
//! Node's `createPublicKey`. Verification is `ring`'s, so its limits are
//! Kiln's: RSA moduli of 2048 to 8192 bits, RSA-PSS with a salt as long as
//! the digest, ECDSA on P-256 and P-384 with SHA-256 or SHA-384.

use std::fmt;

use base64::Engine;
use serde::Deserialize;

use crate::digest::DigestAlgorithm;

/// Most bytes of key text, DER or JWK JSON one call may parse. A certificate
/// with the usual extensions is 1 to 3 KiB and an 8192-bit RSA key about
/// 1.1 KiB; the limit stops an app from making the host parse (and this crate
/// copy) megabytes in the name of a key.
pub const MAX_KEY_INPUT_BYTES: usize = 64 * 1024;

/// The smallest RSA modulus `ring` verifies with; smaller keys are breakable.
pub const MIN_RSA_BITS: usize = 2048;

/// The largest RSA modulus `ring` verifies with; larger ones only cost time.
pub const MAX_RSA_BITS: usize = 8192;

/// Why a key or signature could not be used. A signature that simply does
/// not verify is not an error: [`PublicKey::verify`] returns `Ok(false)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The input is not a well-formed key of a kind Kiln reads.
    #[error("the public key is malformed: {0}")]
    Malformed(String),
    /// The input is a private key.
    #[error(
        "this is a private key ({0}); Kiln verifies signatures with public keys but does not use private keys: pass the public key or a certificate"
    )]
    PrivateKey(String),
    /// Well-formed, but a kind of key Kiln does not verify with.
    #[error("{0} keys are not supported by Kiln (it verifies with RSA and EC P-256/P-384 public keys)")]
    UnsupportedKey(String),
    /// An RSA modulus below [`MIN_RSA_BITS`].
    #[error(
        "the RSA key has {bits} bits; Kiln verifies only with RSA keys of 2048 to 8192 bits, because shorter ones can be broken"
    )]
    RsaKeyTooSmall { bits: usize },
    /// An RSA modulus above [`MAX_RSA_BITS`].
    #[error("the RSA key has {bits} bits; Kiln verifies only with RSA keys of 2048 to 8192 bits")]
    RsaKeyTooLarge { bits: usize },
    /// An RSA public exponent `ring` does not accept.
    #[error("the RSA public exponent must be odd and between 3 and 2^33-1")]
    RsaExponent,
    /// A digest, padding or curve combination Kiln does not verify.
    #[error("{0} is not supported by Kiln")]
    UnsupportedAlgorithm(String),
    /// More than [`MAX_KEY_INPUT_BYTES`] of key input.
    #[error("the key is {0} bytes; Kiln reads keys of at most 65536 bytes")]
    TooLarge(usize),
}

impl SignatureError {
    /// Whether the input is well-formed but asks for something Kiln refuses
    /// to do (a kind or size of key, an algorithm), as opposed to being
    /// malformed.
    pub fn is_unsupported(&self) -> bool {
        !matches!(self, Self::Malformed(_))
    }
}

/// An elliptic curve Kiln verifies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcCurve {
    P256,
    P384,
}

impl EcCurve {
    /// The JWK and Web Crypto name (`P-256`).
    pub fn jwk_name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
        }
    }

    /// The name Node reports in `asymmetricKeyDetails.namedCurve`.
    pub fn openssl_name(self) -> &'static str {
        match self {
            Self::P256 => "prime256v1",
            Self::P384 => "secp384r1",
        }
    }

    /// Bytes in one coordinate, and in each half of an IEEE P1363 signature.
    pub fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }

    fn oid(self) -> &'static [u8] {
        match self {
            Self::P256 => OID_P256,
            Self::P384 => OID_P384,
        }
    }

    fn from_jwk_name(name: &str) -> Result<Self, SignatureError> {
        match name {
            "P-256" => Ok(Self::P256),
            "P-384" => Ok(Self::P384),
            "P-521" | "secp256k1" => Err(SignatureError::UnsupportedKey(format!("EC {name}"))),
            other => Err(SignatureError::Malformed(format!("unknown JWK curve {:?}", shorten(other)))),
        }
    }
}

/// How an RSA signature is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaPadding {
    /// PKCS#1 v1.5 (RS256 and friends; Node's default).
    Pkcs1v15,
    /// RSA-PSS with MGF1 over the same digest and a salt as long as the
    /// digest (PS256 and friends).
    Pss,
}

/// How an ECDSA signature's two numbers are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcdsaEncoding {
    /// A DER `SEQUENCE { r INTEGER, s INTEGER }` (Node's default).
    Der,
    /// `r || s`, each as long as a coordinate (JWT's ES256, Web Crypto).
    P1363,
}

/// A verification algorithm, fitted to a key by [`SignatureScheme::for_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureScheme {
    Rsa { padding: RsaPadding, digest: DigestAlgorithm },
    Ecdsa { digest: DigestAlgorithm, encoding: EcdsaEncoding },
}

impl SignatureScheme {
    /// The scheme Node uses for `key` given the digest and the options that
    /// apply to its kind: padding for RSA keys, encoding for EC keys.
    pub fn for_key(
        key: &PublicKey,
        digest: DigestAlgorithm,
        padding: RsaPadding,
        encoding: EcdsaEncoding,
    ) -> Self {
        match key.material {
            Material::Rsa { .. } => Self::Rsa { padding, digest },
            Material::Ec { .. } => Self::Ecdsa { digest, encoding },
        }
    }
}

/// What kind of key a [`PublicKey`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Rsa,
    Ec,
}

impl KeyType {
    /// Node's `asymmetricKeyType`.
    pub fn node_name(self) -> &'static str {
        match self {
            Self::Rsa => "rsa",
            Self::Ec => "ec",
        }
    }
}

/// A parsed public key: an RSA modulus and exponent, or a point on a curve.
/// Only the parsers in this module make one.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    material: Material,
}

#[derive(Clone, PartialEq, Eq)]
enum Material {
    /// Big-endian, without leading zeros, both non-zero.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Uncompressed: `04 || x || y`, each coordinate the curve's length.
    Ec { curve: EcCurve, point: Vec<u8> },
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.material {
            Material::Rsa { .. } => write!(f, "PublicKey(RSA {} bits)", self.rsa_modulus_bits().unwrap_or(0)),
            Material::Ec { curve, .. } => write!(f, "PublicKey(EC {})", curve.jwk_name()),
        }
    }
}

/// The fields of a JSON Web Key that name a public key; others (`kid`,
/// `alg`, `use`, the private `d`, ...) are ignored, as Node does.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Jwk {
    pub kty: Option<String>,
    pub n: Option<String>,
    pub e: Option<String>,
    pub crv: Option<String>,
    pub x: Option<String>,
    pub y: Option<String>,
}

impl PublicKey {
    /// The first PEM block of `text`: `PUBLIC KEY` (SubjectPublicKeyInfo),
    /// `RSA PUBLIC KEY` (PKCS#1) or `CERTIFICATE` (its subject's key).
    pub fn from_pem(text: &str) -> Result<Self, SignatureError> {
        check_size(text.len())?;
        let (label, der) = pem_block(text)?;
        match label {
            "PUBLIC KEY" => Self::from_spki_der(&der),
            "RSA PUBLIC KEY" => Self::from_pkcs1_der(&der),
            "CERTIFICATE" | "X509 CERTIFICATE" => Self::from_certificate_der(&der),
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => {
                Err(SignatureError::PrivateKey(format!("PEM {label}")))
            }
            other => Err(SignatureError::Malformed(format!(
                "PEM \"{}\" is not a public key or certificate (Kiln reads PUBLIC KEY, RSA PUBLIC KEY and CERTIFICATE)",
                shorten(other)
            ))),
        }
    }

    /// A DER SubjectPublicKeyInfo (`openssl pkey -pubout -outform der`).
    pub fn from_spki_der(der: &[u8]) -> Result<Self, SignatureError> {
        check_size(der.len())?;
        let mut outer = Der::new(der);
        let mut spki = Der::new(outer.read(SEQUENCE, "SubjectPublicKeyInfo")?);
        outer.finish("SubjectPublicKeyInfo")?;
        let mut algorithm = Der::new(spki.read(SEQUENCE, "AlgorithmIdentifier")?);
        let key_bits = bit_string(spki.read(BIT_STRING, "subjectPublicKey")?)?;
        spki.finish("SubjectPublicKeyInfo")?;
        let oid = algorithm.read(OID, "algorithm")?;
        match oid {
            OID_RSA_ENCRYPTION => {
                // The parameters are NULL, or (leniently, as OpenSSL) absent.
                if !algorithm.is_empty() {
                    let null = algorithm.read(NULL, "rsaEncryption parameters")?;
                    if !null.is_empty() {
                        return Err(malformed("rsaEncryption parameters are not NULL"));
                    }
                }
                algorithm.finish("AlgorithmIdentifier")?;
                Self::from_pkcs1_der(key_bits)
            }
            OID_EC_PUBLIC_KEY => {
                let curve = match algorithm.read(OID, "named curve") {
                    Ok(OID_P256) => EcCurve::P256,
                    Ok(OID_P384) => EcCurve::P384,
                    Ok(OID_P521) => return Err(SignatureError::UnsupportedKey("EC P-521".into())),
                    Ok(OID_SECP256K1) => return Err(SignatureError::UnsupportedKey("EC secp256k1".into())),
                    Ok(_) => return Err(SignatureError::UnsupportedKey("EC keys on this curve".into())),
                    Err(_) => {
                        return Err(SignatureError::UnsupportedKey(
                            "EC keys with explicit curve parameters".into(),
                        ));
                    }
                };
                algorithm.finish("AlgorithmIdentifier")?;
                Self::ec(curve, key_bits.to_vec())
            }
            OID_RSASSA_PSS => Err(SignatureError::UnsupportedKey(
                "RSASSA-PSS-restricted (use an rsaEncryption key with PSS padding)".into(),
            )),
            OID_ED25519 => Err(SignatureError::UnsupportedKey("Ed25519".into())),
            OID_ED448 => Err(SignatureError::UnsupportedKey("Ed448".into())),
            OID_DSA => Err(SignatureError::UnsupportedKey("DSA".into())),
            _ => Err(SignatureError::UnsupportedKey("public key algorithm with this OID".into())),
        }
    }

    /// A DER PKCS#1 `RSAPublicKey` (`SEQUENCE { n INTEGER, e INTEGER }`).
    pub fn from_pkcs1_der(der: &[u8]) -> Result<Self, SignatureError> {
        check_size(der.len())?;
        let mut outer = Der::new(der);
        let mut fields = Der::new(outer.read(SEQUENCE, "RSAPublicKey")?);
        outer.finish("RSAPublicKey")?;
        let n = positive_integer(fields.read(INTEGER, "modulus")?, "modulus")?;
        let e = positive_integer(fields.read(INTEGER, "publicExponent")?, "publicExponent")?;
        fields.finish("RSAPublicKey")?;
        Ok(Self { material: Material::Rsa { n: n.to_vec(), e: e.to_vec() } })
    }

    /// The subject's key of a DER X.509 certificate. The certificate itself
    /// is not checked: not its signature, dates or issuer.
    pub fn from_certificate_der(der: &[u8]) -> Result<Self, SignatureError> {
        check_size(der.len())?;
        let mut outer = Der::new(der);
        let mut certificate = Der::new(outer.read(SEQUENCE, "Certificate")?);
        outer.finish("Certificate")?;
        let mut tbs = Der::new(certificate.read(SEQUENCE, "tbsCertificate")?);
        if tbs.peek_tag() == Some(CONTEXT_0) {
            tbs.read(CONTEXT_0, "version")?;
        }
        tbs.read(INTEGER, "serialNumber")?;
        tbs.read(SEQUENCE, "signature")?;
        tbs.read(SEQUENCE, "issuer")?;
        tbs.read(SEQUENCE, "validity")?;
        tbs.read(SEQUENCE, "subject")?;
        Self::from_spki_der(tbs.read_whole(SEQUENCE, "subjectPublicKeyInfo")?)
    }

    /// A JSON Web Key: `kty` `RSA` with `n` and `e`, or `EC` with `crv`
    /// (`P-256`, `P-384`), `x` and `y`, all base64url.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, SignatureError> {
        let field = |value: &Option<String>, name: &str| -> Result<Vec<u8>, SignatureError> {
            let text = value
                .as_deref()
                .ok_or_else(|| malformed(&format!("the JWK has no \"{name}\" (a base64url string)")))?;
            check_size(text.len())?;
            base64url(text).ok_or_else(|| malformed(&format!("the JWK's \"{name}\" is not base64url")))
        };
        match jwk.kty.as_deref() {
            Some("RSA") => {
                let n = field(&jwk.n, "n")?;
                let e = field(&jwk.e, "e")?;
                let n = strip_zeros(&n);
                let e = strip_zeros(&e);
                if n.is_empty() || e.is_empty() {
                    return Err(malformed("the JWK's \"n\" and \"e\" must not be zero"));
                }
                Ok(Self { material: Material::Rsa { n: n.to_vec(), e: e.to_vec() } })
            }
            Some("EC") => {
                let curve = EcCurve::from_jwk_name(jwk.crv.as_deref().unwrap_or_default())?;
                let x = field(&jwk.x, "x")?;
                let y = field(&jwk.y, "y")?;
                if x.len() != curve.coordinate_len() || y.len() != curve.coordinate_len() {
                    return Err(malformed(&format!(
                        "the JWK's \"x\" and \"y\" must be {} bytes each on {}",
                        curve.coordinate_len(),
                        curve.jwk_name()
                    )));
                }
                let mut point = Vec::with_capacity(1 + 2 * curve.coordinate_len());
                point.push(UNCOMPRESSED_POINT);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Self::ec(curve, point)
            }
            Some("OKP") => Err(SignatureError::UnsupportedKey("OKP (Ed25519, X25519)".into())),
            Some("oct") => Err(malformed("the JWK is a secret (\"oct\") key, not a public key")),
            Some(other) => Err(malformed(&format!("unknown JWK key type {:?}", shorten(other)))),
            None => Err(malformed("the JWK has no \"kty\"")),
        }
    }

    fn ec(curve: EcCurve, point: Vec<u8>) -> Result<Self, SignatureError> {
        match point.first() {
            Some(&UNCOMPRESSED_POINT) if point.len() == 1 + 2 * curve.coordinate_len() => {
                Ok(Self { material: Material::Ec { curve, point } })
            }
            Some(2 | 3) => Err(SignatureError::UnsupportedKey("EC keys with compressed points".into())),
            _ => Err(malformed(&format!("the EC point is not an uncompressed {} point", curve.jwk_name()))),
        }
    }

    /// Whether this is an RSA or an EC key.
    pub fn key_type(&self) -> KeyType {
        match self.material {
            Material::Rsa { .. } => KeyType::Rsa,
            Material::Ec { .. } => KeyType::Ec,
        }
    }

    /// An RSA key's modulus length in bits.
    pub fn rsa_modulus_bits(&self) -> Option<usize> {
        match &self.material {
            Material::Rsa { n, .. } => Some(bit_len(n)),
            Material::Ec { .. } => None,
        }
    }

    /// An RSA key's modulus and public exponent, big-endian without leading
    /// zeros.
    pub fn rsa_components(&self) -> Option<(&[u8], &[u8])> {
        match &self.material {
            Material::Rsa { n, e } => Some((n, e)),
            Material::Ec { .. } => None,
        }
    }

    /// An EC key's curve and coordinates.
    pub fn ec_coordinates(&self) -> Option<(EcCurve, &[u8], &[u8])> {
        match &self.material {
            Material::Ec { curve, point } => {
                let coordinates = point.get(1..)?;
                let (x, y) = coordinates.split_at(curve.coordinate_len());
                Some((*curve, x, y))
            }
            Material::Rsa { .. } => None,
        }
    }

    /// The key as a DER SubjectPublicKeyInfo.
    pub fn to_spki_der(&self) -> Vec<u8> {
        let (algorithm, key) = match &self.material {
            Material::Rsa { .. } => {
                (der(SEQUENCE, &[der(OID, OID_RSA_ENCRYPTION), der(NULL, &[])].concat()), self.rsa_pkcs1())
            }
            Material::Ec { curve, point } => {
                (der(SEQUENCE, &[der(OID, OID_EC_PUBLIC_KEY), der(OID, curve.oid())].concat()), point.clone())
            }
        };
        let bits = [&[0u8][..], &key].concat();
        der(SEQUENCE, &[algorithm, der(BIT_STRING, &bits)].concat())
    }

    /// An RSA key as a DER PKCS#1 `RSAPublicKey`.
    pub fn to_pkcs1_der(&self) -> Option<Vec<u8>> {
        matches!(self.material, Material::Rsa { .. }).then(|| self.rsa_pkcs1())
    }

    fn rsa_pkcs1(&self) -> Vec<u8> {
        match &self.material {
            Material::Rsa { n, e } => der(SEQUENCE, &[der_unsigned(n), der_unsigned(e)].concat()),
            Material::Ec { .. } => Vec::new(),
        }
    }

    /// Whether `signature` is `scheme`'s signature of `message` under this
    /// key. `Ok(false)` for a signature that does not verify, whatever its
    /// shape; an error when the key or scheme is one Kiln does not verify
    /// with.
    pub fn verify(
        &self,
        scheme: SignatureScheme,
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, SignatureError> {
        use ring::signature as sig;
        match (&self.material, scheme) {
            (Material::Rsa { n, e }, SignatureScheme::Rsa { padding, digest }) => {
                let bits = bit_len(n);
                if bits < MIN_RSA_BITS {
                    return Err(SignatureError::RsaKeyTooSmall { bits });
                }
                if bits > MAX_RSA_BITS {
                    return Err(SignatureError::RsaKeyTooLarge { bits });
                }
                // ring's own limits, checked here so that a key it refuses
                // is an error rather than a signature that "does not verify".
                let exponent = e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
                if e.len() > 5 || exponent % 2 == 0 || !(3..1 << 33).contains(&exponent) {
                    return Err(SignatureError::RsaExponent);
                }
                let parameters: &'static sig::RsaParameters = match (padding, digest) {
                    (RsaPadding::Pkcs1v15, DigestAlgorithm::Sha1) => {
                        &sig::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY
                    }
                    (RsaPadding::Pkcs1v15, DigestAlgorithm::Sha256) => &sig::RSA_PKCS1_2048_8192_SHA256,
                    (RsaPadding::Pkcs1v15, DigestAlgorithm::Sha384) => &sig::RSA_PKCS1_2048_8192_SHA384,
                    (RsaPadding::Pkcs1v15, DigestAlgorithm::Sha512) => &sig::RSA_PKCS1_2048_8192_SHA512,
                    (RsaPadding::Pss, DigestAlgorithm::Sha256) => &sig::RSA_PSS_2048_8192_SHA256,
                    (RsaPadding::Pss, DigestAlgorithm::Sha384) => &sig::RSA_PSS_2048_8192_SHA384,
                    (RsaPadding::Pss, DigestAlgorithm::Sha512) => &sig::RSA_PSS_2048_8192_SHA512,
                    (RsaPadding::Pkcs1v15, other) => {
                        return Err(SignatureError::UnsupportedAlgorithm(format!(
                            "RSA PKCS#1 v1.5 with {other} (Kiln verifies sha1, sha256, sha384 and sha512)"
                        )));
                    }
                    (RsaPadding::Pss, other) => {
                        return Err(SignatureError::UnsupportedAlgorithm(format!(
                            "RSA-PSS with {other} (Kiln verifies sha256, sha384 and sha512)"
                        )));
                    }
                };
                let key = sig::RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() };
                Ok(key.verify(parameters, message, signature).is_ok())
            }
            (Material::Ec { curve, point }, SignatureScheme::Ecdsa { digest, encoding }) => {
                let (algorithm, needs_der): (&'static sig::EcdsaVerificationAlgorithm, bool) =
                    match (curve, digest, encoding) {
                        (EcCurve::P256, DigestAlgorithm::Sha256, EcdsaEncoding::Der) => {
                            (&sig::ECDSA_P256_SHA256_ASN1, false)
                        }
                        (EcCurve::P256, DigestAlgorithm::Sha256, EcdsaEncoding::P1363) => {
                            (&sig::ECDSA_P256_SHA256_FIXED, false)
                        }
                        (EcCurve::P384, DigestAlgorithm::Sha384, EcdsaEncoding::Der) => {
                            (&sig::ECDSA_P384_SHA384_ASN1, false)
                        }
                        (EcCurve::P384, DigestAlgorithm::Sha384, EcdsaEncoding::P1363) => {
                            (&sig::ECDSA_P384_SHA384_FIXED, false)
                        }
                        // ring has the mixed pairs only for DER signatures.
                        (EcCurve::P256, DigestAlgorithm::Sha384, _) => {
                            (&sig::ECDSA_P256_SHA384_ASN1, encoding == EcdsaEncoding::P1363)
                        }
                        (EcCurve::P384, DigestAlgorithm::Sha256, _) => {
                            (&sig::ECDSA_P384_SHA256_ASN1, encoding == EcdsaEncoding::P1363)
                        }
                        (curve, other, _) => {
                            return Err(SignatureError::UnsupportedAlgorithm(format!(
                                "ECDSA on {} with {other} (Kiln verifies sha256 and sha384)",
                                curve.jwk_name()
                            )));
                        }
                    };
                let converted;
                let signature = if needs_der {
                    match p1363_to_der(signature, curve.coordinate_len()) {
                        Some(der) => {
                            converted = der;
                            converted.as_slice()
                        }
                        None => return Ok(false),
                    }
                } else {
                    signature
                };
                Ok(sig::UnparsedPublicKey::new(algorithm, point).verify(message, signature).is_ok())
            }
            (Material::Rsa { .. }, SignatureScheme::Ecdsa { .. }) => {
                Err(SignatureError::UnsupportedAlgorithm("ECDSA with an RSA key".into()))
            }
            (Material::Ec { .. }, SignatureScheme::Rsa { .. }) => {
                Err(SignatureError::UnsupportedAlgorithm("RSA signatures with an EC key".into()))
            }
        }
    }
}

/// Whether `signature` is `scheme`'s signature of `message` under `key`;
/// see [`PublicKey::verify`].
pub fn verify(
    scheme: SignatureScheme,
    key: &PublicKey,
    message: &[u8],
    signature: &[u8],
) -> Result<bool, SignatureError> {
    key.verify(scheme, message, signature)
}

// ---------------------------------------------------------------- PEM

const PEM_BEGIN: &str = "-----BEGIN ";
const PEM_DASHES: &str = "-----";

/// The label and decoded body of the first PEM block in `text`.
fn pem_block(text: &str) -> Result<(&str, Vec<u8>), SignatureError> {
    let not_pem = || malformed("the text is not PEM (no \"-----BEGIN ...-----\" line)");
    let start = text.find(PEM_BEGIN).ok_or_else(not_pem)?;
    let after_begin = text.get(start + PEM_BEGIN.len()..).ok_or_else(not_pem)?;
    let label_end = after_begin.find(PEM_DASHES).ok_or_else(not_pem)?;
    let label = after_begin.get(..label_end).ok_or_else(not_pem)?;
    if label.contains(['\n', '\r']) {
        return Err(not_pem());
    }
    let body_and_rest = after_begin.get(label_end + PEM_DASHES.len()..).ok_or_else(not_pem)?;
    let end_line = format!("-----END {label}-----");
    let body_end = body_and_rest
        .find(&end_line)
        .ok_or_else(|| malformed(&format!("the PEM block has no \"{}\" line", shorten(&end_line))))?;
    let body = body_and_rest.get(..body_end).ok_or_else(not_pem)?;
    if body.contains(':') {
        // RFC 1421 headers: "Proc-Type: 4,ENCRYPTED" and its like.
        return Err(malformed("the PEM block has headers (an encrypted key?); Kiln reads plain public keys"));
    }
    let compact: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| malformed("the PEM body is not base64"))?;
    Ok((label, der))
}

/// Base64url with or without padding, as JWKs are written.
fn base64url(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

// ---------------------------------------------------------------- DER

const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const NULL: u8 = 0x05;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
const CONTEXT_0: u8 = 0xa0;

const UNCOMPRESSED_POINT: u8 = 0x04;

/// 1.2.840.113549.1.1.1
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// 1.2.840.113549.1.1.10
const OID_RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
/// 1.2.840.10045.2.1
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// 1.2.840.10045.3.1.7 (prime256v1)
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// 1.3.132.0.34 (secp384r1)
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
/// 1.3.132.0.35 (secp521r1)
const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
/// 1.3.132.0.10
const OID_SECP256K1: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x0a];
/// 1.3.101.112
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
/// 1.3.101.113
const OID_ED448: &[u8] = &[0x2b, 0x65, 0x71];
/// 1.2.840.10040.4.1
const OID_DSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01];

/// Reads DER elements one after another from a slice, checking each length
/// against what is left. Only definite lengths of up to four bytes.
struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The contents of the next element, which must have `tag`.
    fn read(&mut self, tag: u8, what: &str) -> Result<&'a [u8], SignatureError> {
        self.next(tag, what).map(|(_, contents)| contents)
    }

    /// The whole encoding (tag, length and contents) of the next element.
    fn read_whole(&mut self, tag: u8, what: &str) -> Result<&'a [u8], SignatureError> {
        let before = self.rest;
        let (header, contents) = self.next(tag, what)?;
        before.get(..header + contents.len()).ok_or_else(|| malformed(&format!("{what} is truncated")))
    }

    /// The header length and contents of the next element.
    fn next(&mut self, tag: u8, what: &str) -> Result<(usize, &'a [u8]), SignatureError> {
        let truncated = || malformed(&format!("{what} is truncated"));
        let (&found, rest) = self.rest.split_first().ok_or_else(truncated)?;
        if found != tag {
            return Err(malformed(&format!("expected {what} (tag {tag:#04x}), found tag {found:#04x}")));
        }
        let (&first, mut rest) = rest.split_first().ok_or_else(truncated)?;
        let mut header = 2;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return Err(malformed(&format!("{what} has an unsupported length encoding")));
            }
            let (digits, after) = rest.split_at_checked(count).ok_or_else(truncated)?;
            rest = after;
            header += count;
            digits.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        let (contents, after) = rest.split_at_checked(len).ok_or_else(truncated)?;
        self.rest = after;
        Ok((header, contents))
    }

    /// Nothing may follow the last expected element.
    fn finish(self, what: &str) -> Result<(), SignatureError> {
        if self.rest.is_empty() { Ok(()) } else { Err(malformed(&format!("unexpected bytes after {what}"))) }
    }
}

/// A BIT STRING's bytes, which for a key must have no unused bits.
fn bit_string(contents: &[u8]) -> Result<&[u8], SignatureError> {
    match contents.split_first() {
        Some((0, bits)) => Ok(bits),
        _ => Err(malformed("the subjectPublicKey BIT STRING is not whole bytes")),
    }
}

/// A non-negative, non-zero INTEGER's magnitude, without leading zeros.
fn positive_integer<'a>(contents: &'a [u8], what: &str) -> Result<&'a [u8], SignatureError> {
    match contents.first() {
        None => Err(malformed(&format!("the RSA {what} is empty"))),
        Some(b) if b & 0x80 != 0 => Err(malformed(&format!("the RSA {what} is negative"))),
        Some(_) => {
            let magnitude = strip_zeros(contents);
            if magnitude.is_empty() {
                Err(malformed(&format!("the RSA {what} is zero")))
            } else {
                Ok(magnitude)
            }
        }
    }
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes.get(first..).unwrap_or_default()
}

/// Bits in a big-endian number without leading zero bytes.
fn bit_len(bytes: &[u8]) -> usize {
    match bytes.first() {
        Some(first) => bytes.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

/// One DER element.
fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(contents.len() + 6);
    out.push(tag);
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let digits: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | digits.len() as u8);
        out.extend_from_slice(&digits);
    }
    out.extend_from_slice(contents);
    out
}

/// A DER INTEGER holding the unsigned big-endian `magnitude`.
fn der_unsigned(magnitude: &[u8]) -> Vec<u8> {
    let magnitude = strip_zeros(magnitude);
    match magnitude.first() {
        None => der(INTEGER, &[0]),
        Some(b) if b & 0x80 != 0 => der(INTEGER, &[&[0u8][..], magnitude].concat()),
        Some(_) => der(INTEGER, magnitude),
    }
}

/// An IEEE P1363 `r || s` signature as DER, or `None` when it is not two
/// coordinates long (so it cannot verify).
fn p1363_to_der(signature: &[u8], coordinate_len: usize) -> Option<Vec<u8>> {
    if signature.len() != 2 * coordinate_len {
        return None;
    }
    let (r, s) = signature.split_at(coordinate_len);
    Some(der(SEQUENCE, &[der_unsigned(r), der_unsigned(s)].concat()))
}

fn check_size(len: usize) -> Result<(), SignatureError> {
    if len > MAX_KEY_INPUT_BYTES { Err(SignatureError::TooLarge(len)) } else { Ok(()) }
}

fn malformed(what: &str) -> SignatureError {
    SignatureError::Malformed(what.to_owned())
}

fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with Node 20 (`crypto.generateKeyPairSync`, `crypto.sign`) over
    // MESSAGE; the certificate with `openssl req -x509` from the RSA key.
    const MESSAGE: &[u8] = b"Kiln verifies what apps are sent.";
    const RSA_SPKI: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAzavBlmpEzpUYS/4vdPj/TwvkLiKtc/tMfmkAfLL3rWY3sWpscGhE7GLn8fM+mfWzDKRIAVcKFofarc8xTm2yAH8aUu7nk8bJWC5wIBrD66WFf1Y4PTBrHo2DSXbRxMaoxMQ1MleGBwwclqixBJDtuTRceavXjDKVDh0QUWa0SffCOxxJ59gkrkYBiR9WKp5jr0sseXm/Dk1mjD+l1LsugRvaMt0QT3KpDWpjyVAX7hOZgrNpH/rlOx84p7XA8UDU+qq/24FCKNs3a09gvaEHmN6tTgHACjHQPSOtnEHHA/d2NfZ54dGb4QiJsm++Ze1+WEaIix9OGyNVtEkQnb1iPQIDAQAB";
    const RSA_PKCS1_SHA256: &str = "ff62uVN9YcktJE8QOjU5r0b4ZyGkDHFtS0FbYHZu+PvxTXiAjkPJZ5tMurc9eCDhlWf9fmRSdviXQ4mje3mJI7W/cVxgg2kjo8sP+bYqv0YrQ8jQI+IJa0anSjYCTkm/ATzJp60EyyoMFpJq47cmN+erJ7Bby9ofY8kpVB+mobA3t8XfB2K9l6TX1UyxP/DI0Zfcz6yNDE031UkBkpanc0CrXlBeSq0Lc57hD1GNNhvAvka4vIqE4l/oaFVfHtKH0pzQ3W9XMVUQ+cQIHv1OKdADy8a7zT+AxZ8eIzTNeSK8O3zXnxFOS13Ylcqy7kYMiynXKyq+kW43AP6CsZwUNQ==";
    const RSA_PKCS1_SHA512: &str = "wn3gzrw56yGvyZ3roHvIUQchH2+ufIxIXBukCgQphMJyQSyOttZSfOFe48t3JMUTb1pZXgx5/Jl41znrqDNWODczUTILPIrqnjHT8wjs44fr1q7i8wD4kZfsg/y97lfO29QOHNjgDA9daeowdxfQeZ/V2mYbhDeHSTvOS+Errl6mtBwSJ3sMl3o+GHavBEpSNPM+UFT0TrusKmkWurHKwYYmGeVPhqW8g9BMODoUF7zB7v3vLcahdcUBO9nnVlhIPxzOKep4QBpDA6nZLni1il2GBVheJXDQHP4c5dDajw6+wNbZiEV4EZaMhpO52HGZVJdX5HogbA5jylvgtRN+3Q==";
    const RSA_PSS_SHA256: &str = "u8U9vZg5rz/4uEAvFlrMU40dps6zaLVH/MIVQbI7O5X7iWef9XMGpsjXKpb2fIsjIQhUKOaRpGRendoEmGvSRPGXS2+FA2WdZmie37zVwasMRogW10nCByN8ROKAnrU5WjR52J+Vpav/Yoio/xt5sYOdnGr57C8bH2Op0V4DVpFlOvdJagWHoXVuU6gixz0mDnlkL6EjVWGZkJOpLqAJiag1/w6m3/pj0w3Rw8U5fjgEa0EUAaGlIDE9mXIfsEgg6bcPVLzNxJxQEg19nM3zeGTOcqz4SkiOOOl1jp3VfiOET36qC23l8VtJ3K/4/KgAbDCnShuvrYobIJds8hv2lg==";
    const P256_SPKI: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEbm3UJ9hb32ukeAbuCiR6Rr/GC+nUk1If5kCmhqGj5HC6Ex6gkhqpnBnCti6B2IlnA36CQkzPw/+ro9nG11P/KQ==";
    const P256_DER: &str =
        "MEYCIQD9ihrSAtZd6/A1TkI2NWsSaok30k3gIbT4/fNPCHg+CgIhAJUOEg3w+vckxznnqQj0bY5VL15DFf7aihR/xhT/QE57";
    const P256_P1363: &str =
        "KykjmicvLlomjCWujBx+x0TwM/0w9e3lo7HR6AWiL8kB5k9/FYm/5m3Kq12AJBeK0R263mwyz5IQCc4nHl7I9Q==";
    const P256_SHA384_P1363: &str =
        "i1zlnARiXRF6+vC78r2l7jRTeDHOsME7dLuA96O9OeM5/GyUfya082sdNZ/U4+jNnVF4OK9uLwLCny859F7dnw==";
    const P384_SPKI: &str = "MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEsk/Dr4xDqJMjlpjUYVYFtpczjaqLwMT2aOUqtPrpgUDvrx3E9R3XJibz5bELtUerDrqZxhPjSX4X0F+ayu3HgLbfYSmlpkIoawIkfgOb+lWwjcgVmd66jm8ITuZPn0mJ";
    const P384_DER: &str = "MGYCMQDpmrye0rcpPBlgaFXW6/mPfM87nFhWLAWp2DvcjA4K7tP6UPyiDwy88ROrvyVYbkcCMQC8/shK6GlNJ2qFXiS2u/CFVue8ozgFo8DvuNx/4bacKf6AHRYKIatltFBqJp9g5bY=";
    const P384_P1363: &str = "Y/RLbvccvUdabFIpLft/U8CU7XP2ThzzJyDqAURBXkBh848nT/iXfOSVs3hOXD3wjm0ARNCkJiMSN3vCScH9hUxHJ8ijeEnZsyKZEcOjxzukWNBULdMcUt0oAV1XhGvp";
    const RSA1024_SPKI: &str = "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCl3vcdVxAEdwVH6Q51ghqQgAUbbEgHSLq8UC9eorBzVq7jqEejKTedFbOrPzNsJLzMduPT+Cv/LZEs//yt2nQuMg4A2CyW58tf/3T3KWxiBqU9Uj+AeOcUh8fKMQDgZjaUXmul1Bp19xA73d7BdsoanEzKT3Tfn4+6dpqeqYBi6wIDAQAB";
    const RSA1024_SHA256: &str = "iFU6hV7gEGShX6KClV1hoo5cnjqZgiUWDmxfOeKy4dvBjkLAs49+xfgP7RpYvjl08M3dZzNN8cFJSaeXdZtNm8QbGmfuRcJhzcY8UTJFcQm+U72LtbEDzs1tBd7+7PuwTJ9R/rsq7JvmGDL3ySWa4lwd2hgnSlb6a8CvkZF/6s0=";
    const RSA_CERTIFICATE: &str = include_str!("../tests/data/rsa-2048.crt");

    fn b64(text: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(text).unwrap()
    }

    fn spki(text: &str) -> PublicKey {
        PublicKey::from_spki_der(&b64(text)).unwrap()
    }

    fn flipped(bytes: &[u8], bit: usize) -> Vec<u8> {
        let mut out = bytes.to_vec();
        out[bit / 8] ^= 1 << (bit % 8);
        out
    }

    /// `signature` verifies; with any of a few single bits flipped, in the
    /// signature or the message, it does not.
    fn assert_verifies_and_flips_fail(key: &PublicKey, scheme: SignatureScheme, signature: &[u8]) {
        assert_eq!(key.verify(scheme, MESSAGE, signature), Ok(true), "{scheme:?}");
        for bit in [0, 7, signature.len() * 4, signature.len() * 8 - 1] {
            assert_eq!(
                key.verify(scheme, MESSAGE, &flipped(signature, bit)),
                Ok(false),
                "{scheme:?} bit {bit}"
            );
        }
        assert_eq!(key.verify(scheme, &flipped(MESSAGE, 3), signature), Ok(false), "{scheme:?} message");
    }

    const fn rsa(padding: RsaPadding, digest: DigestAlgorithm) -> SignatureScheme {
        SignatureScheme::Rsa { padding, digest }
    }

    const fn ecdsa(digest: DigestAlgorithm, encoding: EcdsaEncoding) -> SignatureScheme {
        SignatureScheme::Ecdsa { digest, encoding }
    }

    #[test]
    fn rsa_2048_pkcs1_v1_5_signatures_verify_and_altered_ones_do_not() {
        let key = spki(RSA_SPKI);
        assert_eq!(key.key_type(), KeyType::Rsa);
        assert_eq!(key.rsa_modulus_bits(), Some(2048));
        assert_verifies_and_flips_fail(
            &key,
            rsa(RsaPadding::Pkcs1v15, DigestAlgorithm::Sha256),
            &b64(RSA_PKCS1_SHA256),
        );
        assert_verifies_and_flips_fail(
            &key,
            rsa(RsaPadding::Pkcs1v15, DigestAlgorithm::Sha512),
            &b64(RSA_PKCS1_SHA512),
        );
        // The right signature under the wrong digest or padding.
        let signature = b64(RSA_PKCS1_SHA256);
        assert_eq!(
            key.verify(rsa(RsaPadding::Pkcs1v15, DigestAlgorithm::Sha384), MESSAGE, &signature),
            Ok(false)
        );
        assert_eq!(key.verify(rsa(RsaPadding::Pss, DigestAlgorithm::Sha256), MESSAGE, &signature), Ok(false));
        assert_eq!(
            key.verify(rsa(RsaPadding::Pkcs1v15, DigestAlgorithm::Sha256), MESSAGE, b"short"),
            Ok(false)
        );
    }

    #[test]
    fn rsa_pss_signatures_with_a_digest_long_salt_verify() {
        let key = spki(RSA_SPKI);
        assert_verifies_and_flips_fail(
            &key,
            rsa(RsaPadding::Pss, DigestAlgorithm::Sha256),
            &b64(RSA_PSS_SHA256),
        );
        let pkcs1 = rsa(RsaPadding::Pkcs1v15, DigestAlgorithm::Sha256);
        assert_eq!(key.verify(pkcs1, MESSAGE, &b64(RSA_PSS_SHA256)), Ok(false));
    }

    #[test]
    fn ecdsa_p256_signatures_verify_in_der_and_ieee_p1363() {
        let key = spki(P256_SPKI);
        assert_eq!(key.key_type(), KeyType::Ec);
        assert_verifies_and_flips_fail(
            &key,
            ecdsa(DigestAlgorithm::Sha256, EcdsaEncoding::Der),
            &b64(P256_DER),
        );
        assert_verifies_and_flips_fail(
            &key,
            ecdsa(DigestAlgorithm::Sha256, EcdsaEncoding::P1363),
            &b64(P256_P1363),
        );
        // Each encoding read as the other does not verify.
        let der = ecdsa(DigestAlgorithm::Sha256, EcdsaEncoding::Der);
        assert_eq!(key.verify(der, MESSAGE, &b64(P256_P1363)), Ok(false));
        let p1363 = ecdsa(DigestAlgorithm::Sha256, EcdsaEncoding::P1363);
        assert_eq!(key.verify(p1363, MESSAGE, &b64(P256_DER)), Ok(false));
    }

    #[test]
    fn ecdsa_p384_signatures_verify_in_der_and_ieee_p1363() {
        let key = spki(P384_SPKI);
        assert_eq!(
            key.ec_coordinates().map(|(c, x, y)| (c, x.len(), y.len())),
            Some((EcCurve::P384, 48, 48))
        );
        assert_verifies_and_flips_fail(
            &key,
            ecdsa(DigestAlgorithm::Sha384, EcdsaEncoding::Der),
            &b64(P384_DER),
        );
        assert_verifies_and_flips_fail(
            &key,
            ecdsa(DigestAlgorithm::Sha384, EcdsaEncoding::P1363),
            &b64(P384_P1363),
        );
    }

    #[test]
    fn p1363_signatures_with_a_digest_ring_pairs_only_with_der_are_converted() {
        // P-256 over SHA-384 exists in ring only as DER.
        let key = spki(P256_SPKI);
        assert_verifies_and_flips_fail(
            &key,
            ecdsa(DigestAlgorithm::Sha384, EcdsaEncoding::P1363),
            &b64(P256_SHA384_P1363),
        );
        // A P1363 signature of the wrong length is simply not valid.
        let key = spki(P384_SPKI);
        let scheme = ecdsa(DigestAlgorithm::Sha256, EcdsaEncoding::P1363);
        assert_eq!(key.verify(scheme, MESSAGE, &[1u8; 95]), Ok(false));
        assert_eq!(key.verify(scheme, MESSAGE, &b64(P384_P1363)), Ok(false));
        assert_eq!(
            p1363_to_der(&[[0u8; 31].as_slice(), &[0x80], &[0u8; 31], &[0x01]].concat(), 32),
            Some(vec![0x30, 0x07, 0x02, 0x02, 0x00, 0x80, 0x02, 0x01, 0x01])
        );
    }

    #[test]
    fn signatures_under_another_key_do_not_verify() {
        let p384 = spki(P384_SPKI);
        let scheme = ecdsa(DigestAlgorithm::Sha256, EcdsaEncoding::Der);
        assert_eq!(p384.verify(scheme, MESSAGE, &b64(P256_DER)), Ok(false));
        let small_signature = b64(RSA1024_SHA256);
        let rsa_key = spki(RSA_SPKI);
        let pkcs1 = rsa(RsaPadding::Pkcs1v15, DigestAlgorithm::Sha256);
        assert_eq!(rsa_key.verify(pkcs1, MESSAGE, &small_signature), Ok(false));
    }

    #[test]
    fn rsa_keys_under_2048_bits_are_refused_saying_why() {
        let key = spki(RSA1024_SPKI);
        let e = key.verify(rsa(RsaPadding::Pkcs1v15, DigestAlgorithm::Sha256), MESSAGE, &b64(RSA1024_SHA256));
        assert_eq!(e, Err(SignatureError::RsaKeyTooSmall { bits: 1024 }));
        assert!(e.unwrap_err().to_string().contains("2048 to 8192 bits"));
    }

    #[test]
    fn schemes_kiln_lacks_are_errors_not_false() {
        let e = spki(P256_SPKI).verify(ecdsa(DigestAlgorithm::Sha512, EcdsaEncoding::Der), MESSAGE, &[]);
        assert!(matches!(e, Err(SignatureError::UnsupportedAlgorithm(_))), "{e:?}");
        let e = spki(RSA_SPKI).verify(rsa(RsaPadding::Pkcs1v15, DigestAlgorithm::Md5), MESSAGE, &[]);
        assert!(matches!(e, Err(SignatureError::UnsupportedAlgorithm(_))), "{e:?}");
        let e = spki(RSA_SPKI).verify(ecdsa(DigestAlgorithm::Sha256, EcdsaEncoding::Der), MESSAGE, &[]);
        assert!(matches!(e, Err(SignatureError::UnsupportedAlgorithm(_))), "{e:?}");
    }

    #[test]
    fn the_same_key_reads_from_spki_pkcs1_pem_certificate_and_jwk() {
        let key = spki(RSA_SPKI);
        assert_eq!(key.to_spki_der(), b64(RSA_SPKI));
        let pkcs1 = key.to_pkcs1_der().unwrap();
        assert_eq!(PublicKey::from_pkcs1_der(&pkcs1).unwrap(), key);
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{RSA_SPKI}\n-----END PUBLIC KEY-----\n");
        assert_eq!(PublicKey::from_pem(&pem).unwrap(), key);
        let b64_pkcs1 = base64::engine::general_purpose::STANDARD.encode(&pkcs1);
        let pem = format!(
            "junk before\r\n-----BEGIN RSA PUBLIC KEY-----\r\n{b64_pkcs1}\r\n-----END RSA PUBLIC KEY-----"
        );
        assert_eq!(PublicKey::from_pem(&pem).unwrap(), key);
        assert_eq!(PublicKey::from_pem(RSA_CERTIFICATE).unwrap(), key);

        let (n, e) = key.rsa_components().unwrap();
        let url = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = Jwk { kty: Some("RSA".into()), n: Some(url(n)), e: Some(url(e)), ..Jwk::default() };
        assert_eq!(PublicKey::from_jwk(&jwk).unwrap(), key);
        assert_eq!(url(e), "AQAB");

        let ec = spki(P256_SPKI);
        assert_eq!(ec.to_spki_der(), b64(P256_SPKI));
        let (curve, x, y) = ec.ec_coordinates().unwrap();
        let jwk = Jwk {
            kty: Some("EC".into()),
            crv: Some(curve.jwk_name().into()),
            x: Some(url(x)),
            y: Some(url(y)),
            ..Jwk::default()
        };
        assert_eq!(PublicKey::from_jwk(&jwk).unwrap(), ec);
        assert_eq!(spki(P384_SPKI).to_spki_der(), b64(P384_SPKI));
    }

    #[test]
    fn private_keys_and_other_pem_blocks_are_refused_by_name() {
        let e =
            PublicKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----").unwrap_err();
        assert!(matches!(e, SignatureError::PrivateKey(_)));
        assert!(e.to_string().contains("does not use private keys"), "{e}");
        let e = PublicKey::from_pem("-----BEGIN DH PARAMETERS-----\nAAAA\n-----END DH PARAMETERS-----")
            .unwrap_err();
        assert!(e.to_string().contains("is not a public key or certificate"), "{e}");
        let e = PublicKey::from_pem("secret").unwrap_err();
        assert!(e.to_string().contains("is not PEM"), "{e}");
        let e = PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nMFkw").unwrap_err();
        assert!(e.to_string().contains("no \"-----END PUBLIC KEY-----\""), "{e}");
        let encrypted =
            "-----BEGIN RSA PUBLIC KEY-----\nProc-Type: 4,ENCRYPTED\n\nAAAA\n-----END RSA PUBLIC KEY-----";
        assert!(PublicKey::from_pem(encrypted).unwrap_err().to_string().contains("headers"));
    }

    #[test]
    fn truncated_or_padded_der_is_refused_at_every_length() {
        // Every prefix of each key, and each key with a byte after it: no
        // panic, and an error rather than a key.
        for text in [RSA_SPKI, P256_SPKI, P384_SPKI] {
            let der = b64(text);
            for n in 0..der.len() {
                assert!(PublicKey::from_spki_der(&der[..n]).is_err(), "{n} bytes of {text}");
            }
            assert!(PublicKey::from_spki_der(&[der.as_slice(), &[0]].concat()).is_err());
        }
        let certificate = pem_block(RSA_CERTIFICATE).unwrap().1;
        for n in 0..certificate.len() {
            assert!(PublicKey::from_certificate_der(&certificate[..n]).is_err(), "{n} certificate bytes");
        }
        // An indefinite length, a five-byte length, a length past the end.
        for bad in
            [&[0x30, 0x80, 0, 0][..], &[0x30, 0x85, 1, 0, 0, 0, 0], &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]]
        {
            assert!(PublicKey::from_spki_der(bad).is_err());
        }
    }

    #[test]
    fn keys_kiln_does_not_verify_with_are_named() {
        // An Ed25519 public key from Node; a P-521 JWK.
        let ed25519 = b64("MCowBQYDK2VwAyEAbFiV4fWXxiI63JgWHeoi8/lachEp41sG0AXatyDpffg=");
        let e = PublicKey::from_spki_der(&ed25519).unwrap_err();
        assert_eq!(e, SignatureError::UnsupportedKey("Ed25519".into()));
        assert!(e.is_unsupported());
        let jwk = Jwk { kty: Some("EC".into()), crv: Some("P-521".into()), ..Jwk::default() };
        assert_eq!(PublicKey::from_jwk(&jwk).unwrap_err(), SignatureError::UnsupportedKey("EC P-521".into()));
        let jwk = Jwk { kty: Some("RSA".into()), n: Some("AQAB".into()), ..Jwk::default() };
        assert!(PublicKey::from_jwk(&jwk).unwrap_err().to_string().contains("no \"e\""));
        let jwk = Jwk {
            kty: Some("EC".into()),
            crv: Some("P-256".into()),
            x: Some("AQAB".into()),
            y: Some("AQAB".into()),
            ..Jwk::default()
        };
        assert!(PublicKey::from_jwk(&jwk).unwrap_err().to_string().contains("32 bytes"));
        assert!(matches!(
            PublicKey::from_pem(&"A".repeat(MAX_KEY_INPUT_BYTES + 1)),
            Err(SignatureError::TooLarge(_))
        ));
    }
}
