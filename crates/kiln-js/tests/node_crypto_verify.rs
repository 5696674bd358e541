//! Signature verification in `node:crypto` and Web Crypto, the way apps
//! check the tokens identity providers send them (`jws`, `jsonwebtoken`,
//! `jose`): keys as PEM, PKCS#1, certificates and JWKs; RS256, PS256 and
//! ES256; and the refusals (malformed keys, small keys, signing).
//!
//! The keys, signatures and tokens in `data/verify-vectors.json` were made
//! with Node 20 (`crypto.generateKeyPairSync`, `crypto.sign`, `openssl req
//! -x509` for the certificates); each body below gives the same answers in
//! Node, so the expected values are Node's, except where Kiln refuses what
//! Node would do: signing, RSA keys under 2048 bits, digests and salt
//! lengths ring does not verify with (errors there are Kiln's own).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use common::{App, FakeHost, INDEX, err, ok, run_index};
use kiln_js::Program;
use serde_json::{Value, json};

const VECTORS: &str = include_str!("data/verify-vectors.json");

fn program(code: &str) -> &'static Program {
    App::new()
        .esm(INDEX, code)
        .import(INDEX, "crypto", "builtin:node:crypto")
        .import(INDEX, "node:crypto", "builtin:node:crypto")
        .load()
}

fn invoke(body: &str) -> kiln_ipc::Outcome {
    // `v` is the vectors file; `crypto` is Node's module.
    let code = format!(
        "export async function run(v) {{\nconst crypto = require('crypto');\nconst msg = Buffer.from(v.message);\n{body}\n}}"
    );
    let vectors: Value = serde_json::from_str(VECTORS).unwrap();
    run_index(program(&code), "run", &vectors, &json!({}), FakeHost::silent()).0
}

fn eval(body: &str) -> Value {
    ok(invoke(body))
}

#[test]
fn rs256_verifies_with_spki_pkcs1_certificate_and_jwk_keys() {
    let got = eval(
        r#"const check = (key, alg = 'RSA-SHA256', sig = v.rs256) =>
             crypto.createVerify(alg).update(v.message).verify(key, sig, 'base64');
           return {
             spki: check(v.rsaSpkiPem),
             spkiBuffer: check(Buffer.from(v.rsaSpkiPem)),
             pkcs1: check(v.rsaPkcs1Pem),
             certificate: check(v.rsaCertificate),
             jwk: check({ key: v.rsaJwk, format: 'jwk' }),
             keyObject: check(crypto.createPublicKey(v.rsaSpkiPem)),
             der: check(crypto.createPublicKey({ key: crypto.createPublicKey(v.rsaSpkiPem).export({ format: 'der', type: 'spki' }), format: 'der', type: 'spki' })),
             pkcs1Der: check({ key: crypto.createPublicKey(v.rsaPkcs1Pem).export({ format: 'der', type: 'pkcs1' }), format: 'der', type: 'pkcs1' }),
             names: ['sha256', 'SHA256', 'RSA-SHA256', 'sha256WithRSAEncryption'].map((n) => check(v.rsaSpkiPem, n)),
             sha512: check(v.rsaSpkiPem, 'RSA-SHA512', v.rs512),
             wrongDigest: check(v.rsaSpkiPem, 'RSA-SHA384'),
             inParts: crypto.createVerify('sha256').update(v.message.slice(0, 4)).update(Buffer.from(v.message.slice(4))).verify(v.rsaSpkiPem, Buffer.from(v.rs256, 'base64')),
             oneShot: crypto.verify('sha256', msg, v.rsaPkcs1Pem, Buffer.from(v.rs256, 'base64')),
             oneShotNull: crypto.verify(null, msg, v.rsaCertificate, Buffer.from(v.rs256, 'base64')),
             tampered: crypto.verify('sha256', Buffer.from(v.message + '!'), v.rsaSpkiPem, Buffer.from(v.rs256, 'base64')),
           };"#,
    );
    assert_eq!(
        got,
        json!({
            "spki": true, "spkiBuffer": true, "pkcs1": true, "certificate": true, "jwk": true,
            "keyObject": true, "der": true, "pkcs1Der": true, "names": [true, true, true, true],
            "sha512": true, "wrongDigest": false, "inParts": true, "oneShot": true, "oneShotNull": true,
            "tampered": false,
        })
    );
}

