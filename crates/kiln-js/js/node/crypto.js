// node:crypto — hashes, HMACs, randomness, Web Crypto's digest and HMAC, and
// verification of RSA and ECDSA signatures with public keys (for the JWTs
// apps are sent), computed natively by kiln-crypto (ring, plus MD5 for
// legacy use). Signing with private keys is refused: Kiln holds no private
// keys for apps. What is not here yet (ciphers, key derivation, key pairs)
// throws a NotSupportedError naming the function, never a silent wrong answer.
import { native } from 'kiln:natives';
import { crypto as webCrypto } from 'kiln:crypto';
import { Buffer, bytesToBinary } from 'builtin:node:buffer';
import { NotSupportedError, unsupported } from 'builtin:kiln:unsupported';

const HASHES = ['md5', 'sha1', 'sha256', 'sha384', 'sha512'];
const ALIASES = { 'rsa-md5': 'md5', 'rsa-sha1': 'sha1', 'rsa-sha256': 'sha256', 'rsa-sha384': 'sha384', 'rsa-sha512': 'sha512', 'sha-1': 'sha1', 'sha-256': 'sha256', 'sha-384': 'sha384', 'sha-512': 'sha512' };

function codedError(Type, code, message) {
  const e = new Type(message);
  e.code = code;
  return e;
}

function invalidArgType(name, expected, value) {
  const shown = value === null ? 'null' : value === undefined ? 'undefined' : typeof value === 'object' ? `an instance of ${value.constructor?.name ?? 'Object'}` : `type ${typeof value}`;
  return codedError(TypeError, 'ERR_INVALID_ARG_TYPE', `The "${name}" argument must be ${expected}. Received ${shown}`);
}

function hashName(algorithm) {
  if (typeof algorithm !== 'string') throw invalidArgType('algorithm', 'of type string', algorithm);
  const name = algorithm.toLowerCase();
  const resolved = ALIASES[name] ?? name;
  if (!HASHES.includes(resolved)) {
    throw codedError(Error, 'ERR_CRYPTO_INVALID_DIGEST', `Digest method not supported: '${algorithm}' (Kiln offers ${HASHES.join(', ')})`);
  }
  return resolved;
}

