// node:buffer — Node's Buffer as a Uint8Array subclass, enough for real apps
// and the libraries they bundle (jsonwebtoken, jws, base64 helpers, ...).
// Compiled into every worker, evaluated only when app code imports it or
// first touches the global `Buffer`.
//
// Bytes cross into native code as "binary strings" (one character per byte):
// the engine offers safe Rust no view of a typed array's memory.
import { native } from 'kiln:natives';
import { TextEncoder, TextDecoder } from 'kiln:text';

// QuickJS caps an ArrayBuffer at 2^31 - 1 bytes; the invocation's memory
// limit is far lower in practice.
export const kMaxLength = 0x7fffffff;
export const kStringMaxLength = (1 << 29) - 24;
export const constants = Object.freeze({ MAX_LENGTH: kMaxLength, MAX_STRING_LENGTH: kStringMaxLength });
export let INSPECT_MAX_BYTES = 50;

const inspectSymbol = Symbol.for('nodejs.util.inspect.custom');

function codedError(Type, code, message) {
  const e = new Type(message);
  e.code = code;
  return e;
}

function describe(value) {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value === 'function') return `function ${value.name}`;
  if (typeof value === 'object') {
    return value.constructor && value.constructor.name ? `an instance of ${value.constructor.name}` : 'an object';
  }
  return `type ${typeof value} (${String(value).slice(0, 25)})`;
}

function invalidArgType(name, expected, value) {
  return codedError(TypeError, 'ERR_INVALID_ARG_TYPE', `The "${name}" argument must be ${expected}. Received ${describe(value)}`);
}

function outOfRange(name, range, value) {
  return codedError(RangeError, 'ERR_OUT_OF_RANGE', `The value of "${name}" is out of range. It must be ${range}. Received ${value}`);
}

// ---------------------------------------------------------------- encodings

function normalizeEncoding(encoding) {
  if (encoding === undefined || encoding === null || encoding === '') return 'utf8';
  switch (String(encoding).toLowerCase()) {
    case 'utf8': case 'utf-8': return 'utf8';
    case 'hex': return 'hex';
    case 'base64': return 'base64';
    case 'base64url': return 'base64url';
    case 'latin1': case 'binary': return 'latin1';
    case 'ascii': return 'ascii';
    case 'ucs2': case 'ucs-2': case 'utf16le': case 'utf-16le': return 'utf16le';
  }
  return undefined;
}

function encodingOf(encoding) {
  const e = normalizeEncoding(encoding);
  if (e === undefined) throw codedError(TypeError, 'ERR_UNKNOWN_ENCODING', `Unknown encoding: ${encoding}`);
  return e;
}

const CHUNK = 8192;

// Bytes to a binary string, in chunks small enough for `apply`.
export function bytesToBinary(bytes, start = 0, end = bytes.length) {
  let out = '';
  for (let i = start; i < end; i += CHUNK) {
    out += String.fromCharCode.apply(null, bytes.subarray(i, Math.min(end, i + CHUNK)));
  }
  return out;
}