#[test]
fn a_signature_under_another_key_is_false_not_an_error() {
    let got = eval(
        r#"const sig = Buffer.from(v.rs256, 'base64');
           return {
             otherRsa: crypto.verify('sha256', msg, v.otherRsaPem, sig),
             ecKey: crypto.verify('sha256', msg, v.ecSpkiPem, sig),
             rsaKeyEcSig: crypto.verify('sha256', msg, v.rsaSpkiPem, Buffer.from(v.es256Der, 'base64')),
             empty: crypto.verify('sha256', msg, v.rsaSpkiPem, Buffer.alloc(0)),
           };"#,
    );
    assert_eq!(got, json!({"otherRsa": false, "ecKey": false, "rsaKeyEcSig": false, "empty": false}));
}

#[test]
fn rsa_pss_verifies_with_a_digest_long_salt() {
    let got = eval(
        r#"const { RSA_PKCS1_PSS_PADDING, RSA_PSS_SALTLEN_DIGEST } = crypto.constants;
           const sig = Buffer.from(v.ps256, 'base64');
           let longSalt;
           try { crypto.verify('sha256', msg, { key: v.rsaSpkiPem, padding: RSA_PKCS1_PSS_PADDING, saltLength: 222 }, sig); }
           catch (e) { longSalt = [e.name, e.message]; }
           return {
             digestSalt: crypto.verify('sha256', msg, { key: v.rsaSpkiPem, padding: RSA_PKCS1_PSS_PADDING, saltLength: RSA_PSS_SALTLEN_DIGEST }, sig),
             explicitSalt: crypto.createVerify('RSA-SHA256').update(msg).verify({ key: crypto.createPublicKey(v.rsaSpkiPem), padding: RSA_PKCS1_PSS_PADDING, saltLength: 32 }, v.ps256, 'base64'),
             jwkKey: crypto.verify('sha256', msg, { key: v.rsaJwk, format: 'jwk', padding: RSA_PKCS1_PSS_PADDING }, sig),
             asPkcs1: crypto.verify('sha256', msg, v.rsaSpkiPem, sig),
             pkcs1AsPss: crypto.verify('sha256', msg, { key: v.rsaSpkiPem, padding: RSA_PKCS1_PSS_PADDING }, Buffer.from(v.rs256, 'base64')),
             longSalt,
           };"#,
    );
    assert_eq!(
        got,
        json!({
            "digestSalt": true, "explicitSalt": true, "jwkKey": true, "asPkcs1": false, "pkcs1AsPss": false,
            "longSalt": [
                "NotSupportedError",
                "crypto.verify with an RSA-PSS saltLength of 222 (Kiln verifies a salt as long as the digest: 32, or RSA_PSS_SALTLEN_DIGEST) is not supported by Kiln yet",
            ],
        })
    );
}

#[test]
fn ecdsa_p256_verifies_der_by_default_and_ieee_p1363_when_asked() {
    let got = eval(
        r#"const der = Buffer.from(v.es256Der, 'base64');
           const p1363 = Buffer.from(v.es256P1363, 'base64');
           const key = crypto.createPublicKey({ key: v.ecJwk, format: 'jwk' });
           return {
             der: crypto.verify('sha256', msg, v.ecSpkiPem, der),
             p1363: crypto.verify('sha256', msg, { key: v.ecSpkiPem, dsaEncoding: 'ieee-p1363' }, p1363),
             p1363AsDer: crypto.verify('sha256', msg, v.ecSpkiPem, p1363),
             derAsP1363: crypto.verify('sha256', msg, { key: v.ecSpkiPem, dsaEncoding: 'ieee-p1363' }, der),
             jwk: crypto.verify('sha256', msg, key, der),
             certificate: crypto.createVerify('SHA256').update(v.message).verify(v.ecCertificate, v.es256Der, 'base64'),
             type: key.asymmetricKeyType,
             details: key.asymmetricKeyDetails,
             jwkBack: key.export({ format: 'jwk' }),
             pem: key.export({ format: 'pem', type: 'spki' }) === v.ecSpkiPem,
           };"#,
    );
    let vectors: Value = serde_json::from_str(VECTORS).unwrap();
    assert_eq!(
        got,
        json!({
            "der": true, "p1363": true, "p1363AsDer": false, "derAsP1363": false, "jwk": true, "certificate": true,
            "type": "ec", "details": {"namedCurve": "prime256v1"}, "jwkBack": vectors["ecJwk"], "pem": true,
        })
    );
}

