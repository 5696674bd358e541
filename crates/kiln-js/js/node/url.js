// node:url — the WHATWG URL classes (Kiln's globals) and the legacy
// parse/format/resolve basics. There is no file system, so the file-path
// helpers throw.
import { URL, URLSearchParams } from 'kiln:url';
import querystring from 'builtin:node:querystring';

export { URL, URLSearchParams };

// Protocols whose URLs always have '//' and a path of at least '/'.
const slashedProtocols = new Set(['http:', 'https:', 'ftp:', 'gopher:', 'file:', 'ws:', 'wss:']);

export function Url() {
  this.protocol = null;
  this.slashes = null;
  this.auth = null;
  this.host = null;
  this.port = null;
  this.hostname = null;
  this.hash = null;
  this.search = null;
  this.query = null;
  this.pathname = null;
  this.path = null;
  this.href = null;
}

// The legacy parser, for the common shapes: scheme://auth@host:port/path?query#hash,
// scheme-relative (with slashesDenoteHost) and plain paths.
export function parse(url, parseQueryString = false, slashesDenoteHost = false) {
  if (url instanceof Url) return url;
  if (typeof url !== 'string') {
    const e = new TypeError(`The "url" argument must be of type string. Received ${url === null ? 'null' : typeof url}`);
    e.code = 'ERR_INVALID_ARG_TYPE';
    throw e;
  }
  const result = new Url();
  let rest = url.trim();
  const hashAt = rest.indexOf('#');
  if (hashAt !== -1) {
    result.hash = rest.slice(hashAt);
    rest = rest.slice(0, hashAt);
  }
  const queryAt = rest.indexOf('?');
  if (queryAt !== -1) {
    result.search = rest.slice(queryAt);
    result.query = rest.slice(queryAt + 1);
    rest = rest.slice(0, queryAt);
  } else if (parseQueryString) {
    result.search = '';
    result.query = {};
  }
  // Backslashes in the path part count as slashes, as in Node.
  rest = rest.replace(/\\/g, '/');
  const proto = /^([a-zA-Z][a-zA-Z0-9+.-]*:)/.exec(rest);
  if (proto) {
    result.protocol = proto[1].toLowerCase();
    rest = rest.slice(proto[1].length);
  }
  const slashes = rest.startsWith('//');
  if (slashes && (result.protocol !== null || slashesDenoteHost) && result.protocol !== 'javascript:') {
    rest = rest.slice(2);
    result.slashes = true;
    const end = rest.search(/[/]/);
    let authority = end === -1 ? rest : rest.slice(0, end);
    rest = end === -1 ? '' : rest.slice(end);
    const at = authority.lastIndexOf('@');
    if (at !== -1) {
      result.auth = decodeURIComponent(authority.slice(0, at));
      authority = authority.slice(at + 1);
    }
    const port = /:([0-9]*)$/.exec(authority);
    if (port) {
      if (port[1] !== '') result.port = port[1];
      authority = authority.slice(0, authority.length - port[0].length);
    }
    result.hostname = authority.toLowerCase();
    result.host = result.port !== null ? `${result.hostname}:${result.port}` : result.hostname;
  }
  result.pathname = rest === '' ? null : rest;
  if (slashedProtocols.has(result.protocol) && result.hostname && !result.pathname) result.pathname = '/';
  if (parseQueryString && typeof result.query === 'string') result.query = querystring.parse(result.query);
  if (result.pathname !== null || result.search !== null) {
    result.path = (result.pathname || '') + (result.search || '');
  }
  result.href = format(result);
  return result;
}

export function format(urlObject, options) {
  if (typeof urlObject === 'string') urlObject = parse(urlObject);
  else if (urlObject instanceof URL) {
    const o = { auth: true, fragment: true, search: true, ...options };
    const u = new URL(urlObject.href);
    if (!o.auth) { u.username = ''; u.password = ''; }
    if (!o.fragment) u.hash = '';
    if (!o.search) u.search = '';
    return u.href;
  } else if (urlObject === null || typeof urlObject !== 'object') {
    const e = new TypeError(`The "urlObject" argument must be one of type object or string. Received ${urlObject === null ? 'null' : typeof urlObject}`);
    e.code = 'ERR_INVALID_ARG_TYPE';
    throw e;
  }
  let auth = urlObject.auth || '';
  if (auth) auth = encodeURIComponent(auth).replace(/%3A/i, ':') + '@';
  let protocol = urlObject.protocol || '';
  let pathname = urlObject.pathname || '';
  let hash = urlObject.hash || '';
  let host = '';
  if (urlObject.host) host = auth + urlObject.host;
  else if (urlObject.hostname) {
    const name = urlObject.hostname.includes(':') ? `[${urlObject.hostname}]` : urlObject.hostname;
    host = auth + name + (urlObject.port ? `:${urlObject.port}` : '');
  }
  let search = urlObject.search || '';
  if (!search && urlObject.query && typeof urlObject.query === 'object') {
    const q = querystring.stringify(urlObject.query);
    if (q) search = `?${q}`;
  }
  if (protocol && !protocol.endsWith(':')) protocol += ':';
  if (urlObject.slashes || ((!protocol || slashedProtocols.has(protocol)) && host)) {
    host = `//${host}`;
    if (pathname && pathname[0] !== '/') pathname = `/${pathname}`;
  }
  if (hash && hash[0] !== '#') hash = `#${hash}`;
  if (search && search[0] !== '?') search = `?${search}`;
  pathname = pathname.replace(/[?#]/g, encodeURIComponent);
  search = search.replace(/#/g, '%23');
  return protocol + host + pathname + search + hash;
}

// The WHATWG-based resolve that Node's documentation recommends.
export function resolve(from, to) {
  const resolved = new URL(to, new URL(from, 'resolve://'));
  if (resolved.protocol === 'resolve:') {
    const { pathname, search, hash } = resolved;
    return pathname + search + hash;
  }
  return resolved.toString();
}

export function resolveObject(from, to) {
  return parse(resolve(from, to));
}

function noFileSystem(what) {
  const e = new Error(`url.${what} is not available: app code has no file system in Kiln (keep data with @forge/kvs)`);
  e.name = 'NotSupportedError';
  e.code = 'NOT_SUPPORTED';
  return e;
}

export function fileURLToPath() {
  throw noFileSystem('fileURLToPath');
}

export function pathToFileURL() {
  throw noFileSystem('pathToFileURL');
}

export function domainToASCII(domain) {
  try {
    return new URL(`http://${domain}`).hostname;
  } catch {
    return '';
  }
}

export function domainToUnicode(domain) {
  return String(domain);
}

export function urlToHttpOptions(url) {
  const options = {
    protocol: url.protocol,
    hostname: url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname,
    hash: url.hash,
    search: url.search,
    pathname: url.pathname,
    path: `${url.pathname || ''}${url.search || ''}`,
    href: url.href,
  };
  if (url.port !== '') options.port = Number(url.port);
  if (url.username || url.password) options.auth = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
  return options;
}

export default {
  URL,
  URLSearchParams,
  Url,
  parse,
  format,
  resolve,
  resolveObject,
  fileURLToPath,
  pathToFileURL,
  domainToASCII,
  domainToUnicode,
  urlToHttpOptions,
};
