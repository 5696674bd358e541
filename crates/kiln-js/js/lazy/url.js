// Loaded by the prelude the first time app code touches one of these
// globals, so invocations that never use them do not pay for them.
import { native } from 'kiln:natives';

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

export { URL, URLSearchParams };