function binaryToBytes(s) {
  const out = new FastBuffer(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0xff;
  return out;
}

let encoder;

function utf8Encode(s) {
  // The engine's URI encoder produces UTF-8 natively; it refuses lone
  // surrogates, which the Web encoder replaces with U+FFFD as Node does.
  let binary;
  try {
    binary = unescape(encodeURIComponent(s));
  } catch {
    encoder ??= new TextEncoder();
    const bytes = encoder.encode(s);
    return new FastBuffer(bytes.buffer, bytes.byteOffset, bytes.length);
  }
  return binaryToBytes(binary);
}

function utf8Decode(bytes, start, end) {
  const binary = bytesToBinary(bytes, start, end);
  // Pure ASCII needs no decoding.
  if (!/[\x80-\xff]/.test(binary)) return binary;
  try {
    return decodeURIComponent(escape(binary));
  } catch {
    return utf8DecodeLossy(bytes, start, end);
  }
}

// Malformed UTF-8, decoded as Node (and the WHATWG Encoding standard) do:
// each maximal invalid subsequence becomes one U+FFFD.
function utf8DecodeLossy(bytes, start, end) {
  let out = '';
  let i = start;
  while (i < end) {
    const b = bytes[i];
    if (b < 0x80) {
      out += String.fromCharCode(b);
      i++;
      continue;
    }
    let need = 0;
    let cp = 0;
    let lower = 0x80;
    let upper = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) { need = 1; cp = b & 0x1f; }
    else if (b >= 0xe0 && b <= 0xef) { need = 2; cp = b & 0x0f; if (b === 0xe0) lower = 0xa0; if (b === 0xed) upper = 0x9f; }
    else if (b >= 0xf0 && b <= 0xf4) { need = 3; cp = b & 0x07; if (b === 0xf0) lower = 0x90; if (b === 0xf4) upper = 0x8f; }
    else {
      out += '\ufffd';
      i++;
      continue;
    }
    let j = i + 1;
    let complete = true;
    for (let k = 0; k < need; k++, j++) {
      const c = bytes[j];
      if (j >= end || c < lower || c > upper) {
        complete = false;
        break;
      }
      cp = (cp << 6) | (c & 0x3f);
      lower = 0x80;
      upper = 0xbf;
    }
    // The byte that broke the sequence starts the next one.
    out += complete ? String.fromCodePoint(cp) : '\ufffd';
    i = j;
  }
  return out;
}

const HEX = Array.from({ length: 256 }, (_, i) => (i < 16 ? '0' : '') + i.toString(16));

function hexDecode(s) {
  const n = s.length >>> 1;
  const out = new FastBuffer(n);
  let i = 0;
  for (; i < n; i++) {
    const byte = parseInt(s.substr(i * 2, 2), 16);
    // Node stops at the first pair that is not hex.
    if (Number.isNaN(byte) || !/^[0-9a-fA-F]{2}$/.test(s.substr(i * 2, 2))) break;
    out[i] = byte;
  }
  return i === n ? out : out.subarray(0, i);
}

function stringToBytes(s, encoding) {
  switch (encoding) {
    case 'utf8': return utf8Encode(s);
    case 'hex': return hexDecode(s);
    case 'base64':
    case 'base64url': {
      const ab = native.base64Decode(s);
      return new FastBuffer(ab, 0, ab.byteLength);
    }
    case 'latin1':
    case 'ascii': return binaryToBytes(s);
    case 'utf16le': {
      const out = new FastBuffer(s.length * 2);
      for (let i = 0; i < s.length; i++) {
        const c = s.charCodeAt(i);
        out[i * 2] = c & 0xff;
        out[i * 2 + 1] = c >>> 8;
      }
      return out;
    }
  }
  throw codedError(TypeError, 'ERR_UNKNOWN_ENCODING', `Unknown encoding: ${encoding}`);
}

function bytesToString(bytes, encoding, start, end) {
  if (start >= end) return '';
  switch (encoding) {
    case 'utf8': return utf8Decode(bytes, start, end);
    case 'hex': {
      let out = '';
      for (let i = start; i < end; i++) out += HEX[bytes[i]];
      return out;
    }
    case 'base64': return native.btoa(bytesToBinary(bytes, start, end));
    case 'base64url':
      return native.btoa(bytesToBinary(bytes, start, end)).replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
    case 'latin1': return bytesToBinary(bytes, start, end);
    case 'ascii': {
      let out = '';
      for (let i = start; i < end; i += CHUNK) {
        out += String.fromCharCode.apply(null, Array.from(bytes.subarray(i, Math.min(end, i + CHUNK)), (b) => b & 0x7f));
      }
      return out;
    }
    case 'utf16le': {
      let out = '';
      for (let i = start; i + 1 < end; i += 2) out += String.fromCharCode(bytes[i] | (bytes[i + 1] << 8));
      return out;
    }
  }
  throw codedError(TypeError, 'ERR_UNKNOWN_ENCODING', `Unknown encoding: ${encoding}`);
}