// Data as a binary string for the natives: strings in `encoding` (utf8 by
// default), or the bytes of any buffer view.
function binaryOf(data, encoding, name = 'data') {
  if (typeof data === 'string') return bytesToBinary(Buffer.from(data, encoding));
  if (ArrayBuffer.isView(data)) return bytesToBinary(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  if (data instanceof ArrayBuffer) return bytesToBinary(new Uint8Array(data));
  throw invalidArgType(name, 'of type string or an instance of Buffer, TypedArray, or DataView', data);
}

function output(bytes, encoding) {
  const buf = Buffer.from(bytes);
  return encoding === undefined || encoding === 'buffer' ? buf : buf.toString(encoding);
}

// ---------------------------------------------------------------- Hash, Hmac

// Updates are kept (as compact binary strings) and digested at once: the
// engine's memory limit bounds them.
class Hash {
  #algorithm;
  #parts;
  #finished = false;
  constructor(algorithm, parts = []) {
    this.#algorithm = hashName(algorithm);
    this.#parts = parts;
  }
  update(data, encoding) {
    if (this.#finished) throw codedError(Error, 'ERR_CRYPTO_HASH_FINALIZED', 'Digest already called');
    this.#parts.push(binaryOf(data, encoding));
    return this;
  }
  digest(encoding) {
    if (this.#finished) throw codedError(Error, 'ERR_CRYPTO_HASH_FINALIZED', 'Digest already called');
    this.#finished = true;
    return output(native.digest(this.#algorithm, this.#parts.join('')), encoding);
  }
  copy() {
    if (this.#finished) throw codedError(Error, 'ERR_CRYPTO_HASH_FINALIZED', 'Digest already called');
    return new Hash(this.#algorithm, this.#parts.slice());
  }
}

class Hmac {
  #algorithm;
  #key;
  #parts = [];
  #finished = false;
  constructor(algorithm, key, encoding) {
    this.#algorithm = hashName(algorithm);
    this.#key = keyBinary(key, encoding);
  }
  update(data, encoding) {
    if (this.#finished) throw codedError(Error, 'ERR_CRYPTO_HASH_FINALIZED', 'Digest already called');
    this.#parts.push(binaryOf(data, encoding));
    return this;
  }
  digest(encoding) {
    // Node returns an empty digest when called twice on an Hmac.
    if (this.#finished) return output(new Uint8Array(0), encoding);
    this.#finished = true;
    return output(native.hmac(this.#algorithm, this.#key, this.#parts.join('')), encoding);
  }
}

function keyBinary(key, encoding) {
  if (key instanceof KeyObject) {
    if (key.type !== 'secret') throw codedError(TypeError, 'ERR_CRYPTO_INVALID_KEY_OBJECT_TYPE', `Invalid key object type ${key.type}, expected secret.`);
    return bytesToBinary(key.export());
  }
  if (key instanceof CryptoKey) return bytesToBinary(secretOf(key));
  return binaryOf(key, encoding, 'key');
}

export function createHash(algorithm, options) {
  if (options && options.outputLength !== undefined) {
    throw new NotSupportedError('crypto.createHash with outputLength');
  }
  return new Hash(algorithm);
}

export function createHmac(algorithm, key, options) {
  return new Hmac(algorithm, key, options?.encoding);
}

// crypto.hash(algorithm, data[, outputEncoding = 'hex']) (Node 21.7+).
export function hash(algorithm, data, outputEncoding = 'hex') {
  return output(native.digest(hashName(algorithm), binaryOf(data, 'utf8')), outputEncoding);
}

export function getHashes() {
  return HASHES.slice();
}

export function getCiphers() {
  return [];
}

export function getCurves() {
  return [];
}

// ---------------------------------------------------------------- keys

const secrets = new WeakMap();
// A public KeyObject's description from native.publicKey: type, spki and
// (RSA) pkcs1 DER, details, JWK members. Only this module makes one.
const publicKeys = new WeakMap();
const PUBLIC_KEY = Symbol('kiln public key');

export class KeyObject {
  #type;
  constructor(type, handle, token) {
    if (type === 'secret') {
      secrets.set(this, handle);
    } else if (type === 'public' && token === PUBLIC_KEY) {
      publicKeys.set(this, handle);
    } else if (type === 'private') {
      throw signingRefused('crypto KeyObject of type \'private\'');
    } else {
      throw new NotSupportedError(`crypto KeyObject of type '${type}'`);
    }
    this.#type = type;
  }
  static from(key) {
    if (!(key instanceof CryptoKey)) throw invalidArgType('key', 'an instance of CryptoKey', key);
    return keyObjectOfCryptoKey(key);
  }
  get type() { return this.#type; }
  get symmetricKeySize() { return this.#type === 'secret' ? secrets.get(this).length : undefined; }
  get asymmetricKeyType() { return publicKeys.get(this)?.type; }
  get asymmetricKeyDetails() {
    const info = publicKeys.get(this);
    if (!info) return undefined;
    if (info.type === 'rsa') return { modulusLength: info.modulusLength, publicExponent: BigInt(`0x${info.publicExponent}`) };
    return { namedCurve: info.namedCurve };
  }
  export(options) {
    const info = publicKeys.get(this);
    if (!info) {
      const bytes = Buffer.from(secrets.get(this));
      if (options?.format === 'jwk') return { kty: 'oct', k: bytes.toString('base64url') };
      return bytes;
    }
    if (options === null || typeof options !== 'object') throw invalidArgType('options', 'of type object', options);
    const { format = 'pem', type = 'spki' } = options;
    if (format === 'jwk') return { ...info.jwk };
    if (type !== 'spki' && !(type === 'pkcs1' && info.type === 'rsa')) {
      throw codedError(TypeError, 'ERR_INVALID_ARG_VALUE', `The property 'options.type' is invalid. Received '${type}' (a${info.type === 'rsa' ? 'n RSA' : 'n EC'} public key exports as ${info.type === 'rsa' ? "'spki' or 'pkcs1'" : "'spki'"})`);
    }
    const der = Buffer.from(type === 'pkcs1' ? info.pkcs1 : info.spki);
    if (format === 'der') return der;
    if (format !== 'pem') throw codedError(TypeError, 'ERR_INVALID_ARG_VALUE', `The property 'options.format' is invalid. Received '${format}'`);
    const label = type === 'pkcs1' ? 'RSA PUBLIC KEY' : 'PUBLIC KEY';
    const lines = der.toString('base64').match(/.{1,64}/g).join('\n');
    return `-----BEGIN ${label}-----\n${lines}\n-----END ${label}-----\n`;
  }
  equals(other) {
    if (!(other instanceof KeyObject) || other.type !== this.type) return false;
    if (this.type === 'secret') return timingSafeEqual(secrets.get(this), secrets.get(other));
    const a = new Uint8Array(publicKeys.get(this).spki);
    const b = new Uint8Array(publicKeys.get(other).spki);
    return a.length === b.length && timingSafeEqual(a, b);
  }
}

export function createSecretKey(key, encoding) {
  const bytes = typeof key === 'string' ? Buffer.from(key, encoding) : Buffer.from(binaryOf(key, undefined, 'key'), 'latin1');
  return new KeyObject('secret', bytes);
}

// ---------------------------------------------------------------- public keys and verification

function publicKeyObject(info) {
  return new KeyObject('public', Object.freeze(info), PUBLIC_KEY);
}

const isBytes = (v) => ArrayBuffer.isView(v) || v instanceof ArrayBuffer;
const isKey = (v) => v instanceof KeyObject || v instanceof CryptoKey;
// The options object form of a key argument ({ key, format, ... }), if it is one.
const keyOptions = (v) => (v !== null && typeof v === 'object' && !isBytes(v) && !isKey(v) ? v : undefined);

// createPublicKey(key): PEM (string or buffer; PUBLIC KEY, RSA PUBLIC KEY,
// CERTIFICATE), { key, format: 'der', type: 'spki' | 'pkcs1' }, or
// { key: jwk, format: 'jwk' }. As in Node, a key object is refused: only a
// private one could be turned into a public key.
export function createPublicKey(key) {
  const inner = keyOptions(key)?.key ?? key;
  if (isKey(inner)) {
    throw codedError(TypeError, 'ERR_CRYPTO_INVALID_KEY_OBJECT_TYPE', `Invalid key object type ${inner.type}, expected private.`);
  }
  return parsePublicKey(key);
}

// The public key a verify call names: a public KeyObject or CryptoKey
// (alone or as { key }), or key material for parsePublicKey.
function verifyingKey(key) {
  const inner = keyOptions(key)?.key ?? key;
  if (inner instanceof KeyObject) return publicKeyOf(inner);
  if (inner instanceof CryptoKey) return publicKeyOf(keyObjectOfCryptoKey(inner));
  return parsePublicKey(key);
}

// Key material becomes a public KeyObject here; the parsing itself is
// kiln-crypto's, in one place.
function parsePublicKey(key) {
  let data = key;
  let format = 'pem';
  let type;
  let encoding;
  if (keyOptions(key)) ({ key: data, format = 'pem', type, encoding } = key);
  if (format === 'jwk') {
    if (data === null || typeof data !== 'object') throw invalidArgType('key.key', 'of type object', data);
    return publicKeyObject(native.publicKey('jwk', JSON.stringify(data)));
  }
  if (typeof data !== 'string' && !isBytes(data)) {
    throw invalidArgType('key', 'of type string or an instance of ArrayBuffer, Buffer, TypedArray, DataView, KeyObject, or CryptoKey', data);
  }
  if (format === 'pem') {
    const text = typeof data === 'string' ? data : binaryOf(data, undefined, 'key');
    return publicKeyObject(native.publicKey('pem', text));
  }
  if (format === 'der') {
    if (type !== 'spki' && type !== 'pkcs1') {
      throw codedError(TypeError, 'ERR_INVALID_ARG_VALUE', `The property 'key.type' is invalid. Received ${type === undefined ? 'undefined' : `'${type}'`} (a DER public key is 'spki' or 'pkcs1')`);
    }
    return publicKeyObject(native.publicKey(type, binaryOf(data, encoding, 'key')));
  }
  throw codedError(TypeError, 'ERR_INVALID_ARG_VALUE', `The property 'key.format' is invalid. Received '${format}'`);
}

function publicKeyOf(key) {
  if (key.type === 'public') return key;
  throw codedError(TypeError, 'ERR_CRYPTO_INVALID_KEY_OBJECT_TYPE', `Invalid key object type ${key.type}, expected private or public.`);
}

const SIGNATURE_DIGESTS = { ...ALIASES };
for (const h of ['sha1', 'sha256', 'sha384', 'sha512']) {
  SIGNATURE_DIGESTS[`${h}withrsaencryption`] = h;
  SIGNATURE_DIGESTS[`ecdsa-with-${h}`] = h;
}

// The digest a Verify or crypto.verify names; null or undefined is SHA-256,
// what Node (OpenSSL 3) uses for RSA and EC keys.
function signatureDigest(algorithm) {
  if (algorithm === null || algorithm === undefined) return 'sha256';
  if (typeof algorithm !== 'string') throw invalidArgType('algorithm', 'of type string', algorithm);
  const name = algorithm.toLowerCase();
  const resolved = SIGNATURE_DIGESTS[name] ?? name;
  if (!HASHES.includes(resolved)) throw codedError(TypeError, 'ERR_CRYPTO_INVALID_DIGEST', 'Invalid digest');
  return resolved;
}

const DIGEST_BYTES = { md5: 16, sha1: 20, sha256: 32, sha384: 48, sha512: 64 };

// The key and options of a verify call: a KeyObject, a CryptoKey, PEM, or
// { key, format, type, padding, saltLength, dsaEncoding }.
function verifyKeyAndOptions(key, digest) {
  const options = keyOptions(key) ?? {};
  const publicKey = verifyingKey(key);
  let padding = 'pkcs1';
  if (options.padding === constants.RSA_PKCS1_PSS_PADDING) padding = 'pss';
  else if (options.padding !== undefined && options.padding !== constants.RSA_PKCS1_PADDING) {
    throw codedError(Error, 'ERR_OSSL_RSA_UNKNOWN_PADDING_TYPE', `RSA padding ${options.padding} cannot be used to verify signatures (Kiln verifies RSA_PKCS1_PADDING and RSA_PKCS1_PSS_PADDING)`);
  }
  // ring verifies PSS with a salt as long as the digest: what JWT's PS256
  // and Web Crypto use. Node's default (AUTO) would also accept other salt
  // lengths; Kiln checks the digest-length salt, which other lengths fail.
  const salt = options.saltLength;
  if (padding === 'pss' && salt !== undefined && salt !== constants.RSA_PSS_SALTLEN_DIGEST && salt !== constants.RSA_PSS_SALTLEN_AUTO && salt !== DIGEST_BYTES[digest]) {
    throw new NotSupportedError(`crypto.verify with an RSA-PSS saltLength of ${salt} (Kiln verifies a salt as long as the digest: ${DIGEST_BYTES[digest]}, or RSA_PSS_SALTLEN_DIGEST)`);
  }
  const encoding = options.dsaEncoding ?? 'der';
  if (encoding !== 'der' && encoding !== 'ieee-p1363') {
    throw codedError(TypeError, 'ERR_INVALID_ARG_VALUE', `The property 'options.dsaEncoding' is invalid. Received '${encoding}'`);
  }
  return { info: publicKeys.get(publicKey), padding, encoding };
}

function verifyWith(digest, message, key, signature, signatureEncoding) {
  const { info, padding, encoding } = verifyKeyAndOptions(key, digest);
  const sig = typeof signature === 'string' ? bytesToBinary(Buffer.from(signature, signatureEncoding)) : binaryOf(signature, undefined, 'signature');
  return native.verifySignature(bytesToBinary(new Uint8Array(info.spki)), digest, padding, encoding, message, sig);
}

// Node's Verify: updates kept as binary strings and checked at once.
class Verify {
  #digest;
  #parts = [];
  constructor(algorithm) {
    this.#digest = signatureDigest(algorithm);
  }
  update(data, encoding) {
    this.#parts.push(binaryOf(data, encoding));
    return this;
  }
  write(data, encoding) {
    this.update(data, encoding);
    return true;
  }
  end(data, encoding) {
    if (data !== undefined && typeof data !== 'function') this.update(data, encoding);
    return this;
  }
  verify(key, signature, signatureEncoding) {
    return verifyWith(this.#digest, this.#parts.join(''), key, signature, signatureEncoding);
  }
}

export function createVerify(algorithm) {
  return new Verify(algorithm);
}

// crypto.verify(algorithm, data, key, signature[, callback]).
export function verify(algorithm, data, key, signature, callback) {
  if (callback !== undefined && typeof callback !== 'function') throw invalidArgType('callback', 'of type function', callback);
  const result = verifyWith(signatureDigest(algorithm), binaryOf(data, undefined, 'data'), key, signature);
  if (callback) {
    later(callback, null, result);
    return undefined;
  }
  return result;
}

// Signing needs a private key, which Kiln does not hold or read for apps.
function signingRefused(what) {
  const e = new NotSupportedError(what);
  e.message = `${what} is not supported: Kiln verifies signatures with public keys but does not sign with asymmetric (private) keys`;
  return e;
}

function refuseSigning(what) {
  const fn = function () { throw signingRefused(what); };
  Object.defineProperty(fn, 'name', { value: what });
  return fn;
}

export const createSign = refuseSigning('crypto.createSign');
export const sign = refuseSigning('crypto.sign');
export const createPrivateKey = refuseSigning('crypto.createPrivateKey');

// ---------------------------------------------------------------- randomness

const MAX_RANDOM_CHUNK = 65536;

function fillRandom(bytes) {
  for (let at = 0; at < bytes.length; at += MAX_RANDOM_CHUNK) {
    const n = Math.min(MAX_RANDOM_CHUNK, bytes.length - at);
    bytes.set(native.random(n), at);
  }
  return bytes;
}

function checkSize(size, name = 'size') {
  if (typeof size !== 'number') throw invalidArgType(name, 'of type number', size);
  if (!(size >= 0 && size <= 0x7fffffff) || !Number.isInteger(size)) {
    throw codedError(RangeError, 'ERR_OUT_OF_RANGE', `The value of "${name}" is out of range. It must be >= 0 && <= 2147483647. Received ${size}`);
  }
}

function later(callback, ...args) {
  setTimeout(() => callback(...args), 0);
}

export function randomBytes(size, callback) {
  checkSize(size);
  if (callback !== undefined && typeof callback !== 'function') throw invalidArgType('callback', 'of type function', callback);
  const bytes = fillRandom(Buffer.alloc(size));
  if (callback) {
    later(callback, null, bytes);
    return undefined;
  }
  return bytes;
}
export const pseudoRandomBytes = randomBytes;
export const prng = randomBytes;
export const rng = randomBytes;

export function randomFillSync(buffer, offset = 0, size) {
  if (!ArrayBuffer.isView(buffer) && !(buffer instanceof ArrayBuffer)) {
    throw invalidArgType('buf', 'an instance of ArrayBuffer or ArrayBufferView', buffer);
  }
  const bytes = buffer instanceof ArrayBuffer ? new Uint8Array(buffer) : new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  checkSize(offset, 'offset');
  const n = size === undefined ? bytes.length - offset : size;
  checkSize(n, 'size');
  if (offset + n > bytes.length) {
    throw codedError(RangeError, 'ERR_OUT_OF_RANGE', `The value of "size + offset" is out of range. It must be <= ${bytes.length}. Received ${offset + n}`);
  }
  fillRandom(bytes.subarray(offset, offset + n));
  return buffer;
}

export function randomFill(buffer, offset, size, callback) {
  if (typeof offset === 'function') { callback = offset; offset = 0; size = undefined; }
  else if (typeof size === 'function') { callback = size; size = undefined; }
  if (typeof callback !== 'function') throw invalidArgType('callback', 'of type function', callback);
  randomFillSync(buffer, offset, size);
  later(callback, null, buffer);
}

// A uniform integer in [min, max): rejection sampling over 48 random bits,
// the range Node allows.
export function randomInt(min, max, callback) {
  if (typeof max === 'undefined' || typeof max === 'function') {
    callback = max;
    max = min;
    min = 0;
  }
  if (!Number.isSafeInteger(min)) throw invalidArgType('min', 'a safe integer', min);
  if (!Number.isSafeInteger(max)) throw invalidArgType('max', 'a safe integer', max);
  if (max <= min) {
    throw codedError(RangeError, 'ERR_OUT_OF_RANGE', `The value of "max" is out of range. It must be greater than the value of "min" (${min}). Received ${max}`);
  }
  const range = max - min;
  if (range > 2 ** 48 - 1) {
    throw codedError(RangeError, 'ERR_OUT_OF_RANGE', `The value of "max - min" is out of range. It must be <= 281474976710655. Received ${range}`);
  }
  const limit = 2 ** 48 - (2 ** 48 % range);
  let value;
  do {
    const b = native.random(6);
    value = b[0] * 2 ** 40 + b[1] * 2 ** 32 + b[2] * 2 ** 24 + b[3] * 2 ** 16 + b[4] * 2 ** 8 + b[5];
  } while (value >= limit);
  const result = min + (value % range);
  if (typeof callback === 'function') {
    later(callback, null, result);
    return undefined;
  }
  return result;
}

export function randomUUID(options) {
  return webCrypto.randomUUID(options);
}

export function getRandomValues(array) {
  return webCrypto.getRandomValues(array);
}

// Compares every byte whatever the first difference; JavaScript gives no
// stronger guarantee than that.
export function timingSafeEqual(a, b) {
  const view = (v, name) => {
    if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    if (v instanceof ArrayBuffer) return new Uint8Array(v);
    throw invalidArgType(name, 'an instance of ArrayBuffer, Buffer, TypedArray, or DataView', v);
  };
  const x = view(a, 'buf1');
  const y = view(b, 'buf2');
  if (x.length !== y.length) {
    throw codedError(RangeError, 'ERR_CRYPTO_TIMING_SAFE_EQUAL_LENGTH', 'Input buffers must have the same byte length');
  }
  let diff = 0;
  for (let i = 0; i < x.length; i++) diff |= x[i] ^ y[i];
  return diff === 0;
}

// ---------------------------------------------------------------- Web Crypto (digest, HMAC)

function domException(message, name) {
  const e = new Error(message);
  e.name = name;
  return e;
}

function bufferSource(data, name = 'data') {
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  throw invalidArgType(name, 'an instance of ArrayBuffer, Buffer, TypedArray, or DataView', data);
}

function webHashName(algorithm) {
  const name = typeof algorithm === 'string' ? algorithm : algorithm?.name;
  const upper = String(name).toUpperCase();
  if (!['SHA-1', 'SHA-256', 'SHA-384', 'SHA-512'].includes(upper)) {
    throw domException(`Unrecognized algorithm name: ${name}`, 'NotSupportedError');
  }
  return upper;
}

function toArrayBuffer(bytes) {
  const copy = new Uint8Array(bytes.length);
  copy.set(bytes);
  return copy.buffer;
}

const cryptoKeySecrets = new WeakMap();

export class CryptoKey {
  constructor() {
    throw new TypeError('Illegal constructor');
  }
}

// A public CryptoKey's KeyObject.
const cryptoKeyPublic = new WeakMap();

function makeCryptoKey(bytes, algorithm, extractable, usages, publicKey) {
  const key = Object.create(CryptoKey.prototype);
  Object.defineProperties(key, {
    type: { value: publicKey ? 'public' : 'secret', enumerable: true },
    extractable: { value: Boolean(extractable), enumerable: true },
    algorithm: { value: Object.freeze(algorithm), enumerable: true },
    usages: { value: Object.freeze([...usages]), enumerable: true },
  });
  if (publicKey) cryptoKeyPublic.set(key, publicKey);
  else cryptoKeySecrets.set(key, bytes);
  return key;
}

function keyObjectOfCryptoKey(key) {
  return cryptoKeyPublic.get(key) ?? new KeyObject('secret', secretOf(key));
}

// Web Crypto's public-key verification algorithms, by upper-case name.
const VERIFY_ALGORITHMS = { 'RSASSA-PKCS1-V1_5': 'RSASSA-PKCS1-v1_5', 'RSA-PSS': 'RSA-PSS', ECDSA: 'ECDSA' };

function algorithmName(algorithm) {
  return String(typeof algorithm === 'string' ? algorithm : algorithm?.name);
}

// subtle.importKey of an RSA or EC public key ('spki' or 'jwk'), for verify.
function importPublicKey(format, keyData, algorithm, extractable, usages) {
  const name = VERIFY_ALGORITHMS[algorithmName(algorithm).toUpperCase()];
  if (format === 'pkcs8' || (format === 'jwk' && keyData?.d !== undefined)) {
    throw signingRefused(`crypto.subtle.importKey of a private ${name} key`);
  }
  for (const u of usages) {
    if (u !== 'verify') throw domException(`Unsupported key usage for a ${name} public key: ${u}`, 'SyntaxError');
  }
  let keyObject;
  if (format === 'spki') keyObject = publicKeyObject(native.publicKey('spki', bytesToBinary(bufferSource(keyData, 'keyData'))));
  else if (format === 'jwk') {
    if (keyData === null || typeof keyData !== 'object') throw domException('Invalid JWK', 'DataError');
    keyObject = publicKeyObject(native.publicKey('jwk', JSON.stringify(keyData)));
  } else {
    throw new NotSupportedError(`crypto.subtle.importKey of a ${name} key in '${format}' format (Kiln imports 'spki' and 'jwk')`);
  }
  const info = publicKeys.get(keyObject);
  if (name === 'ECDSA') {
    if (info.type !== 'ec') throw domException('The key is not an EC key', 'DataError');
    if (algorithm.namedCurve !== info.curve) throw domException(`The key is on ${info.curve}, not ${algorithm.namedCurve}`, 'DataError');
    return makeCryptoKey(null, { name, namedCurve: info.curve }, extractable, usages, keyObject);
  }
  if (info.type !== 'rsa') throw domException('The key is not an RSA key', 'DataError');
  const exponent = Uint8Array.from(info.publicExponent.match(/../g).map((h) => parseInt(h, 16)));
  const hash = { name: webHashName(algorithm.hash) };
  return makeCryptoKey(null, { name, modulusLength: info.modulusLength, publicExponent: exponent, hash }, extractable, usages, keyObject);
}

// subtle.verify with a public key: Web Crypto's ECDSA signatures are r || s.
function verifyPublic(algorithm, key, signature, data) {
  const name = VERIFY_ALGORITHMS[algorithmName(algorithm).toUpperCase()];
  if (name !== key.algorithm.name) throw domException(`The key is a ${key.algorithm.name} key, not ${algorithmName(algorithm)}`, 'InvalidAccessError');
  if (!key.usages.includes('verify')) throw domException("The key does not allow 'verify'", 'InvalidAccessError');
  const info = publicKeys.get(cryptoKeyPublic.get(key));
  const hashOf = (h) => webHashName(h).replace('-', '').toLowerCase();
  let digest;
  let padding = 'pkcs1';
  if (name === 'ECDSA') digest = hashOf(algorithm.hash);
  else digest = hashOf(key.algorithm.hash);
  if (name === 'RSA-PSS') {
    padding = 'pss';
    if (algorithm.saltLength !== DIGEST_BYTES[digest]) {
      throw new NotSupportedError(`crypto.subtle.verify with an RSA-PSS saltLength of ${algorithm.saltLength} (Kiln verifies a salt as long as the digest: ${DIGEST_BYTES[digest]})`);
    }
  }
  const sig = bytesToBinary(bufferSource(signature, 'signature'));
  return native.verifySignature(bytesToBinary(new Uint8Array(info.spki)), digest, padding, 'ieee-p1363', bytesToBinary(bufferSource(data)), sig);
}

function exportPublicKey(format, key) {
  const keyObject = cryptoKeyPublic.get(key);
  const info = publicKeys.get(keyObject);
  if (format === 'spki') return toArrayBuffer(new Uint8Array(info.spki));
  if (format === 'jwk') {
    const jwk = { ...info.jwk, key_ops: [...key.usages], ext: true };
    const bits = key.algorithm.hash?.name.slice(4);
    if (key.algorithm.name === 'RSASSA-PKCS1-v1_5') jwk.alg = `RS${bits}`;
    if (key.algorithm.name === 'RSA-PSS') jwk.alg = `PS${bits}`;
    return jwk;
  }
  throw new NotSupportedError(`crypto.subtle.exportKey of a public key in '${format}' format (Kiln exports 'spki' and 'jwk')`);
}

function secretOf(key) {
  const bytes = cryptoKeySecrets.get(key);
  if (!bytes) throw invalidArgType('key', 'an instance of CryptoKey', key);
  return bytes;
}

function hmacKey(key, usage) {
  if (!(key instanceof CryptoKey) || key.algorithm.name !== 'HMAC') {
    throw domException('The key is not an HMAC key', 'InvalidAccessError');
  }
  if (!key.usages.includes(usage)) throw domException(`The key does not allow '${usage}'`, 'InvalidAccessError');
  return key;
}

const HASH_BLOCK_BITS = { 'SHA-1': 512, 'SHA-256': 512, 'SHA-384': 1024, 'SHA-512': 1024 };

const subtleImpl = {
  digest(algorithm, data) {
    const name = webHashName(algorithm).replace('-', '').toLowerCase();
    return toArrayBuffer(new Uint8Array(native.digest(name, bytesToBinary(bufferSource(data)))));
  },
  importKey(format, keyData, algorithm, extractable, usages) {
    const name = typeof algorithm === 'string' ? algorithm : algorithm?.name;
    if (VERIFY_ALGORITHMS[String(name).toUpperCase()]) return importPublicKey(format, keyData, algorithm, extractable, usages);
    if (String(name).toUpperCase() !== 'HMAC') {
      throw new NotSupportedError(`crypto.subtle.importKey for ${name} (Kiln imports HMAC keys, and RSASSA-PKCS1-v1_5, RSA-PSS and ECDSA public keys)`);
    }
    const hashAlg = webHashName(algorithm.hash);
    let bytes;
    if (format === 'raw') bytes = bufferSource(keyData, 'keyData').slice();
    else if (format === 'jwk') {
      if (keyData?.kty !== 'oct' || typeof keyData.k !== 'string') throw domException('Invalid JWK for an HMAC key', 'DataError');
      bytes = new Uint8Array(Buffer.from(keyData.k, 'base64url'));
    } else {
      throw new NotSupportedError(`crypto.subtle.importKey in '${format}' format`);
    }
    for (const u of usages) {
      if (u !== 'sign' && u !== 'verify') throw domException(`Unsupported key usage for an HMAC key: ${u}`, 'SyntaxError');
    }
    const length = algorithm.length ?? bytes.length * 8;
    return makeCryptoKey(bytes, { name: 'HMAC', hash: { name: hashAlg }, length }, extractable, usages);
  },
  exportKey(format, key) {
    if (cryptoKeyPublic.has(key)) {
      if (!key.extractable) throw domException('key is not extractable', 'InvalidAccessError');
      return exportPublicKey(format, key);
    }
    const bytes = secretOf(key);
    if (!key.extractable) throw domException('key is not extractable', 'InvalidAccessError');
    if (format === 'raw') return toArrayBuffer(bytes);
    if (format === 'jwk') {
      const alg = `HS${key.algorithm.hash.name.slice(4)}`;
      return { kty: 'oct', k: Buffer.from(bytes).toString('base64url'), alg, ext: true, key_ops: [...key.usages] };
    }
    throw new NotSupportedError(`crypto.subtle.exportKey in '${format}' format`);
  },
  generateKey(algorithm, extractable, usages) {
    const name = typeof algorithm === 'string' ? algorithm : algorithm?.name;
    if (String(name).toUpperCase() !== 'HMAC') throw new NotSupportedError(`crypto.subtle.generateKey for ${name}`);
    const hashAlg = webHashName(algorithm.hash);
    const length = algorithm.length ?? HASH_BLOCK_BITS[hashAlg];
    const bytes = fillRandom(new Uint8Array(Math.ceil(length / 8)));
    return makeCryptoKey(bytes, { name: 'HMAC', hash: { name: hashAlg }, length }, extractable, usages);
  },
  sign(algorithm, key, data) {
    hmacKey(key, 'sign');
    const alg = key.algorithm.hash.name.replace('-', '').toLowerCase();
    return toArrayBuffer(new Uint8Array(native.hmac(alg, bytesToBinary(secretOf(key)), bytesToBinary(bufferSource(data)))));
  },
  verify(algorithm, key, signature, data) {
    if (cryptoKeyPublic.has(key)) return verifyPublic(algorithm, key, signature, data);
    hmacKey(key, 'verify');
    const alg = key.algorithm.hash.name.replace('-', '').toLowerCase();
    const expected = new Uint8Array(native.hmac(alg, bytesToBinary(secretOf(key)), bytesToBinary(bufferSource(data))));
    const given = bufferSource(signature, 'signature');
    return given.length === expected.length && timingSafeEqual(given, expected);
  },
};

// Web Crypto's methods return promises; errors become rejections.
export const subtle = {};
for (const name of ['digest', 'importKey', 'exportKey', 'generateKey', 'sign', 'verify']) {
  subtle[name] = function (...args) {
    try {
      return Promise.resolve(subtleImpl[name](...args));
    } catch (e) {
      return Promise.reject(e);
    }
  };
}
for (const name of ['encrypt', 'decrypt', 'deriveBits', 'deriveKey', 'wrapKey', 'unwrapKey']) {
  subtle[name] = () => Promise.reject(new NotSupportedError(`crypto.subtle.${name}`));
}
Object.freeze(subtle);

export const webcrypto = Object.freeze({
  subtle,
  getRandomValues,
  randomUUID,
  CryptoKey,
});

// ---------------------------------------------------------------- not yet

export const createCipheriv = unsupported('crypto.createCipheriv');
export const createDecipheriv = unsupported('crypto.createDecipheriv');
export const generateKeyPair = unsupported('crypto.generateKeyPair');
export const generateKeyPairSync = unsupported('crypto.generateKeyPairSync');
export const generateKey = unsupported('crypto.generateKey');
export const generateKeySync = unsupported('crypto.generateKeySync');
export const pbkdf2 = unsupported('crypto.pbkdf2');
export const pbkdf2Sync = unsupported('crypto.pbkdf2Sync');
export const scrypt = unsupported('crypto.scrypt');
export const scryptSync = unsupported('crypto.scryptSync');
export const hkdf = unsupported('crypto.hkdf');
export const hkdfSync = unsupported('crypto.hkdfSync');
export const createDiffieHellman = unsupported('crypto.createDiffieHellman');
export const createDiffieHellmanGroup = unsupported('crypto.createDiffieHellmanGroup');
export const getDiffieHellman = unsupported('crypto.getDiffieHellman');
export const createECDH = unsupported('crypto.createECDH');
export const diffieHellman = unsupported('crypto.diffieHellman');
export const publicEncrypt = unsupported('crypto.publicEncrypt');
export const publicDecrypt = unsupported('crypto.publicDecrypt');
export const privateEncrypt = unsupported('crypto.privateEncrypt');
export const privateDecrypt = unsupported('crypto.privateDecrypt');
export const generatePrime = unsupported('crypto.generatePrime');
export const generatePrimeSync = unsupported('crypto.generatePrimeSync');
export const checkPrime = unsupported('crypto.checkPrime');
export const checkPrimeSync = unsupported('crypto.checkPrimeSync');
export const X509Certificate = unsupported('crypto.X509Certificate');
export const Certificate = unsupported('crypto.Certificate');

// The RSA constants verify options use, with Node's values.
export const constants = Object.freeze({
  RSA_PKCS1_PADDING: 1,
  RSA_NO_PADDING: 3,
  RSA_PKCS1_OAEP_PADDING: 4,
  RSA_X931_PADDING: 5,
  RSA_PKCS1_PSS_PADDING: 6,
  RSA_PSS_SALTLEN_DIGEST: -1,
  RSA_PSS_SALTLEN_MAX_SIGN: -2,
  RSA_PSS_SALTLEN_AUTO: -2,
});

export default {
  createHash,
  createHmac,
  hash,
  getHashes,
  getCiphers,
  getCurves,
  KeyObject,
  createSecretKey,
  randomBytes,
  pseudoRandomBytes,
  prng,
  rng,
  randomFillSync,
  randomFill,
  randomInt,
  randomUUID,
  getRandomValues,
  timingSafeEqual,
  subtle,
  webcrypto,
  createSign,
  createVerify,
  sign,
  verify,
  createCipheriv,
  createDecipheriv,
  createPrivateKey,
  createPublicKey,
  generateKeyPair,
  generateKeyPairSync,
  generateKey,
  generateKeySync,
  pbkdf2,
  pbkdf2Sync,
  scrypt,
  scryptSync,
  hkdf,
  hkdfSync,
  createDiffieHellman,
  createDiffieHellmanGroup,
  getDiffieHellman,
  createECDH,
  diffieHellman,
  publicEncrypt,
  publicDecrypt,
  privateEncrypt,
  privateDecrypt,
  generatePrime,
  generatePrimeSync,
  checkPrime,
  checkPrimeSync,
  X509Certificate,
  Certificate,
  constants,
};
