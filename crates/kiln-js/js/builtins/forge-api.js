// @forge/api in Kiln.
//
// Supported: `route` (with Forge's escaping rules), `assumeTrustedRoute`,
// `routeFromAbsolute`; `fetch` (egress through the server, as Forge's
// `api.fetch` and the global fetch); `requestJira` and `requestConfluence`
// as the app (`asApp()`), as a user (`asUser(accountId?)`) and, at the top
// level, as nobody (no credentials, as in Forge), all through the server's
// product gateway; Forge's error classes and helpers; the legacy `storage`
// API (`get`, `set`, `delete`, `getSecret`, `setSecret`, `deleteSecret`,
// `query().where('key', startsWith(p))...`) on the same store as @forge/kvs.
//
// Still throwing NotSupportedError: `requestBitbucket`, `requestGraph`,
// `requestAtlassian`, `requestConnectedData`, `requestTeamworkGraph`,
// `withProvider`, `withContext`, `invokeRemote`, `invokeService`,
// `getAppContext`, `bindInvocationContext`, `authorize`, `webTrigger`,
// `permissions`, `privacy`, `i18n`, `storage.entity` and legacy query
// conditions other than `startsWith` on 'key'.
import { hostCall } from 'kiln:prelude';
import { unsupported, NotSupportedError } from 'builtin:kiln:unsupported';
import {
  fetch as egressFetch,
  sendRequest,
  isSearchParams,
  withServerMessage,
  proxyError,
  Headers,
  FUNCTION_ERR,
  HttpError,
  FetchError,
  NotAllowedError,
  ExternalEndpointNotAllowedError,
  ProductEndpointNotAllowedError,
  RequestProductNotAllowedError,
  InvalidWorkspaceRequestedError,
  NeedsAuthenticationError,
  ProxyRequestError,
  isExpectedError,
  isForgePlatformError,
  isHostedCodeError,
} from 'kiln:fetch';
import { URL } from 'kiln:url';

export {
  NotSupportedError,
  Headers,
  FUNCTION_ERR,
  HttpError,
  FetchError,
  NotAllowedError,
  ExternalEndpointNotAllowedError,
  ProductEndpointNotAllowedError,
  RequestProductNotAllowedError,
  InvalidWorkspaceRequestedError,
  NeedsAuthenticationError,
  ProxyRequestError,
  isExpectedError,
  isForgePlatformError,
  isHostedCodeError,
};

// ---------------------------------------------------------------- routes
// A product request takes only a Route, so that values interpolated into its
// path cannot climb out of the endpoint the app wrote.

// Forge's Route: the path in `value_`, read through `value`, which cannot be
// assigned. Apps and Forge's own code read `value`; some log the object.
class ReadonlyRoute {
  constructor(value) {
    this.value_ = value;
  }
  get value() { return this.value_; }
  set value(_) { throw new Error('modification of a Route is not allowed'); }
}

const isRoute = (value) => value instanceof ReadonlyRoute;

const PATH_MANIPULATION =
  'Disallowing path manipulation attempt. For more information see: https://go.atlassian.com/product-fetch-api-route';