function utf8Length(s) {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

function base64Length(s) {
  let n = s.length;
  if (n > 0 && s.charCodeAt(n - 1) === 0x3d) n--;
  if (n > 1 && s.charCodeAt(n - 1) === 0x3d) n--;
  return (n * 3) >>> 2;
}

// ---------------------------------------------------------------- Buffer

// Instances are FastBuffers; `Buffer` itself stays an ordinary function so
// that old code calling `Buffer(x)` or `Buffer.call(this)` keeps working.
class FastBuffer extends Uint8Array {}

export function Buffer(arg, encodingOrOffset, length) {
  if (typeof arg === 'number') {
    if (typeof encodingOrOffset === 'string') {
      throw invalidArgType('string', 'of type string', arg);
    }
    return Buffer.alloc(arg);
  }
  return Buffer.from(arg, encodingOrOffset, length);
}

Buffer.prototype = FastBuffer.prototype;
Object.defineProperty(Buffer.prototype, 'constructor', { value: Buffer, writable: true, configurable: true });
Object.setPrototypeOf(Buffer, Uint8Array);
Object.defineProperty(Buffer, Symbol.species, { get: () => FastBuffer, configurable: true });
Buffer.poolSize = 8192;

function checkSize(size) {
  if (typeof size !== 'number') throw invalidArgType('size', 'of type number', size);
  if (!(size >= 0 && size <= kMaxLength)) throw outOfRange('size', `>= 0 && <= ${kMaxLength}`, size);
}

Buffer.from = function from(value, encodingOrOffset, length) {
  if (typeof value === 'string') return stringToBytes(value, encodingOf(encodingOrOffset));
  if (typeof value === 'object' && value !== null) {
    if (value instanceof ArrayBuffer || (typeof SharedArrayBuffer !== 'undefined' && value instanceof SharedArrayBuffer)) {
      const offset = encodingOrOffset === undefined ? 0 : Math.trunc(Number(encodingOrOffset)) || 0;
      if (offset < 0 || offset > value.byteLength) {
        throw codedError(RangeError, 'ERR_BUFFER_OUT_OF_BOUNDS', '"offset" is outside of buffer bounds');
      }
      const max = value.byteLength - offset;
      const len = length === undefined ? max : Math.trunc(Number(length)) || 0;
      if (len > max) throw codedError(RangeError, 'ERR_BUFFER_OUT_OF_BOUNDS', '"length" is outside of buffer bounds');
      return new FastBuffer(value, offset, Math.max(0, len));
    }
    if (ArrayBuffer.isView(value)) {
      if (value instanceof DataView) {
        return new FastBuffer(new Uint8Array(value.buffer, value.byteOffset, value.byteLength));
      }
      const out = new FastBuffer(value.length);
      out.set(value);
      return out;
    }
    const primitive = value.valueOf();
    if (primitive != null && primitive !== value) return Buffer.from(primitive, encodingOrOffset, length);
    if (typeof value.length === 'number' || Array.isArray(value)) return fromArrayLike(value);
    if (value.type === 'Buffer' && Array.isArray(value.data)) return fromArrayLike(value.data);
    if (typeof value[Symbol.toPrimitive] === 'function') {
      return Buffer.from(value[Symbol.toPrimitive]('string'), encodingOrOffset, length);
    }
  }
  throw invalidArgType(
    'first',
    'of type string or an instance of Buffer, ArrayBuffer, or Array or an Array-like Object',
    value,
  );
};

function fromArrayLike(list) {
  const n = list.length > 0 ? Math.trunc(list.length) : 0;
  const out = new FastBuffer(n);
  for (let i = 0; i < n; i++) out[i] = list[i] & 0xff;
  return out;
}

Buffer.of = function of(...items) { return fromArrayLike(items); };

Buffer.alloc = function alloc(size, fill, encoding) {
  checkSize(size);
  const out = new FastBuffer(size);
  if (fill !== undefined && fill !== 0 && size > 0) out.fill(fill, 0, out.length, encoding);
  return out;
};

Buffer.allocUnsafe = function allocUnsafe(size) {
  checkSize(size);
  return new FastBuffer(size);
};

Buffer.allocUnsafeSlow = Buffer.allocUnsafe;

Buffer.isBuffer = function isBuffer(b) { return b instanceof Buffer; };

Buffer.isEncoding = function isEncoding(encoding) {
  return typeof encoding === 'string' && encoding.length > 0 && normalizeEncoding(encoding) !== undefined;
};

Buffer.byteLength = function byteLength(value, encoding) {
  if (typeof value !== 'string') {
    if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return value.byteLength;
    throw invalidArgType('string', 'of type string or an instance of Buffer or ArrayBuffer', value);
  }
  switch (normalizeEncoding(encoding) ?? 'utf8') {
    case 'utf8': return utf8Length(value);
    case 'hex': return value.length >>> 1;
    case 'base64': case 'base64url': return base64Length(value);
    case 'utf16le': return value.length * 2;
    default: return value.length;
  }
};

function asBytes(value, name) {
  if (value instanceof Uint8Array) return value;
  throw invalidArgType(name, 'an instance of Buffer or Uint8Array', value);
}

function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  }
  return a.length < b.length ? -1 : a.length > b.length ? 1 : 0;
}

