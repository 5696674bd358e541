// fetch, Headers and Response, and the errors Forge's egress raises. Loaded
// by the prelude the first time app code touches one of the globals, and by
// @forge/api (which adds routes and product requests on top).
//
// Every request leaves the sandbox as one host call ("fetch" or
// "product.request"); the server decides whether it may go out and makes it.
// The checks here only give app code the errors fetch and Forge would give,
// before a host call is spent: the server repeats every one that matters.
import { native } from 'kiln:natives';
import { hostCall } from 'kiln:host';
import { TextEncoder, TextDecoder } from 'kiln:text';
import { URL, URLSearchParams } from 'kiln:url';

// ---------------------------------------------------------------- fetch

// The global fetch: an absolute http(s) URL, through the server's egress
// gateway.
export async function fetch(input, init = undefined) {
  const url = requestUrl(input);
  return sendRequest('fetch', { url }, init, url, (error) => egressError(error, url));
}

// Send one request through the host and turn the reply into a Response.
// `target` says where it goes (the capability's own fields); `requestedUrl`,
// when known, tells whether the server followed a redirect; `mapError` turns
// the server's refusals into the errors app code expects.
export async function sendRequest(capability, target, init, requestedUrl, mapError) {
  const request = outgoing(init);
  const call = hostCall(capability, { ...target, ...request }).catch((error) => { throw mapError(error); });
  // An abort while the request is out rejects at once; the server's reply,
  // when it comes, is dropped (the request itself is not recalled).
  const signal = init && init.signal;
  const reply = await (signal && typeof signal.addEventListener === 'function'
    ? Promise.race([call, new Promise((_, reject) => {
      if (signal.aborted) reject(abortReason(signal));
      signal.addEventListener('abort', () => reject(abortReason(signal)), { once: true });
    })])
    : call);
  return responseFromReply(reply, requestedUrl);
}