// A value in the path may not hold a separator, the start of the query or
// fragment, or a `..` segment, written plainly or percent-encoded. Forge
// lists the encoded dots by hand and misses `%2e%2E` and `%2E%2E`, which
// URL parsers treat as `..` all the same; Kiln refuses every case mix.
const PATH_ENDS = /[/\\?#]/;
const DOUBLE_DOT = /(?:\.|%2e){2}/i;

function pathValue(value) {
  if (isRoute(value)) return value.value;
  const text = String(value);
  if (PATH_ENDS.test(text) || DOUBLE_DOT.test(text)) throw new Error(PATH_MANIPULATION);
  return text;
}

function queryValue(value) {
  if (isRoute(value)) return encodeURIComponent(value.value);
  if (isSearchParams(value)) return value.toString();
  return encodeURIComponent(value);
}

// route`/rest/api/3/issue/${key}?fields=${fields}`: once a literal part has
// held `?` or `#`, every later value is in the query and is percent-encoded;
// before that, values are path segments and are checked, not encoded.
export function route(literals, ...values) {
  let inQuery = false;
  let path = '';
  for (let i = 0; i < literals.length; i++) {
    const literal = literals[i];
    if (/[?#]/.test(literal)) inQuery = true;
    path += literal;
    if (i >= values.length) break;
    path += inQuery ? queryValue(values[i]) : pathValue(values[i]);
  }
  return new ReadonlyRoute(path);
}

// Danger: no checks at all; the app vouches for the whole path.
export const assumeTrustedRoute = (path) => new ReadonlyRoute(path);

export function routeFromAbsolute(absolute) {
  const url = new URL(absolute);
  return assumeTrustedRoute(`${url.pathname}${url.search}`);
}

function requireRoute(path) {
  if (isRoute(path)) return path;
  throw new Error(`You must create your route using the 'route' export from '@forge/api'.
See https://go.atlassian.com/forge-fetch-route for more information.`);
}

// ---------------------------------------------------------------- fetch

// Forge's `fetch` also takes a Route (whose value must then be absolute).
export const fetch = (url, init) => egressFetch(isRoute(url) ? url.value : url, init);

// ---------------------------------------------------------------- products

// The service key Forge names when a user has not granted access.
const ATLASSIAN_TOKEN_SERVICE_KEY = 'atlassian-token-service-key';

// requestJira / requestConfluence for one principal. Like Forge, a path that
// is not a Route is refused at once (a synchronous throw), before anything
// is sent.
function productRequest(product, as, accountId) {
  return (path, init) => {
    const checked = requireRoute(path);
    return sendProductRequest(product, as, accountId, String(checked.value), init);
  };
}

async function sendProductRequest(product, as, accountId, path, init) {
  if (!path.startsWith('/')) {
    throw new Error(`A product request path must start with '/': got '${path}'. Write it as route\`/rest/...\`.`);
  }
  const response = await sendRequest(
    'product.request',
    { product, as, accountId, path },
    init,
    null,
    (error) => productError(error, product, path),
  );
  // Forge's proxy reports its own failures in this header on an otherwise
  // ordinary response; Kiln's server may do the same.
  const proxyFailure = response.headers.get('forge-proxy-error');
  if (proxyFailure) {
    if (proxyFailure === 'NEEDS_AUTHENTICATION_ERR') {
      throw new NeedsAuthenticationError('Authentication Required', ATLASSIAN_TOKEN_SERVICE_KEY);
    }
    throw new ProxyRequestError(response.status, proxyFailure);
  }
  return response;
}

function productError(error, product, path) {
  const message = error && error.message;
  switch (error && error.code) {
    case 'ProductEndpointNotAllowedError':
      return withServerMessage(new ProductEndpointNotAllowedError(path), message);
    case 'NeedsAuthenticationError':
      return withServerMessage(
        new NeedsAuthenticationError('Authentication Required', ATLASSIAN_TOKEN_SERVICE_KEY),
        message,
      );
    case 'RequestProductNotAllowedError':
      return withServerMessage(new RequestProductNotAllowedError(product, 'this'), message);
    case 'ProxyRequestError':
      return proxyError(message);
    default:
      return error;
  }
}

const accountIdOf = (userId) => (userId === undefined || userId === null || userId === '' ? null : String(userId));

export const asApp = () => ({
  requestJira: productRequest('jira', 'app', null),
  requestConfluence: productRequest('confluence', 'app', null),
  requestBitbucket: unsupported('@forge/api asApp().requestBitbucket'),
  requestGraph: unsupported('@forge/api asApp().requestGraph'),
  requestConnectedData: unsupported('@forge/api asApp().requestConnectedData'),
  requestAtlassian: unsupported('@forge/api asApp().requestAtlassian'),
  withContext: unsupported('@forge/api asApp().withContext'),
});

export const asUser = (userId) => ({
  requestJira: productRequest('jira', 'user', accountIdOf(userId)),
  requestConfluence: productRequest('confluence', 'user', accountIdOf(userId)),
  requestBitbucket: unsupported('@forge/api asUser().requestBitbucket'),
  requestGraph: unsupported('@forge/api asUser().requestGraph'),
  requestTeamworkGraph: unsupported('@forge/api asUser().requestTeamworkGraph'),
  requestConnectedData: unsupported('@forge/api asUser().requestConnectedData'),
  requestAtlassian: unsupported('@forge/api asUser().requestAtlassian'),
  withProvider: unsupported('@forge/api asUser().withProvider'),
  withContext: unsupported('@forge/api asUser().withContext'),
});

// Forge's top-level requestJira and requestConfluence act for nobody: they
// carry no credentials, so they see only what anonymous access allows.
export const requestJira = productRequest('jira', 'none', null);
export const requestConfluence = productRequest('confluence', 'none', null);
export const requestBitbucket = unsupported('@forge/api requestBitbucket');

// ---------------------------------------------------------------- not yet

export const invokeRemote = unsupported('@forge/api invokeRemote');
export const invokeService = unsupported('@forge/api invokeService');
export const getAppContext = unsupported('@forge/api getAppContext');
export const bindInvocationContext = unsupported('@forge/api bindInvocationContext');
export const authorize = unsupported('@forge/api authorize');
export const webTrigger = {
  getUrl: unsupported('@forge/api webTrigger.getUrl'),
  queryUrls: unsupported('@forge/api webTrigger.queryUrls'),
  deleteUrl: unsupported('@forge/api webTrigger.deleteUrl'),
};
export const permissions = {
  hasScope: unsupported('@forge/api permissions.hasScope'),
  canFetchFrom: unsupported('@forge/api permissions.canFetchFrom'),
  canLoadResource: unsupported('@forge/api permissions.canLoadResource'),
  hasPermission: unsupported('@forge/api permissions.hasPermission'),
};
export const privacy = { reportPersonalData: unsupported('@forge/api privacy.reportPersonalData') };
export const i18n = { getTranslations: unsupported('@forge/api i18n.getTranslations') };

// ---------------------------------------------------------------- storage
// The legacy `storage` API (deprecated by Forge for @forge/kvs, and gone
// from @forge/api 8): the same entries and secrets as @forge/kvs, through
// the same host calls, with the old shapes and errors.

// The old store's error: the server's message (or its code), named 'Error'.
// Kiln adds the code, which the old API did not expose.
class APIError extends Error {}

async function storageCall(capability, args) {
  try {
    return await hostCall(capability, args);
  } catch (e) {
    const error = new APIError((e && e.message) || (e && e.code) || 'Internal server error');
    error.code = e && e.code;
    throw error;
  }
}

export const startsWith = (value) => ({ condition: 'STARTS_WITH', value });

// The old API gave a cursor with every non-empty page, and an empty page
// without one after the last. Kiln's store gives none on the last page, so
// that page carries this marker (never a real cursor, which is URL-safe
// base64), and a query from it is the empty page, asked of nobody.
const AFTER_LAST_PAGE = 'kiln:after-last-page';

function storagePrefix(where) {
  if (where === undefined) return '';
  const [{ field, condition, value }] = where;
  if (field !== 'key' || condition !== 'STARTS_WITH') {
    throw new NotSupportedError(`@forge/api storage.query().where('${field}', ${condition}) (Kiln serves startsWith on 'key')`);
  }
  return String(value);
}

// Unlike @forge/kvs's, each step returns a new builder.
class StorageQuery {
  #options;

  constructor(options) {
    this.#options = options;
  }

  where(field, condition) {
    return new StorageQuery({ ...this.#options, where: [{ field, ...condition }] });
  }

  cursor(cursor) {
    return new StorageQuery({ ...this.#options, cursor });
  }

  limit(limit) {
    return new StorageQuery({ ...this.#options, limit });
  }

  async getOne() {
    const { results } = await this.limit(1).getMany();
    return results.length > 0 ? results[0] : undefined;
  }

  async getMany() {
    const { where, cursor, limit } = this.#options;
    if (cursor === AFTER_LAST_PAGE) return { results: [], nextCursor: undefined };
    const page = await storageCall('kvs.query', { prefix: storagePrefix(where), cursor, limit });
    const results = page.results.map(({ key, value }) => ({ key, value }));
    const nextCursor = page.nextCursor !== null ? page.nextCursor : results.length > 0 ? AFTER_LAST_PAGE : undefined;
    return { results, nextCursor };
  }
}

const orUndefined = (value) => (value === null ? undefined : value);

export const storage = {
  get: async (key) => {
    const entry = await storageCall('kvs.get', { key });
    return entry === null ? undefined : entry.value;
  },
  set: async (key, value) => {
    await storageCall('kvs.set', { key, value });
  },
  delete: async (key) => {
    await storageCall('kvs.delete', { key });
  },
  getSecret: async (key) => orUndefined(await storageCall('kvs.getSecret', { key })),
  setSecret: async (key, value) => {
    await storageCall('kvs.setSecret', { key, value });
  },
  deleteSecret: async (key) => {
    await storageCall('kvs.deleteSecret', { key });
  },
  query: () => new StorageQuery({}),
  entity: unsupported('@forge/api storage.entity (the entity store)'),
};

export default {
  asApp,
  asUser,
  fetch,
  requestJira,
  requestConfluence,
  requestBitbucket,
  invokeRemote,
  invokeService,
  getAppContext,
  webTrigger,
  permissions,
  storage,
};