Buffer.compare = function compare(a, b) {
  return compareBytes(asBytes(a, 'buf1'), asBytes(b, 'buf2'));
};

Buffer.concat = function concat(list, totalLength) {
  if (!Array.isArray(list)) throw invalidArgType('list', 'an instance of Array', list);
  if (list.length === 0) return new FastBuffer(0);
  let length = totalLength;
  if (length === undefined) {
    length = 0;
    for (let i = 0; i < list.length; i++) length += asBytes(list[i], `list[${i}]`).length;
  }
  const out = Buffer.allocUnsafe(length);
  let at = 0;
  for (let i = 0; i < list.length && at < length; i++) {
    const part = asBytes(list[i], `list[${i}]`);
    const n = Math.min(part.length, length - at);
    out.set(n === part.length ? part : part.subarray(0, n), at);
    at += n;
  }
  if (at < length) out.fill(0, at);
  return out;
};

Buffer.copyBytesFrom = function copyBytesFrom(view, offset = 0, length) {
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  const size = view.BYTES_PER_ELEMENT || 1;
  const end = length === undefined ? view.length : Math.min(view.length, offset + length);
  return Buffer.from(bytes.slice(offset * size, end * size));
};

// ---------------------------------------------------------------- prototype

const proto = Buffer.prototype;

function clampRange(len, start, end) {
  let s = start === undefined ? 0 : Math.trunc(Number(start)) || 0;
  let e = end === undefined ? len : Math.trunc(Number(end)) || 0;
  if (s < 0) s = 0;
  if (e > len) e = len;
  return [s, e];
}

proto.toString = function toString(encoding, start, end) {
  if (arguments.length === 0) return utf8Decode(this, 0, this.length);
  const [s, e] = clampRange(this.length, start, end);
  return bytesToString(this, encodingOf(encoding), s, e);
};

proto.toLocaleString = proto.toString;

proto.toJSON = function toJSON() {
  return { type: 'Buffer', data: Array.from(this) };
};

proto.equals = function equals(other) {
  if (!(other instanceof Uint8Array)) throw invalidArgType('otherBuffer', 'an instance of Buffer or Uint8Array', other);
  return this === other || compareBytes(this, other) === 0;
};

proto.compare = function compare(target, targetStart = 0, targetEnd = target?.length, sourceStart = 0, sourceEnd = this.length) {
  asBytes(target, 'target');
  return compareBytes(this.subarray(sourceStart, sourceEnd), target.subarray(targetStart, targetEnd));
};

