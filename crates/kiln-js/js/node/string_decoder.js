// node:string_decoder — decodes a stream of byte chunks without splitting
// multi-byte characters (UTF-8, UTF-16LE) or base64 groups across chunks.
import { Buffer } from 'builtin:node:buffer';

function normalize(encoding) {
  const e = String(encoding ?? 'utf8').toLowerCase();
  switch (e) {
    case 'utf8': case 'utf-8': case '': return 'utf8';
    case 'ucs2': case 'ucs-2': case 'utf16le': case 'utf-16le': return 'utf16le';
    case 'latin1': case 'binary': return 'latin1';
    case 'base64': case 'base64url': case 'hex': case 'ascii': return e;
  }
  const err = new TypeError(`Unknown encoding: ${encoding}`);
  err.code = 'ERR_UNKNOWN_ENCODING';
  throw err;
}

function bytesOf(buf) {
  if (typeof buf === 'string') return Buffer.from(buf);
  if (ArrayBuffer.isView(buf)) return Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const e = new TypeError('The "buf" argument must be an instance of Buffer, TypedArray, or DataView.');
  e.code = 'ERR_INVALID_ARG_TYPE';
  throw e;
}

// How many bytes at the end of `bytes` start a UTF-8 character that is not complete yet.
function utf8Incomplete(bytes) {
  for (let back = 1; back <= Math.min(3, bytes.length); back++) {
    const b = bytes[bytes.length - back];
    if ((b & 0xc0) === 0x80) continue;
    const need = b >= 0xf0 && b <= 0xf4 ? 4 : b >= 0xe0 ? 3 : b >= 0xc2 && b < 0xe0 ? 2 : 1;
    return need > back ? back : 0;
  }
  return 0;
}

export class StringDecoder {
  #pending = Buffer.alloc(0);
  constructor(encoding) {
    this.encoding = normalize(encoding);
  }
  write(buf) {
    let bytes = bytesOf(buf);
    if (bytes.length === 0) return '';
    if (this.#pending.length > 0) bytes = Buffer.concat([this.#pending, bytes]);
    let keep = 0;
    switch (this.encoding) {
      case 'utf8': keep = utf8Incomplete(bytes); break;
      case 'utf16le': {
        keep = bytes.length % 2;
        // Keep a high surrogate until its pair arrives.
        const end = bytes.length - keep;
        if (end >= 2) {
          const unit = bytes[end - 2] | (bytes[end - 1] << 8);
          if (unit >= 0xd800 && unit <= 0xdbff) keep += 2;
        }
        break;
      }
      case 'base64': case 'base64url': keep = bytes.length % 3; break;
    }
    this.#pending = Buffer.from(bytes.subarray(bytes.length - keep));
    return bytes.toString(this.encoding, 0, bytes.length - keep);
  }
  end(buf) {
    let out = buf === undefined ? '' : this.write(buf);
    if (this.#pending.length > 0) {
      out += this.encoding === 'utf8' ? '\ufffd' : this.#pending.toString(this.encoding);
      this.#pending = Buffer.alloc(0);
    }
    return out;
  }
  text(buf, offset) {
    return this.write(bytesOf(buf).subarray(offset));
  }
  get lastNeed() {
    return this.#pending.length;
  }
}

export default { StringDecoder };
