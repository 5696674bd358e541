//! Node's built-in modules as Kiln offers them (crypto, buffer, util, events,
//! path, querystring, url, assert, string_decoder, timers, process, stream),
//! checked against known-answer vectors and Node's documented outputs; and
//! the modules a sandbox must not offer, refused with Kiln's alternative.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use common::{App, FakeHost, INDEX, err, ok, run_index};
use kiln_ipc::{LogLevel, Outcome};
use kiln_js::Program;
use serde_json::{Value, json};

/// Every Node module name an app may import, bare and `node:`-prefixed, as
/// the bundler maps them: all to `node:<name>`.
const NODE_NAMES: [&str; 20] = [
    "buffer",
    "crypto",
    "util",
    "util/types",
    "events",
    "url",
    "querystring",
    "path",
    "path/posix",
    "assert",
    "assert/strict",
    "string_decoder",
    "timers",
    "timers/promises",
    "process",
    "stream",
    "fs",
    "child_process",
    "os",
    "net",
];

/// An app of one ES module, `src/index.js`, that may import or require any
/// Node module name.
fn program(code: &str) -> &'static Program {
    NODE_NAMES
        .iter()
        .fold(App::new().esm(INDEX, code), |app, name| {
            let builtin = format!("builtin:node:{name}");
            app.import(INDEX, name, &builtin).import(INDEX, &format!("node:{name}"), &builtin)
        })
        .load()
}

/// Run `code`'s `run` export against a host that answers no calls.
fn invoke(code: &str) -> (Outcome, FakeHost) {
    run_index(program(code), "run", &json!({}), &json!({}), FakeHost::silent())
}

/// Run `export async function run()` with `body` and return its result.
fn eval(body: &str) -> Value {
    let code = format!("export async function run() {{\n{body}\n}}");
    ok(invoke(&code).0)
}

fn eval_err(body: &str) -> kiln_ipc::InvocationError {
    let code = format!("export async function run() {{\n{body}\n}}");
    err(invoke(&code).0)
}

// ---------------------------------------------------------------- crypto

#[test]
fn create_hash_matches_known_answer_vectors_in_hex_and_base64() {
    let got = eval(
        r#"const { createHash } = require('crypto');
           const h = (alg, enc, data = 'abc') => createHash(alg).update(data).digest(enc);
           return {
             sha1: h('sha1', 'hex'), sha1b64: h('sha1', 'base64'),
             sha256: h('sha256', 'hex'), sha256b64: h('sha256', 'base64'),
             sha512: h('sha512', 'hex'), sha512b64: h('sha512', 'base64'),
             md5: h('md5', 'hex'), md5b64: h('md5', 'base64'),
             empty: h('sha256', 'hex', ''),
             fox: h('SHA1', 'hex', 'The quick brown fox jumps over the lazy dog'),
             utf8: h('sha256', 'hex', 'héllo €'),
             chained: createHash('sha256').update('a').update(Buffer.from('b')).update('63', 'hex').digest('hex'),
             buffer: Buffer.isBuffer(createHash('md5').update('abc').digest()),
             length: createHash('sha384').update('abc').digest().length,
           };"#,
    );
    assert_eq!(
        got,
        json!({
            "sha1": "a9993e364706816aba3e25717850c26c9cd0d89d",
            "sha1b64": "qZk+NkcGgWq6PiVxeFDCbJzQ2J0=",
            "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "sha256b64": "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=",
            "sha512": "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
            "sha512b64": "3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw==",
            "md5": "900150983cd24fb0d6963f7d28e17f72",
            "md5b64": "kAFQmDzST7DWlj99KOF/cg==",
            "empty": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "fox": "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12",
            "utf8": "9cb52b6d1cfc1eae34c63c2b0ff0d49ed8ef2c82482b3c455747594c83754098",
            "chained": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "buffer": true,
            "length": 48,
        })
    );
}

#[test]
fn create_hash_refuses_unknown_algorithms_and_a_second_digest() {
    let got = eval(
        r#"const crypto = require('node:crypto');
           const caught = (f) => { try { f(); return null; } catch (e) { return [e.code, e.message]; } };
           const h = crypto.createHash('sha256');
           h.digest();
           return {
             unknown: caught(() => crypto.createHash('sha224')),
             twice: caught(() => h.digest()),
             update: caught(() => h.update('x')),
             hashes: crypto.getHashes(),
           };"#,
    );
    assert_eq!(
        got,
        json!({
            "unknown": ["ERR_CRYPTO_INVALID_DIGEST", "Digest method not supported: 'sha224' (Kiln offers md5, sha1, sha256, sha384, sha512)"],
            "twice": ["ERR_CRYPTO_HASH_FINALIZED", "Digest already called"],
            "update": ["ERR_CRYPTO_HASH_FINALIZED", "Digest already called"],
            "hashes": ["md5", "sha1", "sha256", "sha384", "sha512"],
        })
    );
}

