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
  // Whole characters only: `read` counts the UTF-16 code units whose bytes
  // were written, and a character that does not fit ends the copy.
  encodeInto(input, dest) {
    if (!(dest instanceof Uint8Array)) throw new TypeError('encodeInto needs a Uint8Array destination');
    const s = String(input);
    let read = 0;
    let written = 0;
    while (read < s.length) {
      const units = s.codePointAt(read) > 0xffff ? 2 : 1;
      const bytes = utf8Encode(s.slice(read, read + units));
      if (written + bytes.length > dest.length) break;
      dest.set(bytes, written);
      written += bytes.length;
      read += units;
    }
    return { read, written };
  }
}

// windows-1252's characters for the bytes 0x80-0x9f (the rest are
// Latin-1); WHATWG maps the labels latin1, iso-8859-1 and ascii to it.
const WINDOWS_1252 = [
  0x20ac, 0x81, 0x201a, 0x192, 0x201e, 0x2026, 0x2020, 0x2021, 0x2c6, 0x2030, 0x160, 0x2039, 0x152, 0x8d, 0x17d, 0x8f,
  0x90, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014, 0x2dc, 0x2122, 0x161, 0x203a, 0x153, 0x9d, 0x17e, 0x178,
];

function utf16Decode(bytes, littleEndian, fatal) {
  let out = '';
  const end = bytes.length - (bytes.length % 2);
  for (let i = 0; i < end; i += 2) {
    out += String.fromCharCode(littleEndian ? bytes[i] | (bytes[i + 1] << 8) : (bytes[i] << 8) | bytes[i + 1]);
  }
  if (end < bytes.length) {
    if (fatal) throw new TypeError('The encoded data was not valid UTF-16');
    out += '\ufffd';
  }
  const wellFormed = out.toWellFormed();
  if (fatal && wellFormed !== out) throw new TypeError('The encoded data was not valid UTF-16');
  return wellFormed;
}

function windows1252Decode(bytes) {
  let out = '';
  for (const b of bytes) out += String.fromCharCode(b >= 0x80 && b < 0xa0 ? WINDOWS_1252[b - 0x80] : b);
  return out;
}

// The encodings TextDecoder knows, by WHATWG label.
const ENCODINGS = new Map([
  ...['utf-8', 'utf8', 'unicode-1-1-utf-8', 'unicode11utf8', 'unicode20utf8', 'x-unicode20utf8'].map((l) => [l, 'utf-8']),
  ...['utf-16le', 'utf-16', 'ucs-2', 'unicode', 'csunicode', 'iso-10646-ucs-2', 'unicodefeff'].map((l) => [l, 'utf-16le']),
  ...['utf-16be', 'unicodefffe'].map((l) => [l, 'utf-16be']),
  ...['windows-1252', 'latin1', 'iso-8859-1', 'iso8859-1', 'iso88591', 'iso_8859-1', 'l1', 'ascii', 'us-ascii',
    'cp1252', 'cp819', 'ibm819', 'x-cp1252', 'ansi_x3.4-1968', 'csisolatin1', 'iso-ir-100'].map((l) => [l, 'windows-1252']),
]);

const BOMS = { 'utf-8': [0xef, 0xbb, 0xbf], 'utf-16le': [0xff, 0xfe], 'utf-16be': [0xfe, 0xff] };

class TextDecoder {
  #encoding;
  #fatal;
  #ignoreBOM;
  constructor(label = 'utf-8', options = {}) {
    const encoding = ENCODINGS.get(String(label).trim().toLowerCase());
    if (!encoding) {
      throw new RangeError(`TextDecoder: encoding '${label}' is not supported (utf-8, utf-16le, utf-16be and windows-1252 are)`);
    }
    this.#encoding = encoding;
    this.#fatal = Boolean(options.fatal);
    this.#ignoreBOM = Boolean(options.ignoreBOM);
  }
  get encoding() { return this.#encoding; }
  get fatal() { return this.#fatal; }
  get ignoreBOM() { return this.#ignoreBOM; }
  // Streaming (`{ stream: true }`) is not supported: each call decodes its
  // bytes as a whole.
  decode(input) {
    let bytes = toBytes(input);
    const bom = BOMS[this.#encoding];
    if (!this.#ignoreBOM && bom && bom.every((b, i) => bytes[i] === b)) bytes = bytes.subarray(bom.length);
    switch (this.#encoding) {
      case 'utf-16le': return utf16Decode(bytes, true, this.#fatal);
      case 'utf-16be': return utf16Decode(bytes, false, this.#fatal);
      case 'windows-1252': return windows1252Decode(bytes);
      default: return utf8Decode(bytes, this.#fatal);
    }
  }
}

export { TextEncoder, TextDecoder };