proto.copy = function copy(target, targetStart = 0, sourceStart = 0, sourceEnd = this.length) {
  asBytes(target, 'target');
  if (targetStart < 0) throw outOfRange('targetStart', '>= 0', targetStart);
  if (sourceStart < 0) throw outOfRange('sourceStart', '>= 0', sourceStart);
  const end = Math.min(sourceEnd, this.length);
  const n = Math.max(0, Math.min(end - sourceStart, target.length - targetStart));
  if (n > 0) target.set(this.subarray(sourceStart, sourceStart + n), targetStart);
  return n;
};

// Node's slice shares memory, unlike Uint8Array's.
proto.slice = function slice(start, end) {
  const sub = Uint8Array.prototype.subarray.call(this, start, end);
  return new FastBuffer(sub.buffer, sub.byteOffset, sub.length);
};

proto.subarray = proto.slice;

proto.write = function write(string, offset, length, encoding) {
  if (typeof string !== 'string') throw invalidArgType('argument', 'of type string', string);
  if (typeof offset === 'string') { encoding = offset; offset = 0; length = undefined; }
  else if (typeof length === 'string') { encoding = length; length = undefined; }
  offset = offset === undefined ? 0 : offset >>> 0;
  if (offset > this.length) throw outOfRange('offset', `>= 0 && <= ${this.length}`, offset);
  const room = this.length - offset;
  length = length === undefined ? room : Math.min(room, length >>> 0);
  const enc = encodingOf(encoding);
  let bytes = stringToBytes(string, enc);
  if (bytes.length > length) {
    let n = length;
    // Never write part of a character.
    if (enc === 'utf8') while (n > 0 && (bytes[n] & 0xc0) === 0x80) n--;
    else if (enc === 'utf16le') n -= n % 2;
    bytes = bytes.subarray(0, n);
  }
  this.set(bytes, offset);
  return bytes.length;
};

proto.fill = function fill(value, offset, end, encoding) {
  if (typeof offset === 'string') { encoding = offset; offset = 0; end = this.length; }
  else if (typeof end === 'string') { encoding = end; end = this.length; }
  const [s, e] = clampRange(this.length, offset, end);
  if (s >= e) return this;
  if (typeof value === 'number') return Uint8Array.prototype.fill.call(this, value & 0xff, s, e);
  if (typeof value === 'boolean') return Uint8Array.prototype.fill.call(this, Number(value), s, e);
  const bytes = typeof value === 'string' ? stringToBytes(value, encodingOf(encoding)) : asBytes(value, 'value');
  if (bytes.length === 0) {
    if (typeof value === 'string' && value.length > 0) {
      throw codedError(TypeError, 'ERR_INVALID_ARG_VALUE', `The argument 'value' is invalid. Received '${value}'`);
    }
    return Uint8Array.prototype.fill.call(this, 0, s, e);
  }
  for (let i = s; i < e; i++) this[i] = bytes[(i - s) % bytes.length];
  return this;
};

function needleBytes(value, encoding) {
  if (typeof value === 'string') return stringToBytes(value, encodingOf(encoding));
  if (value instanceof Uint8Array) return value;
  if (typeof value === 'number') return Uint8Array.of(value & 0xff);
  throw invalidArgType('value', 'one of type number or string or an instance of Buffer or Uint8Array', value);
}

function search(buf, value, byteOffset, encoding, last) {
  if (typeof byteOffset === 'string') { encoding = byteOffset; byteOffset = undefined; }
  const needle = needleBytes(value, encoding);
  const len = buf.length;
  let from = byteOffset === undefined ? (last ? len : 0) : Math.trunc(Number(byteOffset)) || 0;
  if (from < 0) from += len;
  if (last) {
    for (let i = Math.min(from, len - needle.length); i >= 0; i--) if (matchesAt(buf, needle, i)) return i;
    return -1;
  }
  if (from < 0) from = 0;
  if (needle.length === 0) return from <= len ? from : len;
  for (let i = from; i + needle.length <= len; i++) if (matchesAt(buf, needle, i)) return i;
  return -1;
}

