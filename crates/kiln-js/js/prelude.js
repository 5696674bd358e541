// Kiln's prelude: the globals every invocation starts with, built on the
// native `__kiln` object the engine installs. It runs in every fresh runtime
// before app code, so nothing here survives from one invocation to the next.
//
// This file is Kiln's own code. It is not a security boundary: app code runs
// in the same runtime and can reach everything here. The boundary is the
// process (jail) and the server, which checks every host call.

const native = globalThis.__kiln;
delete globalThis.__kiln;

const define = (name, value) =>
  Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });

// ---------------------------------------------------------------- console

const MAX_INSPECT_DEPTH = 4;
const MAX_INSPECT_ITEMS = 50;

function inspect(value, depth, seen) {
  switch (typeof value) {
    case 'string':
      return depth === 0 ? value : JSON.stringify(value);
    case 'number':
    case 'boolean':
    case 'undefined':
      return String(value);
    case 'bigint':
      return `${value}n`;
    case 'symbol':
      return value.toString();
    case 'function':
      return `[Function: ${value.name || 'anonymous'}]`;
  }
  if (value === null) return 'null';
  if (seen.includes(value)) return '[Circular]';
  if (value instanceof Error) return value.stack ? `${value.name}: ${value.message}\n${value.stack}` : `${value.name}: ${value.message}`;
  if (value instanceof Date) return isNaN(value) ? 'Invalid Date' : value.toISOString();
  if (depth >= MAX_INSPECT_DEPTH) return Array.isArray(value) ? '[Array]' : '[Object]';
  seen.push(value);
  try {
    if (Array.isArray(value)) {
      const items = value.slice(0, MAX_INSPECT_ITEMS).map((v) => inspect(v, depth + 1, seen));
      if (value.length > MAX_INSPECT_ITEMS) items.push(`... ${value.length - MAX_INSPECT_ITEMS} more items`);
      return `[ ${items.join(', ')} ]`;
    }
    const keys = Object.keys(value);
    const items = keys.slice(0, MAX_INSPECT_ITEMS).map((k) => `${k}: ${inspect(value[k], depth + 1, seen)}`);
    if (keys.length > MAX_INSPECT_ITEMS) items.push(`... ${keys.length - MAX_INSPECT_ITEMS} more keys`);
    return items.length ? `{ ${items.join(', ')} }` : '{}';
  } finally {
    seen.pop();
  }
}

function format(args) {
  if (args.length === 0) return '';
  let first = args[0];
  let rest = args.slice(1);
  let out;
  if (typeof first === 'string' && /%[sdifjoO%]/.test(first)) {
    out = first.replace(/%[sdifjoO%]/g, (spec) => {
      if (spec === '%%') return '%';
      if (rest.length === 0) return spec;
      const v = rest.shift();
      switch (spec) {
        case '%s': return typeof v === 'string' ? v : inspect(v, 1, []);
        case '%d': case '%i': return String(parseInt(v, 10));
        case '%f': return String(parseFloat(v));
        case '%j': try { return JSON.stringify(v); } catch { return '[Circular]'; }
        default: return inspect(v, 1, []);
      }
    });
  } else {
    out = inspect(first, 0, []);
  }
  for (const v of rest) out += ' ' + inspect(v, 0, []);
  return out;
}

const consoleObject = {};
for (const [name, level] of [['log', 1], ['info', 1], ['debug', 0], ['trace', 0], ['warn', 2], ['error', 3]]) {
  consoleObject[name] = (...args) => native.log(level, format(args));
}
define('console', Object.freeze(consoleObject));

// ---------------------------------------------------------------- timers
// The engine keeps the schedule and the deadline; the callbacks live here.

const timers = new Map();

function schedule(fn, ms, args, repeat) {
  if (typeof fn !== 'function') throw new TypeError('the callback must be a function');
  const delay = Math.max(0, Number(ms) || 0);
  const id = native.setTimer(delay, repeat);
  timers.set(id, { fn, args });
  return id;
}

function cancel(id) {
  if (timers.delete(id)) native.clearTimer(id);
}

define('setTimeout', (fn, ms, ...args) => schedule(fn, ms, args, false));
define('setInterval', (fn, ms, ...args) => schedule(fn, ms, args, true));
define('clearTimeout', cancel);
define('clearInterval', cancel);

// Called by the engine when timer `id` is due.
function fireTimer(id, repeat) {
  const timer = timers.get(id);
  if (!timer) return;
  if (!repeat) timers.delete(id);
  timer.fn(...timer.args);
}

// ---------------------------------------------------------------- host calls

const pendingCalls = new Map();

function hostCall(capability, args) {
  return new Promise((resolve, reject) => {
    const id = native.hostCall(String(capability), JSON.stringify(args === undefined ? null : args));
    pendingCalls.set(id, { resolve, reject });
  });
}

// Called by the engine with a host reply.
function settleCall(id, ok, json, code, message) {
  const call = pendingCalls.get(id);
  if (!call) return;
  pendingCalls.delete(id);
  if (ok) {
    call.resolve(JSON.parse(json));
  } else {
    const error = new Error(message);
    error.code = code;
    call.reject(error);
  }
}

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