#[test]
fn an_rs256_jwt_verifies_the_way_jws_checks_it() {
    // jws/jwa: the signing input is `header.payload`, the signature is
    // base64url turned into base64, and the verifier is `RSA-SHA256`.
    let got = eval(
        r#"const jwaVerify = (token, key, bits = 256) => {
             const [header, payload, signature] = token.split('.');
             let base64 = signature.replace(/-/g, '+').replace(/_/g, '/');
             while (base64.length % 4) base64 += '=';
             return crypto.createVerify('RSA-SHA' + bits).update(`${header}.${payload}`).verify(key, base64, 'base64');
           };
           const [h, p, s] = v.jwt.split('.');
           const forged = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p, 'base64url').toString()), sub: 'admin' })).toString('base64url');
           const [eh, ep, es] = v.es256Jwt.split('.');
           return {
             pem: jwaVerify(v.jwt, v.rsaSpkiPem),
             keyObject: jwaVerify(v.jwt, crypto.createPublicKey({ key: v.rsaJwk, format: 'jwk' })),
             certificate: jwaVerify(v.jwt, v.rsaCertificate),
             forgedPayload: jwaVerify(`${h}.${forged}.${s}`, v.rsaSpkiPem),
             wrongKey: jwaVerify(v.jwt, v.otherRsaPem),
             claims: JSON.parse(Buffer.from(p, 'base64url').toString()).sub,
             es256: crypto.verify('sha256', Buffer.from(`${eh}.${ep}`), { key: v.ecJwk, format: 'jwk', dsaEncoding: 'ieee-p1363' }, Buffer.from(es, 'base64url')),
           };"#,
    );
    assert_eq!(
        got,
        json!({
            "pem": true, "keyObject": true, "certificate": true, "forgedPayload": false, "wrongKey": false,
            "claims": "org/0e1f/project/42/user/7", "es256": true,
        })
    );
}

#[test]
fn public_key_objects_describe_and_export_themselves_as_node_does() {
    let got = eval(
        r#"const key = crypto.createPublicKey(v.rsaCertificate);
           const d = key.asymmetricKeyDetails;
           return {
             type: key.type,
             asymmetricKeyType: key.asymmetricKeyType,
             details: [d.modulusLength, typeof d.publicExponent, String(d.publicExponent)],
             spkiPem: key.export({ type: 'spki', format: 'pem' }) === v.rsaSpkiPem,
             pkcs1Pem: key.export({ type: 'pkcs1', format: 'pem' }) === v.rsaPkcs1Pem,
             der: key.export({ type: 'spki', format: 'der' }).length,
             jwk: key.export({ format: 'jwk' }),
             equals: key.equals(crypto.createPublicKey({ key: v.rsaJwk, format: 'jwk' })),
             notEquals: key.equals(crypto.createPublicKey(v.otherRsaPem)),
             instance: key instanceof crypto.KeyObject,
             again: (() => { try { crypto.createPublicKey({ key }); } catch (e) { return [e.code, e.message]; } })(),
           };"#,
    );
    let vectors: Value = serde_json::from_str(VECTORS).unwrap();
    assert_eq!(
        got,
        json!({
            "type": "public", "asymmetricKeyType": "rsa", "details": [2048, "bigint", "65537"],
            "spkiPem": true, "pkcs1Pem": true, "der": 294, "jwk": vectors["rsaJwk"],
            "equals": true, "notEquals": false, "instance": true,
            "again": ["ERR_CRYPTO_INVALID_KEY_OBJECT_TYPE", "Invalid key object type public, expected private."],
        })
    );
}

#[test]
fn malformed_and_refused_keys_throw_saying_what_is_wrong() {
    let got = eval(
        r#"const caught = (f) => { try { f(); return 'no error'; } catch (e) { return [e.name, e.code, e.message]; } };
           const sig = Buffer.from(v.rs256, 'base64');
           const truncated = v.rsaSpkiPem.replace(/\n[^\n]*\n-----END/, '\n-----END');
           return {
             notAKey: caught(() => crypto.createPublicKey('not a key')),
             truncated: caught(() => crypto.verify('sha256', msg, truncated, sig)),
             privateKey: caught(() => crypto.createPublicKey('-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n')),
             small: caught(() => crypto.verify('sha256', msg, v.rsa1024Pem, Buffer.from(v.rsa1024Sig, 'base64'))),
             secret: caught(() => crypto.verify('sha256', msg, crypto.createSecretKey(Buffer.from('k')), sig)),
             digest: caught(() => crypto.createVerify('sha224')),
             jwk: caught(() => crypto.createPublicKey({ key: { kty: 'RSA', n: 'AQAB' }, format: 'jwk' })),
             es512: caught(() => crypto.verify('sha512', msg, v.ecSpkiPem, sig)),
           };"#,
    );
    assert_eq!(
        got,
        json!({
            "notAKey": ["Error", "ERR_KILN_INVALID_KEY", "the public key is malformed: the text is not PEM (no \"-----BEGIN ...-----\" line)"],
            "truncated": ["Error", "ERR_KILN_INVALID_KEY", "the public key is malformed: SubjectPublicKeyInfo is truncated"],
            "privateKey": ["NotSupportedError", "NOT_SUPPORTED", "this is a private key (PEM PRIVATE KEY); Kiln verifies signatures with public keys but does not use private keys: pass the public key or a certificate"],
            "small": ["NotSupportedError", "NOT_SUPPORTED", "the RSA key has 1024 bits; Kiln verifies only with RSA keys of 2048 to 8192 bits, because shorter ones can be broken"],
            "secret": ["TypeError", "ERR_CRYPTO_INVALID_KEY_OBJECT_TYPE", "Invalid key object type secret, expected private or public."],
            "digest": ["TypeError", "ERR_CRYPTO_INVALID_DIGEST", "Invalid digest"],
            "jwk": ["Error", "ERR_KILN_INVALID_KEY", "the public key is malformed: the JWK has no \"e\" (a base64url string)"],
            "es512": ["NotSupportedError", "NOT_SUPPORTED", "ECDSA on P-256 with sha512 (Kiln verifies sha256 and sha384) is not supported by Kiln"],
        })
    );
}