function matchesAt(buf, needle, at) {
  for (let j = 0; j < needle.length; j++) if (buf[at + j] !== needle[j]) return false;
  return true;
}

proto.indexOf = function indexOf(value, byteOffset, encoding) { return search(this, value, byteOffset, encoding, false); };
proto.lastIndexOf = function lastIndexOf(value, byteOffset, encoding) { return search(this, value, byteOffset, encoding, true); };
proto.includes = function includes(value, byteOffset, encoding) { return this.indexOf(value, byteOffset, encoding) !== -1; };

function swap(buf, size) {
  if (buf.length % size !== 0) {
    throw codedError(RangeError, 'ERR_INVALID_BUFFER_SIZE', `Buffer size must be a multiple of ${size * 8}-bits`);
  }
  for (let i = 0; i < buf.length; i += size) {
    for (let a = i, b = i + size - 1; a < b; a++, b--) {
      const t = buf[a];
      buf[a] = buf[b];
      buf[b] = t;
    }
  }
  return buf;
}
proto.swap16 = function swap16() { return swap(this, 2); };
proto.swap32 = function swap32() { return swap(this, 4); };
proto.swap64 = function swap64() { return swap(this, 8); };

proto[inspectSymbol] = function inspect() {
  const max = INSPECT_MAX_BYTES;
  let out = '';
  for (let i = 0; i < Math.min(max, this.length); i++) out += (i ? ' ' : '') + HEX[this[i]];
  if (this.length > max) out += ` ... ${this.length - max} more byte${this.length - max > 1 ? 's' : ''}`;
  return `<Buffer${out ? ' ' + out : ''}>`;
};

// ---------------------------------------------------------------- numbers

