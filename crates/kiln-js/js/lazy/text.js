// Loaded by the prelude the first time app code touches one of these
// globals, so invocations that never use them do not pay for them.
// ---------------------------------------------------------------- encoding

function utf8Encode(input) {
  const s = String(input);
  const bytes = [];
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i++;
      } else {
        c = 0xfffd;
      }
    } else if (c >= 0xd800 && c <= 0xdfff) {
      c = 0xfffd;
    }
    if (c < 0x80) bytes.push(c);
    else if (c < 0x800) bytes.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) bytes.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else bytes.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return new Uint8Array(bytes);
}

function utf8Decode(bytes, fatal) {
  let out = '';
  let i = 0;
  const bad = () => {
    if (fatal) throw new TypeError('The encoded data was not valid UTF-8');
    out += '\ufffd';
  };
  while (i < bytes.length) {
    const b = bytes[i];
    let need = 0;
    let c = 0;
    if (b < 0x80) { out += String.fromCharCode(b); i++; continue; }
    else if (b >= 0xc2 && b <= 0xdf) { need = 1; c = b & 0x1f; }
    else if (b >= 0xe0 && b <= 0xef) { need = 2; c = b & 0x0f; }
    else if (b >= 0xf0 && b <= 0xf4) { need = 3; c = b & 0x07; }
    else { bad(); i++; continue; }
    let ok = true;
    for (let k = 1; k <= need; k++) {
      const n = bytes[i + k];
      if (n === undefined || (n & 0xc0) !== 0x80) { ok = false; break; }
      c = (c << 6) | (n & 0x3f);
    }
    if (!ok || (need === 2 && c < 0x800) || (need === 3 && (c < 0x10000 || c > 0x10ffff)) || (c >= 0xd800 && c <= 0xdfff)) {
      bad();
      i++;
      continue;
    }
    out += String.fromCodePoint(c);
    i += need + 1;
  }
  return out;
}

function toBytes(input) {
  if (input === undefined) return new Uint8Array(0);
  if (input instanceof Uint8Array) return input;
  if (ArrayBuffer.isView(input)) return new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
  if (input instanceof ArrayBuffer) return new Uint8Array(input);
  throw new TypeError('expected an ArrayBuffer or a typed array');
}

class TextEncoder {
  get encoding() { return 'utf-8'; }
  encode(input = '') { return utf8Encode(input); }
  encodeInto(input, dest) {
    const bytes = utf8Encode(input);
    const n = Math.min(bytes.length, dest.length);
    dest.set(bytes.subarray(0, n));
    return { read: String(input).length, written: n };
  }
}

class TextDecoder {
  #fatal;
  #ignoreBOM;
  constructor(label = 'utf-8', options = {}) {
    const l = String(label).toLowerCase();
    if (l !== 'utf-8' && l !== 'utf8' && l !== 'unicode-1-1-utf-8') {
      throw new RangeError(`TextDecoder: encoding '${label}' is not supported (only utf-8)`);
    }
    this.#fatal = Boolean(options.fatal);
    this.#ignoreBOM = Boolean(options.ignoreBOM);
  }
  get encoding() { return 'utf-8'; }
  get fatal() { return this.#fatal; }
  get ignoreBOM() { return this.#ignoreBOM; }
  decode(input) {
    let bytes = toBytes(input);
    if (!this.#ignoreBOM && bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) bytes = bytes.subarray(3);
    return utf8Decode(bytes, this.#fatal);
  }
}

export { TextEncoder, TextDecoder };