#[test]
fn signing_with_asymmetric_keys_is_refused_saying_kiln_only_verifies() {
    for call in [
        "crypto.createSign('RSA-SHA256')",
        "crypto.sign('sha256', msg, v.rsaSpkiPem)",
        "crypto.createPrivateKey('-----BEGIN PRIVATE KEY-----')",
    ] {
        let e = err(invoke(&format!("{call};")));
        let what = call.split('(').next().unwrap();
        assert_eq!(
            e.message,
            format!(
                "NotSupportedError: {what} is not supported: Kiln verifies signatures with public keys but does not sign with asymmetric (private) keys"
            ),
            "{call}"
        );
    }
}

#[test]
fn web_crypto_imports_spki_and_jwk_public_keys_and_verifies() {
    let got = eval(
        r#"const { subtle } = crypto.webcrypto;
           const spki = crypto.createPublicKey(v.rsaSpkiPem).export({ format: 'der', type: 'spki' });
           const data = new TextEncoder().encode(v.message);
           const rs = await subtle.importKey('spki', spki, { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, true, ['verify']);
           const ps = await subtle.importKey('jwk', v.rsaJwk, { name: 'RSA-PSS', hash: { name: 'SHA-256' } }, false, ['verify']);
           const es = await subtle.importKey('jwk', v.ecJwk, { name: 'ECDSA', namedCurve: 'P-256' }, true, ['verify']);
           const b = (text) => Buffer.from(text, 'base64');
           let signUsage, wrongCurve;
           try { await subtle.importKey('spki', spki, { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, true, ['sign']); } catch (e) { signUsage = e.name; }
           try { await subtle.importKey('jwk', v.ecJwk, { name: 'ECDSA', namedCurve: 'P-384' }, true, ['verify']); } catch (e) { wrongCurve = e.name; }
           return {
             rs: await subtle.verify('RSASSA-PKCS1-v1_5', rs, b(v.rs256), data),
             rsTampered: await subtle.verify('RSASSA-PKCS1-v1_5', rs, b(v.rs256), new TextEncoder().encode('other')),
             ps: await subtle.verify({ name: 'RSA-PSS', saltLength: 32 }, ps, b(v.ps256), data),
             es: await subtle.verify({ name: 'ECDSA', hash: 'SHA-256' }, es, b(v.es256P1363), data),
             esDer: await subtle.verify({ name: 'ECDSA', hash: 'SHA-256' }, es, b(v.es256Der), data),
             rsAlgorithm: [rs.type, rs.algorithm.name, rs.algorithm.modulusLength, Array.from(rs.algorithm.publicExponent), rs.algorithm.hash.name],
             esAlgorithm: es.algorithm,
             exported: Buffer.from(await subtle.exportKey('spki', rs)).equals(spki),
             exportedJwk: (await subtle.exportKey('jwk', es)).x === v.ecJwk.x,
             keyObject: [crypto.KeyObject.from(rs).asymmetricKeyType, crypto.verify('sha256', msg, rs, b(v.rs256))],
             signUsage,
             wrongCurve,
           };"#,
    );
    assert_eq!(
        got,
        json!({
            "rs": true, "rsTampered": false, "ps": true, "es": true, "esDer": false,
            "rsAlgorithm": ["public", "RSASSA-PKCS1-v1_5", 2048, [1, 0, 1], "SHA-256"],
            "esAlgorithm": {"name": "ECDSA", "namedCurve": "P-256"},
            "exported": true, "exportedJwk": true, "keyObject": ["rsa", true], "signUsage": "SyntaxError", "wrongCurve": "DataError",
        })
    );
}