// What an absolute URL given to fetch means, as the server will see it: no
// fragment (fetch never sends one), no credentials (fetch refuses them; they
// would also blur which host a request is for).
function requestUrl(input) {
  const text = String(input);
  let url;
  try {
    url = new URL(text);
  } catch {
    throw new TypeError(`Failed to parse URL from ${text}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new TypeError(`fetch supports only http: and https: URLs, not ${url.protocol} (in ${text})`);
  }
  if (url.username !== '' || url.password !== '') {
    throw new TypeError(`Request cannot be constructed from a URL that includes credentials: ${text}`);
  }
  url.hash = '';
  return url.href;
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const FORBIDDEN_METHODS = ['CONNECT', 'TRACE', 'TRACK'];

// The method, header list and body of a request, as the host call carries
// them.
function outgoing(init) {
  if (init === undefined || init === null) init = {};
  if (typeof init !== 'object' && typeof init !== 'function') {
    throw new TypeError('the second argument of fetch must be an object of request options');
  }
  if (init.signal && init.signal.aborted) throw abortReason(init.signal);
  const method = requestMethod(init.method);
  const headers = new Headers(init.headers);
  let body = null;
  if (init.body !== undefined && init.body !== null) {
    if (method === 'GET' || method === 'HEAD') throw new TypeError('Request with GET/HEAD method cannot have body.');
    const extracted = extractBody(init.body);
    if (extracted.type !== null && !headers.has('content-type')) headers.append('content-type', extracted.type);
    body = bytesToBase64(extracted.bytes);
  }
  return { method, headers: headerList(headers).map(([name, value]) => [name, value]), body };
}

// The host call carries methods in upper case (fetch itself upper-cases only
// the standard six; a server that gets `patch` would refuse it anyway).
function requestMethod(method) {
  if (method === undefined) return 'GET';
  const text = String(method);
  if (!TOKEN.test(text)) throw new TypeError(`'${text}' is not a valid HTTP method.`);
  const upper = text.toUpperCase();
  if (FORBIDDEN_METHODS.includes(upper)) throw new TypeError(`'${text}' HTTP method is unsupported.`);
  return upper;
}

function abortReason(signal) {
  if (signal.reason !== undefined) return signal.reason;
  const error = new Error('This operation was aborted');
  error.name = 'AbortError';
  return error;
}

// ---------------------------------------------------------------- bodies

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// A request or response body as bytes, with the content type fetch gives it.
function extractBody(body) {
  if (typeof body === 'string') return { bytes: encoder.encode(body), type: 'text/plain;charset=UTF-8' };
  if (isSearchParams(body)) {
    return { bytes: encoder.encode(body.toString()), type: 'application/x-www-form-urlencoded;charset=UTF-8' };
  }
  if (body instanceof ArrayBuffer) return { bytes: new Uint8Array(body.slice(0)), type: null };
  if (ArrayBuffer.isView(body)) {
    return { bytes: new Uint8Array(body.buffer, body.byteOffset, body.byteLength).slice(), type: null };
  }
  // Anything else becomes its string form, as in fetch (Blob, FormData and
  // streams do not exist here).
  return { bytes: encoder.encode(String(body)), type: 'text/plain;charset=UTF-8' };
}

// Kiln's URLSearchParams, or whatever the app installed as the global one.
export function isSearchParams(value) {
  if (value instanceof URLSearchParams) return true;
  const global = globalThis.URLSearchParams;
  return typeof global === 'function' && value instanceof global;
}

// Bytes per String.fromCharCode call: well under the engine's argument limit.
const BASE64_CHUNK = 8192;

function bytesToBase64(bytes) {
  let binary = '';
  for (let i = 0; i < bytes.length; i += BASE64_CHUNK) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + BASE64_CHUNK));
  }
  return native.btoa(binary);
}

// ---------------------------------------------------------------- replies

// The one place a host reply to a request is read. Anything malformed is a
// Kiln bug, reported as such rather than handed to app code half-parsed.
function responseFromReply(reply, requestedUrl) {
  const malformed = (what) => new TypeError(`Kiln's server sent a malformed reply to a request (${what}); this is a bug in Kiln, not in the app`);
  if (reply === null || typeof reply !== 'object') throw malformed('not an object');
  const { status, statusText = '', headers = [], body = '', url = requestedUrl ?? '' } = reply;
  if (!Number.isInteger(status) || status < 200 || status > 999) throw malformed(`status ${status}`);
  if (typeof statusText !== 'string') throw malformed('statusText is not a string');
  if (typeof url !== 'string') throw malformed('url is not a string');
  if (!Array.isArray(headers)) throw malformed('headers is not a list');
  const list = [];
  for (const header of headers) {
    if (!Array.isArray(header) || header.length !== 2 || typeof header[0] !== 'string' || typeof header[1] !== 'string') {
      throw malformed('a header is not a [name, value] pair of strings');
    }
    list.push([header[0].toLowerCase(), header[1]]);
  }
  if (typeof body !== 'string') throw malformed('body is not a string');
  let bytes;
  try {
    bytes = new Uint8Array(native.base64ToBytes(body));
  } catch {
    throw malformed('body is not base64');
  }
  return fillResponse(new Response(), {
    status,
    statusText,
    list,
    bytes,
    url,
    redirected: requestedUrl !== null && requestedUrl !== undefined && url !== requestedUrl,
    type: 'basic',
  });
}

// ---------------------------------------------------------------- Headers

// Only module code can reach these (set from inside the classes).
let headerList;
let fillResponse;

const HTTP_WHITESPACE = /^[\t\n\r ]+|[\t\n\r ]+$/g;

function headerName(name) {
  const text = String(name);
  if (!TOKEN.test(text)) throw new TypeError(`Headers: '${text}' is not a valid HTTP header name.`);
  return text.toLowerCase();
}

function headerValue(name, value) {
  const text = String(value).replace(HTTP_WHITESPACE, '');
  // Header values are byte strings: no NUL, CR or LF (they would split the
  // header), and nothing past U+00FF.
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0 || c === 10 || c === 13 || c > 255) {
      throw new TypeError(`Headers: the value of '${name}' is not a valid HTTP header value.`);
    }
  }
  return text;
}

export class Headers {
  // [lower-case name, value] in the order they were added.
  #list = [];

  static {
    headerList = (headers) => headers.#list;
  }

  constructor(init = undefined) {
    if (init === undefined || init === null) return;
    if (typeof init !== 'object' && typeof init !== 'function') {
      throw new TypeError('Headers: expected an object, an array of [name, value] pairs or a Headers object');
    }
    if (typeof init[Symbol.iterator] === 'function') {
      for (const pair of init) {
        if (pair === null || typeof pair !== 'object' || typeof pair[Symbol.iterator] !== 'function') {
          throw new TypeError('Headers: each header must be a [name, value] pair');
        }
        const entry = [...pair];
        if (entry.length !== 2) throw new TypeError('Headers: each header must be a [name, value] pair');
        this.append(entry[0], entry[1]);
      }
    } else {
      for (const name of Object.keys(init)) this.append(name, init[name]);
    }
  }

  append(name, value) {
    const key = headerName(name);
    this.#list.push([key, headerValue(key, value)]);
  }

  delete(name) {
    const key = headerName(name);
    this.#list = this.#list.filter(([n]) => n !== key);
  }

  // Every value of the header, joined with ", "; null if it is absent.
  get(name) {
    const key = headerName(name);
    const values = this.#list.filter(([n]) => n === key).map(([, v]) => v);
    return values.length === 0 ? null : values.join(', ');
  }