#[test]
fn create_hmac_matches_rfc_4231_and_rfc_2202() {
    let got = eval(
        r#"const { createHmac, createSecretKey } = require('crypto');
           const jefe = 'what do ya want for nothing?';
           return {
             case1: createHmac('sha256', Buffer.alloc(20, 0x0b)).update('Hi There').digest('hex'),
             case2: createHmac('sha256', 'Jefe').update(jefe).digest('hex'),
             case2b64: createHmac('sha256', 'Jefe').update(jefe).digest('base64'),
             case2sha512: createHmac('sha512', 'Jefe').update(jefe).digest('hex'),
             case6: createHmac('sha256', Buffer.alloc(131, 0xaa))
               .update('Test Using Larger Than Block-Size Key - Hash Key First').digest('hex'),
             md5: createHmac('md5', 'Jefe').update(jefe).digest('hex'),
             keyObject: createHmac('sha256', createSecretKey(Buffer.from('Jefe'))).update(jefe).digest('hex'),
             chained: createHmac('sha256', 'Jefe').update('what do ya ').update('want for nothing?').digest('base64url'),
           };"#,
    );
    assert_eq!(
        got,
        json!({
            "case1": "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            "case2": "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            "case2b64": "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM=",
            "case2sha512": "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
            "case6": "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            "md5": "750c783e6ab0b503eaa86e310a5db738",
            "keyObject": "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            "chained": "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM",
        })
    );
}

#[test]
fn random_functions_give_the_right_shapes_and_timing_safe_equal_checks_lengths() {
    let got = eval(
        r#"const crypto = require('crypto');
           const a = crypto.randomBytes(16);
           const b = crypto.randomBytes(16);
           const big = crypto.randomBytes(70000);
           const ints = Array.from({ length: 200 }, () => crypto.randomInt(3, 6));
           const viaCallback = await new Promise((resolve, reject) =>
             crypto.randomBytes(8, (err, buf) => (err ? reject(err) : resolve(buf.length))));
           let mismatch;
           try { crypto.timingSafeEqual(Buffer.from('ab'), Buffer.from('abc')); } catch (e) { mismatch = [e.name, e.code, e.message]; }
           return {
             sizes: [a.length, big.length, Buffer.isBuffer(a)],
             differ: !a.equals(b),
             uuid: /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(crypto.randomUUID()),
             intsInRange: ints.every((n) => n >= 3 && n < 6 && Number.isInteger(n)),
             allSeen: new Set(ints).size,
             single: crypto.randomInt(1),
             viaCallback,
             equal: crypto.timingSafeEqual(Buffer.from('secret'), Buffer.from('secret')),
             unequal: crypto.timingSafeEqual(Buffer.from('secret'), Buffer.from('secreT')),
             mismatch,
             filled: crypto.getRandomValues(new Uint32Array(4)).length,
             sync: crypto.randomFillSync(Buffer.alloc(4), 1, 2).length,
           };"#,
    );
    assert_eq!(
        got,
        json!({
            "sizes": [16, 70000, true],
            "differ": true,
            "uuid": true,
            "intsInRange": true,
            "allSeen": 3,
            "single": 0,
            "viaCallback": 8,
            "equal": true,
            "unequal": false,
            "mismatch": ["RangeError", "ERR_CRYPTO_TIMING_SAFE_EQUAL_LENGTH", "Input buffers must have the same byte length"],
            "filled": 4,
            "sync": 4,
        })
    );
}

