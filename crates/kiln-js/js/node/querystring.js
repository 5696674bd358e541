// node:querystring — Node's legacy query strings: repeated keys become
// arrays, '+' is a space, and undecodable escapes are kept byte by byte.
import { TextDecoder } from 'kiln:text';

export function escape(str) {
  return encodeURIComponent(typeof str === 'string' ? str : String(str));
}

// Percent-escapes decoded byte by byte, bad UTF-8 replaced (Node's
// unescapeBuffer, as a string).
function decodeLossy(s) {
  const bytes = [];
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 37 && i + 2 < s.length && /^[0-9a-fA-F]{2}$/.test(s.substr(i + 1, 2))) {
      bytes.push(parseInt(s.substr(i + 1, 2), 16));
      i += 2;
    } else if (c < 0x80) {
      bytes.push(c);
    } else {
      for (const b of new TextEncoderLite(s[i])) bytes.push(b);
    }
  }
  return new TextDecoder().decode(new Uint8Array(bytes));
}

// UTF-8 of one UTF-16 code unit (lone surrogates become U+FFFD's bytes).
function TextEncoderLite(ch) {
  const c = ch.charCodeAt(0);
  if (c < 0x800) return [0xc0 | (c >> 6), 0x80 | (c & 63)];
  if (c >= 0xd800 && c <= 0xdfff) return [0xef, 0xbf, 0xbd];
  return [0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63)];
}

export function unescape(s) {
  try {
    return decodeURIComponent(s);
  } catch {
    return decodeLossy(s);
  }
}

function stringifyPrimitive(v) {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' && Number.isFinite(v)) return String(v);
  if (typeof v === 'bigint') return String(v);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  return '';
}

export function stringify(obj, sep = '&', eq = '=', options) {
  const encode = options && typeof options.encodeURIComponent === 'function' ? options.encodeURIComponent : escape;
  sep = sep || '&';
  eq = eq || '=';
  if (obj === null || typeof obj !== 'object') return '';
  const parts = [];
  for (const key of Object.keys(obj)) {
    const value = obj[key];
    const k = encode(stringifyPrimitive(key)) + eq;
    if (Array.isArray(value)) {
      for (const item of value) parts.push(k + encode(stringifyPrimitive(item)));
    } else {
      parts.push(k + encode(stringifyPrimitive(value)));
    }
  }
  return parts.join(sep);
}

export function parse(qs, sep = '&', eq = '=', options) {
  const obj = Object.create(null);
  if (typeof qs !== 'string' || qs.length === 0) return obj;
  sep = sep || '&';
  eq = eq || '=';
  const maxKeys = options && typeof options.maxKeys === 'number' ? options.maxKeys : 1000;
  const decode = options && typeof options.decodeURIComponent === 'function' ? options.decodeURIComponent : unescape;
  let pairs = qs.split(sep);
  if (maxKeys > 0) pairs = pairs.slice(0, maxKeys);
  for (const pair of pairs) {
    if (pair.length === 0) continue;
    const at = pair.indexOf(eq);
    const rawKey = at >= 0 ? pair.slice(0, at) : pair;
    const rawValue = at >= 0 ? pair.slice(at + eq.length) : '';
    const key = decodePart(rawKey, decode);
    const value = decodePart(rawValue, decode);
    const existing = obj[key];
    if (existing === undefined) obj[key] = value;
    else if (Array.isArray(existing)) existing.push(value);
    else obj[key] = [existing, value];
  }
  return obj;
}

function decodePart(s, decode) {
  const spaced = s.replace(/\+/g, ' ');
  try {
    return decode(spaced);
  } catch {
    return unescape(spaced);
  }
}

export const encode = stringify;
export const decode = parse;

export default { escape, unescape, stringify, parse, encode, decode };