define('TextEncoder', TextEncoder);
define('TextDecoder', TextDecoder);

// ---------------------------------------------------------------- URL

const formEncode = (s) =>
  encodeURIComponent(s).replace(/%20/g, '+').replace(/[!'()~]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
const formDecode = (s) => {
  try { return decodeURIComponent(s.replace(/\+/g, ' ')); } catch { return s.replace(/\+/g, ' '); }
};

class URLSearchParams {
  #list = [];
  #url = null;
  constructor(init = '') {
    if (typeof init === 'string') {
      this.#parse(init);
    } else if (init instanceof URLSearchParams) {
      this.#list = [...init];
    } else if (init && typeof init[Symbol.iterator] === 'function') {
      for (const pair of init) {
        const [k, v] = [...pair];
        this.#list.push([String(k), String(v)]);
      }
    } else if (init && typeof init === 'object') {
      for (const k of Object.keys(init)) this.#list.push([k, String(init[k])]);
    }
  }
  #parse(text) {
    this.#list = [];
    const s = text.startsWith('?') ? text.slice(1) : text;
    for (const part of s.split('&')) {
      if (part === '') continue;
      const eq = part.indexOf('=');
      const k = eq < 0 ? part : part.slice(0, eq);
      const v = eq < 0 ? '' : part.slice(eq + 1);
      this.#list.push([formDecode(k), formDecode(v)]);
    }
  }
  #update() { if (this.#url) this.#url._setSearch(this.toString()); }
  static _attach(params, url, search) { params.#url = url; params.#parse(search); }
  get size() { return this.#list.length; }
  append(k, v) { this.#list.push([String(k), String(v)]); this.#update(); }
  delete(k) { this.#list = this.#list.filter(([n]) => n !== String(k)); this.#update(); }
  get(k) { const e = this.#list.find(([n]) => n === String(k)); return e ? e[1] : null; }
  getAll(k) { return this.#list.filter(([n]) => n === String(k)).map(([, v]) => v); }
  has(k) { return this.#list.some(([n]) => n === String(k)); }
  set(k, v) {
    const name = String(k);
    const i = this.#list.findIndex(([n]) => n === name);
    if (i < 0) this.#list.push([name, String(v)]);
    else { this.#list[i] = [name, String(v)]; this.#list = this.#list.filter(([n], j) => n !== name || j === i); }
    this.#update();
  }
  sort() { this.#list.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)); this.#update(); }
  forEach(fn, thisArg) { for (const [k, v] of this.#list) fn.call(thisArg, v, k, this); }
  keys() { return this.#list.map(([k]) => k)[Symbol.iterator](); }
  values() { return this.#list.map(([, v]) => v)[Symbol.iterator](); }
  entries() { return this.#list.map(([k, v]) => [k, v])[Symbol.iterator](); }
  [Symbol.iterator]() { return this.entries(); }
  toString() { return this.#list.map(([k, v]) => `${formEncode(k)}=${formEncode(v)}`).join('&'); }
}

class URL {
  #parts;
  #params;
  constructor(input, base) {
    this.#parts = native.urlParse(String(input), base === undefined ? undefined : String(base));
    this.#params = new URLSearchParams();
    URLSearchParams._attach(this.#params, this, this.#parts.search);
  }
  static canParse(input, base) {
    try { new URL(input, base); return true; } catch { return false; }
  }
  static parse(input, base) {
    try { return new URL(input, base); } catch { return null; }
  }
  #set(component, value) {
    this.#parts = native.urlSet(this.#parts.href, component, String(value));
    URLSearchParams._attach(this.#params, this, this.#parts.search);
  }
  _setSearch(search) { this.#parts = native.urlSet(this.#parts.href, 'search', search); }
  get href() { return this.#parts.href; }
  set href(v) { this.#parts = native.urlParse(String(v)); URLSearchParams._attach(this.#params, this, this.#parts.search); }
  get origin() { return this.#parts.origin; }
  get protocol() { return this.#parts.protocol; }
  set protocol(v) { this.#set('protocol', v); }
  get username() { return this.#parts.username; }
  set username(v) { this.#set('username', v); }
  get password() { return this.#parts.password; }
  set password(v) { this.#set('password', v); }
  get host() { return this.#parts.host; }
  set host(v) { this.#set('host', v); }
  get hostname() { return this.#parts.hostname; }
  set hostname(v) { this.#set('hostname', v); }
  get port() { return this.#parts.port; }
  set port(v) { this.#set('port', v); }
  get pathname() { return this.#parts.pathname; }
  set pathname(v) { this.#set('pathname', v); }
  get search() { return this.#parts.search; }
  set search(v) { this.#set('search', v); }
  get searchParams() { return this.#params; }
  get hash() { return this.#parts.hash; }
  set hash(v) { this.#set('hash', v); }
  toString() { return this.href; }
  toJSON() { return this.href; }
}

define('URL', URL);
define('URLSearchParams', URLSearchParams);

// ---------------------------------------------------------------- structuredClone

class DataCloneError extends Error {
  constructor(message) { super(message); this.name = 'DataCloneError'; }
}

function clone(value, memo) {
  if (value === null || typeof value !== 'object') {
    if (typeof value === 'function') throw new DataCloneError(`${value.name || 'function'} could not be cloned`);
    if (typeof value === 'symbol') throw new DataCloneError('a Symbol could not be cloned');
    return value;
  }
  if (memo.has(value)) return memo.get(value);
  let out;
  if (Array.isArray(value)) {
    out = new Array(value.length);
    memo.set(value, out);
    for (let i = 0; i < value.length; i++) if (i in value) out[i] = clone(value[i], memo);
    return out;
  }
  if (value instanceof Date) { out = new Date(value.getTime()); memo.set(value, out); return out; }
  if (value instanceof RegExp) { out = new RegExp(value.source, value.flags); memo.set(value, out); return out; }
  if (value instanceof Map) {
    out = new Map(); memo.set(value, out);
    for (const [k, v] of value) out.set(clone(k, memo), clone(v, memo));
    return out;
  }
  if (value instanceof Set) {
    out = new Set(); memo.set(value, out);
    for (const v of value) out.add(clone(v, memo));
    return out;
  }
  if (value instanceof ArrayBuffer) { out = value.slice(0); memo.set(value, out); return out; }
  if (ArrayBuffer.isView(value)) {
    out = new value.constructor(value.buffer.slice(value.byteOffset, value.byteOffset + value.byteLength));
    memo.set(value, out);
    return out;
  }
  if (value instanceof Error) {
    out = new Error(value.message); out.name = value.name; memo.set(value, out); return out;
  }
  if (value instanceof Promise || value instanceof WeakMap || value instanceof WeakSet) {
    throw new DataCloneError(`${value.constructor.name} could not be cloned`);
  }
  out = {};
  memo.set(value, out);
  for (const k of Object.keys(value)) out[k] = clone(value[k], memo);
  return out;
}

define('structuredClone', (value) => clone(value, new Map()));

// ---------------------------------------------------------------- crypto

const hex = (b) => (b < 16 ? '0' : '') + b.toString(16);
define('crypto', Object.freeze({
  getRandomValues(array) {
    if (!ArrayBuffer.isView(array) || array instanceof Float32Array || array instanceof Float64Array) {
      throw new TypeError('getRandomValues needs an integer typed array');
    }
    if (array.byteLength > 65536) {
      const e = new Error(`getRandomValues can fill at most 65536 bytes, not ${array.byteLength}`);
      e.name = 'QuotaExceededError';
      throw e;
    }
    const bytes = native.random(array.byteLength);
    new Uint8Array(array.buffer, array.byteOffset, array.byteLength).set(bytes);
    return array;
  },
  randomUUID() {
    const b = native.random(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = b.map(hex);
    return `${h.slice(0, 4).join('')}-${h.slice(4, 6).join('')}-${h.slice(6, 8).join('')}-${h.slice(8, 10).join('')}-${h.slice(10).join('')}`;
  },
}));

if (typeof globalThis.btoa !== 'function' || typeof globalThis.atob !== 'function') {
  throw new Error('the engine lacks atob/btoa');
}

// ---------------------------------------------------------------- modules
// CommonJS support: one module cache per invocation (this runtime).

const commonjs = new Map();

function dirname(id) {
  const i = id.lastIndexOf('/');
  return i < 0 ? '.' : id.slice(0, i);
}

function esModuleObject(namespace) {
  const out = { __esModule: true };
  for (const k of Object.keys(namespace)) out[k] = namespace[k];
  if ('default' in namespace) out.default = namespace.default;
  return out;
}

function load(target) {
  switch (target.kind) {
    case 'builtin':
      return esModuleObject(native.importSync(target.name));
    case 'json':
      return native.importSync(target.name).default;
    case 'esm':
      return esModuleObject(native.importSync(target.name));
    case 'commonjs': {
      const cached = commonjs.get(target.id);
      if (cached) return cached.exports;
      const module = { id: target.id, filename: target.id, exports: {}, loaded: false };
      commonjs.set(target.id, module);
      const body = native.importSync('cjs:' + target.id).default;
      body.call(module.exports, module.exports, makeRequire(target.id), module, target.id, dirname(target.id));
      module.loaded = true;
      return module.exports;
    }
  }
  throw new Error(`cannot load module kind ${target.kind}`);
}

function makeRequire(fromId) {
  const require = (specifier) => load(native.resolve(fromId, String(specifier)));
  require.resolve = (specifier) => native.resolve(fromId, String(specifier)).id;
  require.cache = Object.create(null);
  return require;
}

function requireById(id) {
  return load(native.target(id));
}

// The handler an invocation runs: the named export of an ES module, or the
// named property of a CommonJS module's exports.
function entry(id, name) {
  const target = native.target(id);
  const exports = target.kind === 'commonjs' ? load(target) : native.importSync(target.name);
  return exports == null ? undefined : exports[name];
}

define('__kilnModules', Object.freeze({ makeRequire, requireById, hostCall }));
native.install({ fireTimer, settleCall, entry });