#[test]
fn webcrypto_digest_and_hmac_sign_and_verify() {
    let got = eval(
        r#"const { webcrypto } = await import('node:crypto');
           const { subtle } = webcrypto;
           const hex = (ab) => Buffer.from(ab).toString('hex');
           const enc = new TextEncoder();
           const key = await subtle.importKey('raw', enc.encode('Jefe'), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign', 'verify']);
           const data = enc.encode('what do ya want for nothing?');
           const sig = await subtle.sign('HMAC', key, data);
           let refused;
           try { await subtle.encrypt({ name: 'AES-GCM' }, key, data); } catch (e) { refused = e.message; }
           return {
             digest: hex(await subtle.digest('SHA-256', enc.encode('abc'))),
             digest1: hex(await subtle.digest({ name: 'SHA-1' }, enc.encode('abc'))),
             sig: hex(sig),
             ok: await subtle.verify('HMAC', key, sig, data),
             bad: await subtle.verify('HMAC', key, new Uint8Array(32), data),
             algorithm: key.algorithm,
             type: key.type,
             refused,
           };"#,
    );
    assert_eq!(
        got,
        json!({
            "digest": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "digest1": "a9993e364706816aba3e25717850c26c9cd0d89d",
            "sig": "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            "ok": true,
            "bad": false,
            "algorithm": {"name": "HMAC", "hash": {"name": "SHA-256"}, "length": 32},
            "type": "secret",
            "refused": "crypto.subtle.encrypt is not supported by Kiln yet",
        })
    );
}

#[test]
fn crypto_functions_kiln_lacks_throw_naming_the_function() {
    let e = eval_err("require('crypto').createSign('RSA-SHA256');");
    assert_eq!(
        e.message,
        "NotSupportedError: crypto.createSign is not supported: Kiln verifies signatures with public keys but does not sign with asymmetric (private) keys"
    );
    let e = eval_err("require('crypto').createCipheriv('aes-256-gcm', Buffer.alloc(32), Buffer.alloc(12));");
    assert_eq!(e.message, "NotSupportedError: crypto.createCipheriv is not supported by Kiln yet");
}

// ---------------------------------------------------------------- buffer

#[test]
fn buffer_round_trips_across_encodings() {
    let got = eval(
        r#"const { Buffer } = require('buffer');
           const text = 'héllo wörld €😀';
           const b = Buffer.from(text);
           const odd = Buffer.from([0xfb, 0xff, 0xbf, 0xff]);
           return {
             hex: b.toString('hex'),
             base64: b.toString('base64'),
             fromHex: Buffer.from(b.toString('hex'), 'hex').toString(),
             fromBase64: Buffer.from(b.toString('base64'), 'base64').toString('utf8'),
             base64url: odd.toString('base64url'),
             base64std: odd.toString('base64'),
             fromBase64url: Buffer.from('-_-__w', 'base64url').toString('hex'),
             mixedAlphabets: Buffer.from('+/-_', 'base64').toString('hex'),
             unpadded: Buffer.from('aGVsbG8', 'base64').toString(),
             spaced: Buffer.from(' aGVs\nbG8= ', 'base64').toString(),
             latin1: Buffer.from('ÿé', 'latin1').toString('hex'),
             latin1Back: Buffer.from([0xff, 0xe9]).toString('binary'),
             ascii: Buffer.from([0xe9, 0x41]).toString('ascii'),
             utf16: Buffer.from('a€', 'utf16le').toString('hex'),
             utf16Back: Buffer.from('ac20', 'hex').toString('ucs2'),
             badUtf8: Buffer.from([0xff, 0x61, 0xe2, 0x82]).toString(),
             loneSurrogate: Buffer.from('\ud800x').toString('hex'),
             oddHex: Buffer.from('abc', 'hex').toString('hex'),
             badHex: Buffer.from('12zz34', 'hex').toString('hex'),
             ranged: b.toString('hex', 1, 3),
             json: JSON.stringify(Buffer.from('hi')),
             fromJson: Buffer.from({ type: 'Buffer', data: [104, 105] }).toString(),
           };"#,
    );
    assert_eq!(
        got,
        json!({
            "hex": "68c3a96c6c6f2077c3b6726c6420e282acf09f9880",
            "base64": "aMOpbGxvIHfDtnJsZCDigqzwn5iA",
            "fromHex": "héllo wörld €😀",
            "fromBase64": "héllo wörld €😀",
            "base64url": "-_-__w",
            "base64std": "+/+//w==",
            "fromBase64url": "fbffbfff",
            "mixedAlphabets": "fbffbf",
            "unpadded": "hello",
            "spaced": "hello",
            "latin1": "ffe9",
            "latin1Back": "ÿé",
            "ascii": "iA",
            "utf16": "6100ac20",
            "utf16Back": "€",
            "badUtf8": "\u{fffd}a\u{fffd}",
            "loneSurrogate": "efbfbd78",
            "oddHex": "ab",
            "badHex": "12",
            "ranged": "c3a9",
            "json": "{\"type\":\"Buffer\",\"data\":[104,105]}",
            "fromJson": "hi",
        })
    );
}

#[test]
fn buffer_statics_and_methods_behave_as_in_node() {
    let got = eval(
        r#"const { Buffer, SlowBuffer } = require('node:buffer');
           const b = Buffer.from('hello');
           const s = b.slice(1, 3);
           s[0] = 0x45;
           const w = Buffer.alloc(8);
           const written = w.write('€uro', 1);
           const n = Buffer.alloc(10);
           const end = n.writeUInt32LE(0xdeadbeef, 0);
           n.writeUInt16BE(0x1234, 4);
           n.writeInt8(-2, 6);
           let range;
           try { n.readUInt32BE(8); } catch (e) { range = [e.name, e.code]; }
           let badArg;
           try { Buffer.from(42); } catch (e) { badArg = [e.name, e.code]; }
           return {
             shared: b.toString(),
             alloc: Buffer.alloc(5, 'ab').toString(),
             allocZero: Buffer.alloc(3).toString('hex'),
             unsafe: Buffer.allocUnsafe(7).length,
             concat: Buffer.concat([Buffer.from('a'), Buffer.from('bc'), new Uint8Array([100])]).toString(),
             concatShort: Buffer.concat([Buffer.from('abc'), Buffer.from('def')], 4).toString(),
             isBuffer: [Buffer.isBuffer(b), Buffer.isBuffer(new Uint8Array(2)), b instanceof Uint8Array],
             byteLength: [Buffer.byteLength('€'), Buffer.byteLength('aGVsbG8=', 'base64'), Buffer.byteLength('abcd', 'hex'), Buffer.byteLength('😀')],
             compare: [Buffer.compare(Buffer.from('a'), Buffer.from('b')), Buffer.from('b').compare(Buffer.from('a')), Buffer.compare(b, Buffer.from(b))],
             equals: [b.equals(Buffer.from('hEllo')), b.equals(Buffer.from('hello'))],
             sorted: [Buffer.from('c'), Buffer.from('a'), Buffer.from('b')].sort(Buffer.compare).map(String),
             written: [written, w.toString('hex')],
             numbers: [end, n.readUInt32LE(0), n.readUInt32BE(0), n.readUInt16BE(4), n.readUInt16LE(4), n.readInt8(6), n.readUint8(6)],
             range,
             badArg,
             callable: Buffer('abc').toString(),
             slow: [typeof SlowBuffer, typeof SlowBuffer.prototype.equals, Buffer.isBuffer(SlowBuffer(2))],
             mapped: Buffer.isBuffer(b.map((x) => x)),
             subarray: Buffer.isBuffer(b.subarray(1)),
             indexOf: [b.indexOf('l'), b.lastIndexOf('l'), b.indexOf(Buffer.from('lo')), b.includes('z'), b.indexOf(0x6f)],
             fill: Buffer.alloc(4).fill('xy', 1).toString('latin1'),
             copy: (() => { const t = Buffer.alloc(4, '.'); const c = Buffer.from('ab').copy(t, 1); return [c, t.toString()]; })(),
             global: globalThis.Buffer === Buffer,
             encodings: [Buffer.isEncoding('UTF-8'), Buffer.isEncoding('base64url'), Buffer.isEncoding('nope')],
             variable: [Buffer.from([1, 2, 3]).readUIntBE(0, 3), Buffer.from([0xff, 0xff, 0xff]).readIntLE(0, 3)],
             big: Buffer.from('0102030405060708', 'hex').readBigUInt64BE(0).toString(),
           };"#,
    );
    assert_eq!(
        got,
        json!({
            "shared": "hEllo",
            "alloc": "ababa",
            "allocZero": "000000",
            "unsafe": 7,
            "concat": "abcd",
            "concatShort": "abcd",
            "isBuffer": [true, false, true],
            "byteLength": [3, 5, 2, 4],
            "compare": [-1, 1, 0],
            "equals": [true, false],
            "sorted": ["a", "b", "c"],
            "written": [6, "00e282ac75726f00"],
            "numbers": [4, 0xdeadbeef_u32, 0xefbeadde_u32, 0x1234, 0x3412, -2, 254],
            "range": ["RangeError", "ERR_OUT_OF_RANGE"],
            "badArg": ["TypeError", "ERR_INVALID_ARG_TYPE"],
            "callable": "abc",
            "slow": ["function", "undefined", true],
            "mapped": true,
            "subarray": true,
            "indexOf": [2, 3, 3, false, 4],
            "fill": "\u{0}xyx",
            "copy": [2, ".ab."],
            "global": true,
            "encodings": [true, true, false],
            "variable": [0x010203, -1],
            "big": "72623859790382856",
        })
    );
}

// ---------------------------------------------------------------- util

#[test]
fn util_format_follows_nodes_documented_cases() {
    let got = eval(
        r#"const util = require('util');
           const circular = {}; circular.self = circular;
           return [
             util.format('%s: %s', 'foo', 'bar', 'baz'),
             util.format('%s:%s', 'foo'),
             util.format(1, 2, 3),
             util.format('%% %s'),
             util.format('%%: %s', 'x'),
             util.format('%d', '42'),
             util.format('%i', 42.9),
             util.format('%f', '1.5'),
             util.format('%d', -0),
             util.format('%d', 10n),
             util.format('%j', { a: [1, 'b'] }),
             util.format('%j', circular),
             util.format('%O', { a: { b: { c: { d: 1 } } } }),
             util.format('%o', { a: 1 }),
             util.format('%s', { a: { b: 1 } }),
             util.format('%s', [1, [2]]),
             util.format('a', { b: 1 }, 'c'),
             util.format('%c%s', 'color: red', 'styled'),
             util.format('100%'),
             util.format('%s', null, undefined),
             util.formatWithOptions({ depth: 0 }, '%O', { a: { b: 1 } }),
           ];"#,
    );
    assert_eq!(
        got,
        json!([
            "foo: bar baz",
            "foo:%s",
            "1 2 3",
            "%% %s",
            "%: x",
            "42",
            "42",
            "1.5",
            "-0",
            "10n",
            "{\"a\":[1,\"b\"]}",
            "[Circular]",
            "{ a: { b: { c: [Object] } } }",
            "{ a: 1 }",
            "{ a: [Object] }",
            "[ 1, [Array] ]",
            "a { b: 1 } c",
            "styled",
            "100%",
            "null undefined",
            "{ a: [Object] }",
        ])
    );
}

#[test]
fn util_inspect_formats_values_like_node() {
    let got = eval(
        r#"const { inspect } = require('util');
           const circular = { name: 'x' }; circular.self = circular;
           class Foo { constructor() { this.x = 1; } }
           const bare = Object.create(null); bare.a = 1;
           function named() {}
           const custom = { [inspect.custom]: () => 'CUSTOM' };
           return [
             inspect('a\'b'),
             inspect("it's"),
             inspect([1, 'a', { b: null }, undefined]),
             inspect(new Map([['a', 1]])),
             inspect(new Set([1, 2])),
             inspect(circular),
             inspect(Buffer.from('ab')),
             inspect(new Foo()),
             inspect(bare),
             inspect(named),
             inspect(class Bar {}),
             inspect({ 'a-b': 1, [Symbol('s')]: 2 }),
             inspect({}),
             inspect([]),
             inspect(-0),
             inspect(new Date(0)),
             inspect(/x/g),
             inspect(custom),
             inspect({ a: { b: { c: {} } } }),
             inspect({ a: { b: { c: { d: 1 } } } }, { depth: 5 }),
             inspect({ a: [1, 2] }, { depth: 0 }),
             inspect(new Uint8Array([1, 2])),
             inspect('x'.repeat(3), { maxStringLength: 2 }),
             inspect(Array.from({ length: 3 }, (_, i) => i), { maxArrayLength: 2 }),
             inspect({ long: 'x'.repeat(80) }),
           ];"#,
    );
    assert_eq!(
        got,
        json!([
            "\"a'b\"",
            "\"it's\"",
            "[ 1, 'a', { b: null }, undefined ]",
            "Map(1) { 'a' => 1 }",
            "Set(2) { 1, 2 }",
            "<ref *1> { name: 'x', self: [Circular *1] }",
            "<Buffer 61 62>",
            "Foo { x: 1 }",
            "[Object: null prototype] { a: 1 }",
            "[Function: named]",
            "[class Bar]",
            "{ 'a-b': 1, [Symbol(s)]: 2 }",
            "{}",
            "[]",
            "-0",
            "1970-01-01T00:00:00.000Z",
            "/x/g",
            "CUSTOM",
            "{ a: { b: { c: {} } } }",
            "{\n  a: { b: { c: { d: 1 } } }\n}",
            "{ a: [Array] }",
            "Uint8Array(2) [ 1, 2 ]",
            "'xx'... 1 more character",
            "[ 0, 1, ... 1 more item ]",
            format!("{{\n  long: '{}'\n}}", "x".repeat(80)),
        ])
    );
}

#[test]
fn util_promisify_inherits_deprecate_and_deep_equality() {
    let (outcome, host) = invoke(
        r#"import util from 'node:util';
           import { EventEmitter } from 'events';
           export async function run() {
             const add = (a, b, cb) => setTimeout(() => cb(null, a + b), 1);
             const fail = (cb) => cb(new Error('nope'));
             const custom = (cb) => cb(null, 'plain');
             custom[util.promisify.custom] = () => Promise.resolve('custom');
             let rejected;
             try { await util.promisify(fail)(); } catch (e) { rejected = e.message; }
             function Child() { EventEmitter.call(this); }
             util.inherits(Child, EventEmitter);
             const child = new Child();
             let heard = 0;
             child.on('x', () => heard++);
             child.emit('x');
             const old = util.deprecate(() => 'value', 'old() is going away', 'DEP0001');
             const callbackified = await new Promise((resolve) =>
               util.callbackify(async (x) => x * 2)(21, (err, v) => resolve([err, v])));
             return {
               sum: await util.promisify(add)(2, 3),
               rejected,
               custom: await util.promisify(custom)(),
               customSymbol: util.promisify.custom === Symbol.for('nodejs.util.promisify.custom'),
               inherits: [child instanceof EventEmitter, Child.super_ === EventEmitter, heard],
               deprecated: [old(), old()],
               callbackified,
               deep: [
                 util.isDeepStrictEqual({ a: [1, { b: 2 }], m: new Map([[1, new Set([2])]]) }, { a: [1, { b: 2 }], m: new Map([[1, new Set([2])]]) }),
                 util.isDeepStrictEqual({ a: 1 }, { a: '1' }),
                 util.isDeepStrictEqual([1, 2], [1, 2, 3]),
                 util.isDeepStrictEqual(new Date(1), new Date(1)),
                 util.isDeepStrictEqual(NaN, NaN),
                 util.isDeepStrictEqual(Object.create(null), {}),
               ],
               types: [
                 util.types.isDate(new Date()), util.types.isRegExp(/x/), util.types.isPromise(Promise.resolve()),
                 util.types.isUint8Array(Buffer.alloc(1)), util.types.isAsyncFunction(async () => {}), util.types.isMap({}),
               ],
               text: new util.TextDecoder().decode(new util.TextEncoder().encode('ok')),
             };
           }"#,
    );
    let Outcome::Ok { result } = outcome else { panic!("{outcome:?}") };
    let got: Value = serde_json::from_str(&result).unwrap();
    assert_eq!(
        got,
        json!({
            "sum": 5,
            "rejected": "nope",
            "custom": "custom",
            "customSymbol": true,
            "inherits": [true, true, 1],
            "deprecated": ["value", "value"],
            "callbackified": [null, 42],
            "deep": [true, false, false, true, true, false],
            "types": [true, true, true, true, true, false],
            "text": "ok",
        })
    );
    let warnings: Vec<&str> =
        host.logs.iter().filter(|(l, _)| *l == LogLevel::Warn).map(|(_, t)| t.as_str()).collect();
    assert_eq!(warnings, ["[DEP0001] DeprecationWarning: old() is going away"]);
}

// ---------------------------------------------------------------- events

#[test]
fn event_emitter_semantics_match_node() {
    let got = eval(
        r#"const EventEmitter = require('events');
           const e = new EventEmitter();
           const log = [];
           const a = (x) => log.push('a' + x);
           e.on('ev', a);
           e.once('ev', (x) => log.push('once' + x));
           e.prependListener('ev', (x) => log.push('first' + x));
           const fired1 = e.emit('ev', 1);
           e.emit('ev', 2);
           const count = e.listenerCount('ev');
           e.off('ev', a);
           e.emit('ev', 3);
           const none = e.emit('nothing');
           // Listeners added during an emit wait for the next one.
           const f = new EventEmitter();
           f.on('x', () => { log.push('x'); f.on('x', () => log.push('late')); });
           f.emit('x');
           let thrown;
           try { e.emit('error', new TypeError('bad')); } catch (err) { thrown = [err.name, err.message]; }
           let unhandled;
           try { e.emit('error', 'text'); } catch (err) { unhandled = [err.code, err.message]; }
           let handled;
           e.on('error', (err) => { handled = err.message; });
           e.emit('error', new Error('caught'));
           const added = [];
           const g = new EventEmitter();
           g.on('newListener', (name) => added.push(name));
           g.on('y', () => {});
           g.removeAllListeners('y');
           const onceArgs = await Promise.all([EventEmitter.once(g, 'ready'), Promise.resolve().then(() => g.emit('ready', 1, 2))]);
           let onceError;
           const h = new EventEmitter();
           const pending = EventEmitter.once(h, 'done').catch((err) => { onceError = err.message; });
           h.emit('error', new Error('failed first'));
           await pending;
           return {
             log, fired1, count, none, thrown, unhandled, handled, added,
             onceArgs: onceArgs[0],
             onceError,
             names: g.eventNames(),
             identity: [require('events').EventEmitter === EventEmitter, require('node:events') === EventEmitter],
             max: EventEmitter.defaultMaxListeners,
           };"#,
    );
    assert_eq!(
        got,
        json!({
            "log": ["first1", "a1", "once1", "first2", "a2", "first3", "x"],
            "fired1": true,
            "count": 2,
            "none": false,
            "thrown": ["TypeError", "bad"],
            "unhandled": ["ERR_UNHANDLED_ERROR", "Unhandled error. ('text')"],
            "handled": "caught",
            "added": ["y", "ready", "error"],
            "onceArgs": [1, 2],
            "onceError": "failed first",
            "names": ["newListener"],
            "identity": [true, true],
            "max": 10,
        })
    );
}

// ---------------------------------------------------------------- path, querystring, url

#[test]
fn path_matches_nodes_documented_posix_outputs() {
    let got = eval(
        r#"const path = require('path');
           return [
             path.join('/foo', 'bar', 'baz/asdf', 'quux', '..'),
             path.join('a', '', 'b/'),
             path.join(),
             path.resolve('/foo/bar', './baz'),
             path.resolve('/foo/bar', '/tmp/file/'),
             path.resolve('wwwroot', 'static_files/png/', '../gif/image.gif'),
             path.resolve(),
             path.dirname('/foo/bar/baz/asdf/quux'),
             path.dirname('file'),
             path.basename('/foo/bar/baz/asdf/quux.html'),
             path.basename('/foo/bar/baz/asdf/quux.html', '.html'),
             path.basename('/foo/bar/'),
             [path.extname('index.html'), path.extname('index.coffee.md'), path.extname('index.'), path.extname('index'), path.extname('.index'), path.extname('.index.md')],
             path.normalize('/foo/bar//baz/asdf/quux/..'),
             path.normalize('./a/../../b/'),
             path.relative('/data/orandea/test/aaa', '/data/orandea/impl/bbb'),
             path.relative('/a', '/a/b/c'),
             [path.isAbsolute('/foo/bar'), path.isAbsolute('qux/'), path.isAbsolute('.')],
             path.parse('/home/user/dir/file.txt'),
             path.format({ root: '/ignored', dir: '/home/user/dir', base: 'file.txt' }),
             path.format({ root: '/', name: 'file', ext: 'txt' }),
             [path.sep, path.delimiter, path.posix === path, require('path/posix') === path],
           ];"#,
    );
    assert_eq!(
        got,
        json!([
            "/foo/bar/baz/asdf",
            "a/b/",
            ".",
            "/foo/bar/baz",
            "/tmp/file",
            "/wwwroot/static_files/gif/image.gif",
            "/",
            "/foo/bar/baz/asdf",
            ".",
            "quux.html",
            "quux",
            "bar",
            [".html", ".md", ".", "", "", ".md"],
            "/foo/bar/baz/asdf",
            "../b/",
            "../../impl/bbb",
            "b/c",
            [true, false, false],
            {"root": "/", "dir": "/home/user/dir", "base": "file.txt", "ext": ".txt", "name": "file"},
            "/home/user/dir/file.txt",
            "/file.txt",
            ["/", ":", true, true],
        ])
    );
}

#[test]
fn querystring_matches_nodes_documented_outputs() {
    let got = eval(
        r#"const qs = require('querystring');
           const parsed = qs.parse('foo=bar&abc=xyz&abc=123');
           return {
             parsed,
             nullProto: Object.getPrototypeOf(parsed) === null,
             stringified: qs.stringify({ foo: 'bar', baz: ['qux', 'quux'], corge: '' }),
             custom: qs.stringify({ foo: 'bar', baz: 'qux' }, ';', ':'),
             types: qs.stringify({ n: 1, b: true, o: {}, u: undefined, inf: Infinity }),
             plus: qs.parse('a+b=c+d&e'),
             badEscape: qs.parse('a=%ZZ&b=%E4%BD%A0'),
             escape: qs.escape('a b&c/ü'),
             unescape: qs.unescape('%E4%BD%A0%20x'),
             maxKeys: Object.keys(qs.parse('a=1&b=2&c=3', null, null, { maxKeys: 2 })),
           };"#,
    );
    assert_eq!(
        got,
        json!({
            "parsed": {"foo": "bar", "abc": ["xyz", "123"]},
            "nullProto": true,
            "stringified": "foo=bar&baz=qux&baz=quux&corge=",
            "custom": "foo:bar;baz:qux",
            "types": "n=1&b=true&o=&u=&inf=",
            "plus": {"a b": "c d", "e": ""},
            "badEscape": {"a": "%ZZ", "b": "你"},
            "escape": "a%20b%26c%2F%C3%BC",
            "unescape": "你 x",
            "maxKeys": ["a", "b"],
        })
    );
}

#[test]
fn url_offers_whatwg_classes_and_the_legacy_api() {
    let got = eval(
        r#"const url = require('url');
           const p = url.parse('https://user:pass@sub.example.com:8080/p/a/t/h?query=string#hash');
           const q = url.parse('/search?q=a+b&q=c', true);
           let fileError;
           try { url.fileURLToPath('file:///etc/passwd'); } catch (e) { fileError = e.message; }
           return {
             parsed: { protocol: p.protocol, slashes: p.slashes, auth: p.auth, host: p.host, port: p.port, hostname: p.hostname,
                       hash: p.hash, search: p.search, query: p.query, pathname: p.pathname, path: p.path, href: p.href },
             relative: { protocol: q.protocol, host: q.host, pathname: q.pathname, query: { ...q.query }, href: q.href },
             bare: url.parse('http://example.com').href,
             formatted: url.format({ protocol: 'https', hostname: 'example.com', pathname: '/some/path', query: { page: 1, format: 'json' } }),
             formatUrl: url.format(new URL('https://a:b@example.com/x?y=1#z'), { auth: false, fragment: false }),
             resolved: [
               url.resolve('/one/two/three', 'four'),
               url.resolve('http://example.com/', '/one'),
               url.resolve('http://example.com/one', '/two'),
             ],
             classes: [url.URL === URL, url.URLSearchParams === URLSearchParams],
             fileError,
           };"#,
    );
    assert_eq!(
        got,
        json!({
            "parsed": {
                "protocol": "https:", "slashes": true, "auth": "user:pass", "host": "sub.example.com:8080",
                "port": "8080", "hostname": "sub.example.com", "hash": "#hash", "search": "?query=string",
                "query": "query=string", "pathname": "/p/a/t/h", "path": "/p/a/t/h?query=string",
                "href": "https://user:pass@sub.example.com:8080/p/a/t/h?query=string#hash",
            },
            "relative": {"protocol": null, "host": null, "pathname": "/search", "query": {"q": ["a b", "c"]}, "href": "/search?q=a+b&q=c"},
            "bare": "http://example.com/",
            "formatted": "https://example.com/some/path?page=1&format=json",
            "formatUrl": "https://example.com/x?y=1",
            "resolved": ["/one/two/four", "http://example.com/one", "http://example.com/two"],
            "classes": [true, true],
            "fileError": "url.fileURLToPath is not available: app code has no file system in Kiln (keep data with @forge/kvs)",
        })
    );
}

// ---------------------------------------------------------------- assert

#[test]
fn assert_throws_assertion_errors_with_nodes_fields() {
    let got = eval(
        r#"const assert = require('assert');
           const caught = (f) => { try { f(); return 'passed'; } catch (e) {
             return [e instanceof assert.AssertionError, e.name, e.code, e.message, e.operator]; } };
           let rejected;
           try { await assert.rejects(Promise.resolve(1)); } catch (e) { rejected = [e.code, e.message]; }
           await assert.rejects(Promise.reject(new TypeError('no')), TypeError);
           return {
             okFalse: caught(() => assert(false)),
             okMessage: caught(() => assert.ok(0, 'must be truthy')),
             okTrue: caught(() => { assert(1); assert.ok('x'); }),
             strict: caught(() => assert.strictEqual(1, 2)),
             notStrict: caught(() => assert.notStrictEqual(1, 1)),
             loose: caught(() => { assert.equal(1, '1'); assert.deepEqual({ a: 1 }, { a: '1' }); }),
             deep: caught(() => assert.deepStrictEqual({ a: [1, 2], b: new Set([1]) }, { a: [1, 2], b: new Set([1]) })),
             deepFails: caught(() => assert.deepStrictEqual({ a: 1 }, { a: '1' }))[2],
             throwsMatches: caught(() => {
               assert.throws(() => { throw new TypeError('boom'); }, TypeError);
               assert.throws(() => { throw new Error('boom'); }, /boom/);
               assert.throws(() => { throw new Error('boom'); }, { message: 'boom' });
               assert.throws(() => { throw new Error('boom'); }, (e) => e.message === 'boom');
             }),
             throwsMissing: caught(() => assert.throws(() => {})),
             throwsWrong: caught(() => assert.throws(() => { throw new Error('a'); }, TypeError))[2],
             rejected,
             fail: caught(() => assert.fail('stop')),
             strictAlias: [assert.strict.equal === assert.strictEqual, require('assert/strict') === assert.strict],
             strictEqualViaStrict: caught(() => assert.strict.equal(1, '1'))[2],
           };"#,
    );
    assert_eq!(
        got,
        json!({
            "okFalse": [true, "AssertionError", "ERR_ASSERTION", "The expression evaluated to a falsy value", "=="],
            "okMessage": [true, "AssertionError", "ERR_ASSERTION", "must be truthy", "=="],
            "okTrue": "passed",
            "strict": [true, "AssertionError", "ERR_ASSERTION", "Expected values to be strictly equal:\n\n1 !== 2\n", "strictEqual"],
            "notStrict": [true, "AssertionError", "ERR_ASSERTION", "Expected \"actual\" to be strictly unequal to: 1", "notStrictEqual"],
            "loose": "passed",
            "deep": "passed",
            "deepFails": "ERR_ASSERTION",
            "throwsMatches": "passed",
            "throwsMissing": [true, "AssertionError", "ERR_ASSERTION", "Missing expected exception.", "throws"],
            "throwsWrong": "ERR_ASSERTION",
            "rejected": ["ERR_ASSERTION", "Missing expected rejection."],
            "fail": [true, "AssertionError", "ERR_ASSERTION", "stop", "fail"],
            "strictAlias": [true, true],
            "strictEqualViaStrict": "ERR_ASSERTION",
        })
    );
}

// ---------------------------------------------------------------- string_decoder, timers, stream, process

#[test]
fn string_decoder_keeps_split_characters_whole() {
    let got = eval(
        r#"const { StringDecoder } = require('string_decoder');
           const d = new StringDecoder('utf8');
           const parts = [d.write(Buffer.from([0xe2, 0x82])), d.write(Buffer.from([0xac, 0x41, 0xf0, 0x9f])), d.write(Buffer.from([0x98, 0x80]))];
           const e = new StringDecoder('utf8');
           const cut = [e.write(Buffer.from([0x61, 0xe2])), e.end()];
           const u = new StringDecoder('utf16le');
           const utf16 = [u.write(Buffer.from([0x61])), u.write(Buffer.from([0x00, 0x3d, 0xd8])), u.write(Buffer.from([0x00, 0xde]))];
           const b = new StringDecoder('base64');
           const b64 = [b.write(Buffer.from('ab')), b.write(Buffer.from('cd')), b.end()];
           return { parts, cut, utf16, b64 };"#,
    );
    assert_eq!(
        got,
        json!({
            "parts": ["", "€A", "😀"],
            "cut": ["a", "\u{fffd}"],
            "utf16": ["", "a", "😀"],
            "b64": ["", "YWJj", "ZA=="],
        })
    );
}

#[test]
fn timers_stream_and_the_process_global() {
    let got = eval(
        r#"const timers = require('timers');
           const { setTimeout: sleep } = require('timers/promises');
           const order = [];
           await new Promise((resolve) => {
             timers.setTimeout(() => { order.push('timeout'); resolve(); }, 0);
             timers.setImmediate(() => order.push('immediate'));
             process.nextTick(() => order.push('tick'));
             order.push('sync');
           });
           const slept = await sleep(1, 'woke');
           const Stream = require('stream');
           function Legacy() { Stream.call(this); this.readable = true; }
           require('util').inherits(Legacy, Stream);
           const legacy = new Legacy();
           let readable;
           try { new Stream.Readable(); } catch (e) { readable = e.message; }
           let exit;
           try { process.exit(1); } catch (e) { exit = e.message; }
           const [s, ns] = process.hrtime();
           return {
             order, slept,
             stream: [typeof Stream, legacy instanceof require('events'), typeof legacy.pipe, readable],
             process: {
               env: process.env, platform: process.platform, version: process.version, node: process.versions.node,
               cwd: process.cwd(), hrtime: [Number.isInteger(s), Number.isInteger(ns)], bigint: typeof process.hrtime.bigint(),
               same: require('process') === process, exit,
             },
           };"#,
    );
    assert_eq!(
        got,
        json!({
            "order": ["sync", "tick", "timeout", "immediate"],
            "slept": "woke",
            "stream": ["function", true, "function", "stream.Readable is not supported by Kiln yet"],
            "process": {
                "env": {}, "platform": "linux", "version": "v20.11.1", "node": "20.11.1", "cwd": "/",
                "hrtime": [true, true], "bigint": "bigint", "same": true,
                "exit": "process.exit(1) is not supported by Kiln: app code cannot control its process; return from the handler, or throw, instead",
            },
        })
    );
}

// ---------------------------------------------------------------- linking, identity, refusals

#[test]
fn bare_and_node_prefixed_names_load_the_same_module_from_import_and_require() {
    let got = eval(
        r#"const ns = await import('node:crypto');
           const { default: util, format } = await import('util');
           return [
             require('node:crypto') === require('crypto'),
             require('crypto') === ns.default,
             ns.createHash === require('crypto').createHash,
             require('buffer').Buffer === Buffer,
             require('node:util') === util,
             format === util.format,
             typeof require('assert'),
             require('util/types') === util.types,
             require('url').URL === URL,
           ];"#,
    );
    assert_eq!(got, json!([true, true, true, true, true, true, "function", true, true]));
}

#[test]
fn static_imports_get_default_and_named_exports() {
    let (outcome, _) = invoke(
        r#"import crypto, { createHash } from 'crypto';
           import EventEmitter, { once } from 'node:events';
           import { Buffer as B } from 'buffer';
           import assert from 'assert';
           import path, { join } from 'path';
           export function run() {
             assert.strictEqual(typeof once, 'function');
             return [crypto.createHash === createHash, typeof EventEmitter, B === Buffer, path.join === join,
                     createHash('sha1').update('abc').digest('hex')];
           }"#,
    );
    let Outcome::Ok { result } = outcome else { panic!("{outcome:?}") };
    assert_eq!(
        serde_json::from_str::<Value>(&result).unwrap(),
        json!([true, "function", true, true, "a9993e364706816aba3e25717850c26c9cd0d89d"])
    );
}

#[test]
fn sandbox_forbidden_modules_stay_refused_with_kilns_alternative() {
    let e = eval_err("return require('fs').readFileSync('/etc/passwd');");
    assert!(e.message.contains("Kiln does not provide the 'node:fs' module"), "{e:?}");
    assert!(e.message.contains("keep data with @forge/kvs"), "{e:?}");
    let e = eval_err("return require('node:child_process').execSync('id');");
    assert!(e.message.contains("app code cannot start processes or threads"), "{e:?}");
    let e = eval_err("return require('net').connect(80);");
    assert!(e.message.contains("reach declared hosts with fetch from @forge/api"), "{e:?}");
    let e = eval_err("return require('os').hostname();");
    assert!(e.message.contains("the host is not visible to app code"), "{e:?}");
}

#[test]
fn buffer_and_process_globals_stay_lazy_and_replaceable() {
    let got = eval(
        r#"const before = Object.getOwnPropertyDescriptor(globalThis, 'Buffer');
           const lazy = typeof before.get === 'function';
           const ok = Buffer.from('x').toString('hex');
           const after = Object.getOwnPropertyDescriptor(globalThis, 'Buffer');
           globalThis.process = 'replaced';
           return [lazy, ok, 'value' in after, process];"#,
    );
    assert_eq!(got, json!([true, "78", true, "replaced"]));
}