  getSetCookie() {
    return this.#list.filter(([n]) => n === 'set-cookie').map(([, v]) => v);
  }

  has(name) {
    const key = headerName(name);
    return this.#list.some(([n]) => n === key);
  }

  set(name, value) {
    const key = headerName(name);
    const entry = [key, headerValue(key, value)];
    const at = this.#list.findIndex(([n]) => n === key);
    if (at < 0) {
      this.#list.push(entry);
    } else {
      this.#list = this.#list.filter(([n], i) => n !== key || i === at);
      this.#list.splice(at, 1, entry);
    }
  }

  // What iteration shows: names sorted, each once with its values joined,
  // except set-cookie, whose values stay separate (they may contain commas).
  #combined() {
    const names = [...new Set(this.#list.map(([n]) => n))].sort();
    const out = [];
    for (const name of names) {
      if (name === 'set-cookie') {
        for (const value of this.getSetCookie()) out.push([name, value]);
      } else {
        out.push([name, this.get(name)]);
      }
    }
    return out;
  }

  forEach(callback, thisArg = undefined) {
    for (const [name, value] of this.#combined()) callback.call(thisArg, value, name, this);
  }

  entries() { return this.#combined()[Symbol.iterator](); }
  keys() { return this.#combined().map(([n]) => n)[Symbol.iterator](); }
  values() { return this.#combined().map(([, v]) => v)[Symbol.iterator](); }
  [Symbol.iterator]() { return this.entries(); }
  get [Symbol.toStringTag]() { return 'Headers'; }
}

// ---------------------------------------------------------------- Response

const NULL_BODY_STATUSES = [101, 103, 204, 205, 304];

export class Response {
  #status = 200;
  #statusText = '';
  #headers = new Headers();
  #url = '';
  #redirected = false;
  #type = 'default';
  // The body's bytes, or null for a response without a body.
  #bytes = null;
  #used = false;

  static {
    fillResponse = (response, parts) => {
      response.#status = parts.status;
      response.#statusText = parts.statusText;
      const headers = new Headers();
      headerList(headers).push(...parts.list);
      response.#headers = headers;
      response.#bytes = parts.bytes;
      response.#url = parts.url;
      response.#redirected = parts.redirected;
      response.#type = parts.type;
      return response;
    };
  }

  constructor(body = null, init = {}) {
    const options = init ?? {};
    const status = options.status === undefined ? 200 : Number(options.status);
    if (!Number.isInteger(status) || status < 200 || status > 599) {
      throw new RangeError(`Response: status must be an integer from 200 to 599, not ${options.status}`);
    }
    this.#status = status;
    this.#statusText = options.statusText === undefined ? '' : String(options.statusText);
    this.#headers = new Headers(options.headers);
    if (body !== null && body !== undefined) {
      if (NULL_BODY_STATUSES.includes(status)) throw new TypeError(`Response: a ${status} response cannot have a body`);
      const extracted = extractBody(body);
      if (extracted.type !== null && !this.#headers.has('content-type')) this.#headers.set('content-type', extracted.type);
      this.#bytes = extracted.bytes;
    }
  }

  static json(data, init = {}) {
    const text = JSON.stringify(data);
    if (text === undefined) throw new TypeError('Response.json: the data cannot be serialised as JSON');
    const response = new Response(text, init);
    if (!(init && init.headers && new Headers(init.headers).has('content-type'))) {
      response.#headers.set('content-type', 'application/json');
    }
    return response;
  }

  get ok() { return this.#status >= 200 && this.#status <= 299; }
  get status() { return this.#status; }
  get statusText() { return this.#statusText; }
  get headers() { return this.#headers; }
  get url() { return this.#url; }
  get redirected() { return this.#redirected; }
  get type() { return this.#type; }
  get bodyUsed() { return this.#used; }
  get [Symbol.toStringTag]() { return 'Response'; }

  // A body can be read once; reading a response without one gives nothing
  // and does not use it up.
  #consume() {
    if (this.#used) throw new TypeError('Body is unusable: Body has already been read');
    if (this.#bytes === null) return new Uint8Array(0);
    this.#used = true;
    return this.#bytes;
  }

  async arrayBuffer() {
    const bytes = this.#consume();
    return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  }

  async bytes() {
    return new Uint8Array(await this.arrayBuffer());
  }

  async text() {
    return decoder.decode(this.#consume());
  }

  async json() {
    return JSON.parse(await this.text());
  }

  clone() {
    if (this.#used) throw new TypeError('Response.clone: Body has already been consumed.');
    return fillResponse(new Response(), {
      status: this.#status,
      statusText: this.#statusText,
      list: headerList(this.#headers).map(([n, v]) => [n, v]),
      bytes: this.#bytes,
      url: this.#url,
      redirected: this.#redirected,
      type: this.#type,
    });
  }
}

// ---------------------------------------------------------------- Forge's errors
// What Forge's runtime throws when a request is refused, with @forge/api's
// constructors, messages and names (the names are Forge's error codes, not
// the class names), so apps that catch them keep working.

export const FUNCTION_ERR = 'FUNCTION_ERR';
const REQUEST_EGRESS_ALLOWLIST_ERR = 'REQUEST_EGRESS_ALLOWLIST_ERR';
const FUNCTION_FETCH_ERR = 'FUNCTION_FETCH_ERR';
const NEEDS_AUTHENTICATION_ERR = 'NEEDS_AUTHENTICATION_ERR';
const PROXY_ERR = 'PROXY_ERR';
const PLATFORM_ERRORS = [REQUEST_EGRESS_ALLOWLIST_ERR, FUNCTION_FETCH_ERR, NEEDS_AUTHENTICATION_ERR, PROXY_ERR, 'SEND_EMAIL_ERR', 'API_NOT_READY_ERR'];
const HOSTED_CODE_ERRORS = [FUNCTION_ERR, REQUEST_EGRESS_ALLOWLIST_ERR, FUNCTION_FETCH_ERR, NEEDS_AUTHENTICATION_ERR, 'SEND_EMAIL_ERR'];

export const isForgePlatformError = (error) => PLATFORM_ERRORS.includes(error.name);
export const isHostedCodeError = (error) => HOSTED_CODE_ERRORS.includes(typeof error === 'string' ? error : error.name);
export const isExpectedError = (error) => error.name === NEEDS_AUTHENTICATION_ERR && Boolean(error.options && error.options.isExpectedError);

// Forge drops the stack of the errors it expects apps to see. Here `stack`
// is an accessor that only takes strings, so the instance gets its own.
const hideStack = (error) =>
  Object.defineProperty(error, 'stack', { value: undefined, writable: true, configurable: true, enumerable: false });

export class HttpError extends Error {
  constructor(message) {
    super(message);
    this.status = undefined;
  }
}

export class FetchError extends Error {
  constructor(cause) {
    super(cause);
    hideStack(this);
    this.name = FUNCTION_FETCH_ERR;
  }
}

export class NotAllowedError extends HttpError {
  constructor(message) {
    super(message);
    hideStack(this);
    this.name = REQUEST_EGRESS_ALLOWLIST_ERR;
    this.status = 403;
  }
}

export class ExternalEndpointNotAllowedError extends NotAllowedError {
  constructor(failedURL) {
    super(`URL not included in the external fetch backend permissions: ${failedURL}. Visit go.atlassian.com/forge-egress for more information.`);
  }
}

export class ProductEndpointNotAllowedError extends NotAllowedError {
  constructor(failedURL) {
    super(`URL not allowed: ${failedURL}.`);
  }
}

export class RequestProductNotAllowedError extends NotAllowedError {
  constructor(requestedProduct, invocationProduct) {
    super(`Request ${requestedProduct} is not allowed from ${invocationProduct} context.`);
  }
}

export class InvalidWorkspaceRequestedError extends NotAllowedError {
  constructor(failedURL) {
    super(`Invalid workspace requested in URL: ${failedURL}.`);
  }
}

export class NeedsAuthenticationError extends HttpError {
  constructor(error, serviceKey, options = undefined) {
    super(error);
    this.serviceKey = serviceKey;
    this.options = options;
    hideStack(this);
    this.name = NEEDS_AUTHENTICATION_ERR;
    this.status = 401;
  }
}

export class ProxyRequestError extends HttpError {
  constructor(status, errorCode) {
    super(`Forge platform failed to process runtime HTTP request - ${status} - ${errorCode}`);
    this.status = status;
    this.errorCode = errorCode;
    this.name = PROXY_ERR;
  }
}

// The status and code a ProxyRequestError from the server carries: the
// server's refusal has neither, and a proxy that failed is a bad gateway.
const HOST_PROXY_STATUS = 502;
const HOST_PROXY_CODE = PROXY_ERR;

// The server's message replaces the constructor's when it has one.
export function withServerMessage(error, message) {
  if (typeof message === 'string' && message !== '') error.message = message;
  return error;
}

export function proxyError(message) {
  return withServerMessage(new ProxyRequestError(HOST_PROXY_STATUS, HOST_PROXY_CODE), message);
}

// The error a refused fetch throws; codes the server does not document for
// fetch stay plain errors with their code.
function egressError(error, url) {
  switch (error && error.code) {
    case 'ExternalEndpointNotAllowedError':
      return withServerMessage(new ExternalEndpointNotAllowedError(url), error.message);
    case 'ProxyRequestError':
      return proxyError(error.message);
    default:
      return error;
  }
}