function view(buf) {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

function checkOffset(buf, offset, size) {
  if (offset === undefined) offset = 0;
  if (typeof offset !== 'number') throw invalidArgType('offset', 'of type number', offset);
  if (!Number.isInteger(offset)) throw outOfRange('offset', 'an integer', offset);
  if (offset < 0 || offset + size > buf.length) {
    if (buf.length - size < 0) {
      throw codedError(RangeError, 'ERR_BUFFER_OUT_OF_BOUNDS', 'Attempt to access memory outside buffer bounds');
    }
    throw outOfRange('offset', `>= 0 and <= ${buf.length - size}`, offset);
  }
  return offset;
}

function checkValue(value, min, max) {
  if (typeof value !== 'number' && typeof value !== 'bigint') throw invalidArgType('value', 'of type number', value);
  if (value > max || value < min) throw outOfRange('value', `>= ${min} and <= ${max}`, value);
}

const numberKinds = [
  // name, size, DataView getter/setter stem, min, max
  ['UInt8', 1, 'Uint8', 0, 0xff],
  ['Int8', 1, 'Int8', -0x80, 0x7f],
  ['UInt16', 2, 'Uint16', 0, 0xffff],
  ['Int16', 2, 'Int16', -0x8000, 0x7fff],
  ['UInt32', 4, 'Uint32', 0, 0xffffffff],
  ['Int32', 4, 'Int32', -0x80000000, 0x7fffffff],
  ['Float', 4, 'Float32', -Infinity, Infinity],
  ['Double', 8, 'Float64', -Infinity, Infinity],
  ['BigUInt64', 8, 'BigUint64', 0n, 0xffffffffffffffffn],
  ['BigInt64', 8, 'BigInt64', -0x8000000000000000n, 0x7fffffffffffffffn],
];

for (const [name, size, stem, min, max] of numberKinds) {
  const ends = size === 1 ? [['', false]] : [['LE', true], ['BE', false]];
  for (const [suffix, little] of ends) {
    const read = function (offset) {
      return view(this)[`get${stem}`](checkOffset(this, offset, size), little);
    };
    const write = function (value, offset) {
      const at = checkOffset(this, offset, size);
      if (stem.startsWith('Big')) {
        if (typeof value !== 'bigint') throw invalidArgType('value', 'of type bigint', value);
        checkValue(value, min, max);
      } else if (min !== -Infinity) {
        checkValue(+value, min, max);
      }
      view(this)[`set${stem}`](at, stem.startsWith('Big') ? value : +value, little);
      return at + size;
    };
    for (const alias of new Set([name, name.replace('UInt', 'Uint')])) {
      proto[`read${alias}${suffix}`] = read;
      proto[`write${alias}${suffix}`] = write;
    }
  }
}

function checkByteLength(byteLength) {
  if (!Number.isInteger(byteLength) || byteLength < 1 || byteLength > 6) throw outOfRange('byteLength', '>= 1 and <= 6', byteLength);
}

function readVariable(buf, offset, byteLength, little, signed) {
  checkByteLength(byteLength);
  checkOffset(buf, offset, byteLength);
  let value = 0;
  for (let i = 0; i < byteLength; i++) {
    value += buf[offset + (little ? i : byteLength - 1 - i)] * 2 ** (8 * i);
  }
  if (signed && value >= 2 ** (8 * byteLength - 1)) value -= 2 ** (8 * byteLength);
  return value;
}

function writeVariable(buf, value, offset, byteLength, little, signed) {
  checkByteLength(byteLength);
  checkOffset(buf, offset, byteLength);
  const bits = 8 * byteLength;
  const [min, max] = signed ? [-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] : [0, 2 ** bits - 1];
  checkValue(+value, min, max);
  let v = +value < 0 ? +value + 2 ** bits : +value;
  for (let i = 0; i < byteLength; i++) {
    buf[offset + (little ? i : byteLength - 1 - i)] = v % 256;
    v = Math.floor(v / 256);
  }
  return offset + byteLength;
}

for (const alias of ['UInt', 'Uint']) {
  proto[`read${alias}LE`] = function (offset, byteLength) { return readVariable(this, offset, byteLength, true, false); };
  proto[`read${alias}BE`] = function (offset, byteLength) { return readVariable(this, offset, byteLength, false, false); };
  proto[`write${alias}LE`] = function (value, offset, byteLength) { return writeVariable(this, value, offset, byteLength, true, false); };
  proto[`write${alias}BE`] = function (value, offset, byteLength) { return writeVariable(this, value, offset, byteLength, false, false); };
}
proto.readIntLE = function (offset, byteLength) { return readVariable(this, offset, byteLength, true, true); };
proto.readIntBE = function (offset, byteLength) { return readVariable(this, offset, byteLength, false, true); };
proto.writeIntLE = function (value, offset, byteLength) { return writeVariable(this, value, offset, byteLength, true, true); };
proto.writeIntBE = function (value, offset, byteLength) { return writeVariable(this, value, offset, byteLength, false, true); };

// ---------------------------------------------------------------- the rest of the module

// Deprecated in Node but still read at load time by libraries that patch
// both prototypes (buffer-equal-constant-time, used by jws/jsonwebtoken).
export function SlowBuffer(size) { return Buffer.allocUnsafe(size); }
Object.setPrototypeOf(SlowBuffer.prototype, Uint8Array.prototype);
Object.setPrototypeOf(SlowBuffer, Uint8Array);

export function isUtf8(input) {
  const bytes = input instanceof ArrayBuffer ? new Uint8Array(input) : new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
  try {
    new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
    return true;
  } catch {
    return false;
  }
}

export function isAscii(input) {
  const bytes = input instanceof ArrayBuffer ? new Uint8Array(input) : new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
  return bytes.every((b) => b < 0x80);
}

export const atob = (data) => globalThis.atob(data);
export const btoa = (data) => globalThis.btoa(data);

export default {
  Buffer,
  SlowBuffer,
  kMaxLength,
  kStringMaxLength,
  constants,
  INSPECT_MAX_BYTES,
  isUtf8,
  isAscii,
  atob,
  btoa,
};
