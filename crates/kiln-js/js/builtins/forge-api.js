// @forge/api in Kiln.
//
// Supported: `route` (with Forge's escaping rules), `assumeTrustedRoute`,
// `routeFromAbsolute`; `fetch` (egress through the server, as Forge's
// `api.fetch` and the global fetch); `requestJira` and `requestConfluence`
// as the app (`asApp()`), as a user (`asUser(accountId?)`) and, at the top
// level, as nobody (no credentials, as in Forge), all through the server's
// product gateway; Forge's error classes and helpers; the legacy `storage`
// API (`get`, `set`, `delete`, `getSecret`, `setSecret`, `deleteSecret`,
// `query().where('key', startsWith(p))...`) on the same store as @forge/kvs;
// `getAppContext()` and `permissions` (`hasScope`, `canFetchFrom`,
// `canLoadResource`, `hasPermission`) from the description of the
// invocation the server sends (no `installation` contexts, `license` null);
// `authorize()` (Jira issues and projects, Confluence content, as the user in
// session, through the permission APIs); `bindInvocationContext` (identity:
// a Kiln runtime serves one invocation); `webTrigger.getUrl` (with
// `forceCreate`), `queryUrls` and `deleteUrl` (the installation's URLs,
// from the server; `secretKeyConfig` rejects with NotSupportedError).
//
// Still throwing NotSupportedError: `requestBitbucket`, `requestGraph`,
// `requestAtlassian`, `requestConnectedData`, `requestTeamworkGraph`,
// `withProvider`, `withContext`, `invokeRemote`, `invokeService`,
// `privacy`, `i18n`, `__requestAtlassianAsApp`,
// `__requestAtlassianAsUser`, `__fetchProduct`, `__getRuntime`, and from
// @forge/api 2 `getRuntime` and `properties`/`store`; `storage.entity` and
// legacy query conditions other than `startsWith` on 'key'. Every name
// @forge/api 8 exports (and the storage names of earlier majors) exists,
// so an app links even when it imports one of these.
import { native } from 'kiln:natives';
import { hostCall } from 'kiln:host';
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
// ---------------------------------------------------------------- runtime
// The server describes each invocation (ARIs, module, consented scopes and
// egress); nothing here can change it, and it holds no token.

function runtimeDescription() {
  const text = native.runtime();
  if (!text) throw new Error('Forge runtime not found.');
  return JSON.parse(text);
}

export class RuntimePermissions {
  constructor(scopes, external) {
    this.scopes = scopes;
    this.external = external;
  }
  format() {
    return JSON.stringify({ scopes: this.scopes, external: this.external });
  }
}

export class MissingPermissions extends RuntimePermissions {}

export const getAppContext = () => {
  const { appContext, permissions: granted } = runtimeDescription();
  return {
    ...appContext,
    invocationRemainingTimeInMillis: () => native.remainingMillis(),
    installation: undefined,
    permissions: new RuntimePermissions(granted.scopes ?? [], granted.external ?? {}),
  };
};
// Forge binds a callback to the invocation that made it, for runtimes
// shared between invocations. A Kiln runtime serves one invocation and is
// thrown away, so a callback can only ever run in its own: the function is
// returned as it is.
export const bindInvocationContext = (fn) => {
  if (typeof fn !== 'function') throw new TypeError('bindInvocationContext takes a function');
  return fn;
};

// ---------------------------------------------------------------- authorize
// Forge's authorize() (from @forge/auth): permission checks for the user in
// session, through the product permission APIs as that user.

const JIRA_ISSUE_CHECKS = {
  canAssign: 'ASSIGN_ISSUES',
  canCreate: 'CREATE_ISSUES',
  canEdit: 'EDIT_ISSUES',
  canMove: 'MOVE_ISSUES',
  canDelete: 'DELETE_ISSUES',
  canAddComments: 'ADD_COMMENTS',
  canEditAllComments: 'EDIT_ALL_COMMENTS',
  canDeleteAllComments: 'DELETE_ALL_COMMENTS',
  canCreateAttachments: 'CREATE_ATTACHMENTS',
  canDeleteAllAttachments: 'DELETE_ALL_ATTACHMENTS',
};
const JIRA_PROJECT_CHECKS = {
  canAssignIssues: 'ASSIGN_ISSUES',
  canCreateIssues: 'CREATE_ISSUES',
  canEditIssues: 'EDIT_ISSUES',
  canMoveIssues: 'MOVE_ISSUES',
  canDeleteIssues: 'DELETE_ISSUES',
  canAddComments: 'ADD_COMMENTS',
  canEditAllComments: 'EDIT_ALL_COMMENTS',
  canDeleteAllComments: 'DELETE_ALL_COMMENTS',
  canCreateAttachments: 'CREATE_ATTACHMENTS',
  canDeleteAllAttachments: 'DELETE_ALL_ATTACHMENTS',
};
const CONFLUENCE_CHECKS = { canRead: 'read', canUpdate: 'update', canDelete: 'delete' };

const sameIds = (a, b) => JSON.stringify(a.map(String).sort()) === JSON.stringify(b.map(String).sort());
const toArray = (id) => (Array.isArray(id) ? id : [id]);
const methods = (map, check) => Object.fromEntries(Object.entries(map).map(([name, p]) => [name, check(p)]));

export const authorize = () => {
  const accountId = runtimeDescription().aaid;
  if (!accountId) {
    throw new Error('Couldn’t find the accountId of the invoking user. This API can only be used inside user-invoked modules.');
  }
  const post = (body) => ({ method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const jira = async (projectPermissions) => {
    const res = await asUser().requestJira(assumeTrustedRoute('/rest/api/3/permissions/check'), post({ accountId, projectPermissions }));
    return res.json();
  };
  const onEntities = (type, ids) => methods(type === 'issues' ? JIRA_ISSUE_CHECKS : JIRA_PROJECT_CHECKS, (permission) => async () => {
    const { projectPermissions = [] } = await jira([{ permissions: [permission], [type]: ids }]);
    if (!ids.length) return true;
    const allowed = projectPermissions.find((p) => p.permission === permission)?.[type];
    return Boolean(allowed) && sameIds(allowed, ids);
  });
  return {
    onJira: async (projectPermissions) => (await jira(projectPermissions)).projectPermissions || [],
    onJiraProject: (projects) => onEntities('projects', toArray(projects)),
    onJiraIssue: (issues) => onEntities('issues', toArray(issues)),
    onConfluenceContent: (contentId) => methods(CONFLUENCE_CHECKS, (operation) => async () => {
      const path = `/wiki/rest/api/content/${encodeURIComponent(contentId)}/permission/check`;
      const res = await asUser().requestConfluence(
        assumeTrustedRoute(path),
        post({ subject: { type: 'user', identifier: accountId }, operation }),
      );
      return Boolean((await res.json())?.hasPermission);
    }),
  };
};
// Forge's client finds a URL's ID after `/x1/` or `/public/`.
const WEBTRIGGER_URL_ID = /\/(?:x1|public)\/([^/?#]+)/;

// A web trigger host call; a refusal becomes the Error Forge's client
// throws ("Internal error occurred: Failed to ...: <why>"), with the
// server's code kept as `code`.
async function webTriggerCall(capability, args, failure) {
  try {
    return await hostCall(capability, args);
  } catch (e) {
    const error = new Error(`Internal error occurred: Failed to ${failure}: ${e?.message}`);
    if (e?.code !== undefined) error.code = e.code;
    throw error;
  }
}

// Over the server's `webtrigger.*` host calls, which always act for the
// invocation's own installation. Arguments are read as Forge's client
// reads them; the server checks them again.
export const webTrigger = {
  // The module's URL (the installation's oldest, made on first ask), or
  // with `forceCreate` (`true`, or `{ forceCreate: true }`) a new one.
  getUrl: async (moduleKey, optionsOrForceCreate) => {
    const forceCreate = typeof optionsOrForceCreate === 'boolean'
      ? optionsOrForceCreate
      : optionsOrForceCreate?.forceCreate ?? false;
    const secretKeyConfig = typeof optionsOrForceCreate === 'object' && optionsOrForceCreate !== null
      ? optionsOrForceCreate.secretKeyConfig
      : undefined;
    // Forge's meaning for it is not documented; Kiln signs requests to
    // hmacSharedSecret web triggers its own way, so refuse rather than
    // hand back a URL that does not do what the app asked.
    if (secretKeyConfig !== undefined) {
      throw new NotSupportedError(
        '@forge/api webTrigger.getUrl with secretKeyConfig (Kiln signs requests to hmacSharedSecret web triggers '
          + "with its own per-installation key: 'kiln webtrigger MODULE --signing-secret')",
      );
    }
    return webTriggerCall('webtrigger.getUrl', { moduleKey, forceCreate }, 'get web trigger URL');
  },
  // `[{ moduleKey, url }]`: every module's URLs, or with a key (Forge
  // filters on a truthy one, by strict equality) that module's.
  queryUrls: async (moduleKey) => {
    const filter = typeof moduleKey === 'string' && moduleKey !== '' ? moduleKey : null;
    const urls = await webTriggerCall('webtrigger.queryUrls', { moduleKey: filter }, 'get web trigger URLs');
    return moduleKey && filter === null ? [] : urls;
  },
  // Delete one of the installation's URLs; it answers 404 from then on.
  deleteUrl: async (webTriggerUrl) => {
    const matches = webTriggerUrl.match(WEBTRIGGER_URL_ID);
    if (!matches || matches.length < 2) throw new Error('Internal error occurred: Failed to parse web trigger URL for ID');
    await webTriggerCall('webtrigger.deleteUrl', { id: matches[1] }, 'delete web trigger URL');
  },
};
// `host` against one declared entry: `*`, `*.domain` (subdomains only), a
// bare host or an https URL (its host), as the egress gateway matches them.
function entryAllows(entry, host) {
  const text = typeof entry === 'string' ? entry : entry?.address ?? entry?.remote ?? '';
  if (text === '*') return true;
  const pattern = text.replace(/^[a-z][a-z0-9+.-]*:\/\//i, '').split('/')[0].replace(/:\d+$/, '').toLowerCase();
  if (pattern.startsWith('*.')) return host.endsWith(pattern.slice(1)) && host.length > pattern.length - 1;
  return pattern !== '' && host === pattern.replace(/\.$/, '');
}

function hostOf(url) {
  const text = typeof url === 'string' ? url : url?.address ?? url?.remote ?? '';
  try {
    return new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `https://${text}`).hostname.toLowerCase().replace(/\.$/, '');
  } catch {
    return null;
  }
}

function urlsAllowed(entries, url) {
  const host = hostOf(url);
  return host !== null && (entries ?? []).some((entry) => entryAllows(entry, host));
}

const FETCH_TYPES = ['backend', 'client'];
const RESOURCE_TYPES = ['fonts', 'styles', 'frames', 'images', 'media', 'scripts'];

function hasPermission(requirements) {
  if (requirements === null || typeof requirements !== 'object' || Array.isArray(requirements)) {
    throw new TypeError('hasPermission takes an object with scopes and/or external');
  }
  const invalid = Object.keys(requirements).filter((k) => k !== 'scopes' && k !== 'external');
  if (invalid.length) {
    throw new Error(`Invalid permission key(s): ${invalid.join(', ')}. Visit https://go.atlassian.com/forge-permissions for more information.`);
  }
  const granted = runtimeDescription().permissions;
  const missingScopes = (requirements.scopes ?? []).filter((s) => !(granted.scopes ?? []).includes(s));
  let missingExternal;
  const external = requirements.external ?? {};
  for (const [type, wanted] of Object.entries(external)) {
    if (type === 'configurable') continue;
    if (type === 'fetch') {
      for (const kind of FETCH_TYPES) {
        const missing = (wanted?.[kind] ?? []).filter((u) => !urlsAllowed(granted.external?.fetch?.[kind], u));
        if (missing.length) {
          missingExternal ??= {};
          missingExternal.fetch ??= {};
          missingExternal.fetch[kind] = missing.map((u) => (typeof u === 'string' ? u : u.address ?? u.remote));
        }
      }
      continue;
    }
    if (!RESOURCE_TYPES.includes(type)) throw new Error(`Invalid permission key(s): external.${type}`);
    const missing = (wanted ?? []).filter((u) => !urlsAllowed(granted.external?.[type], u));
    if (missing.length) {
      missingExternal ??= {};
      missingExternal[type] = missing.map((u) => (typeof u === 'string' ? u : u.address ?? u.remote));
    }
  }
  if (!missingScopes.length && !missingExternal) return { granted: true };
  return {
    granted: false,
    missing: new MissingPermissions(missingScopes.length ? missingScopes : undefined, missingExternal),
  };
}

export const permissions = {
  hasPermission,
  hasScope: (scope) => (runtimeDescription().permissions.scopes ?? []).includes(scope),
  canFetchFrom: (type, url) => {
    if (!FETCH_TYPES.includes(type)) throw new Error(`Invalid fetch type: ${type}. Use 'backend' or 'client'.`);
    return urlsAllowed(runtimeDescription().permissions.external?.fetch?.[type], url);
  },
  canLoadResource: (type, url) => {
    if (!RESOURCE_TYPES.includes(type)) throw new Error(`Invalid resource type: ${type}`);
    return urlsAllowed(runtimeDescription().permissions.external?.[type], url);
  },
};
export const privacy = { reportPersonalData: unsupported('@forge/api privacy.reportPersonalData') };
export const i18n = { getTranslations: unsupported('@forge/api i18n.getTranslations') };

// Forge's calls to Atlassian's own gateway (queues, the GraphQL API, DevOps
// data), which Forge's packages and some apps import by name.
export const __requestAtlassianAsApp = unsupported('@forge/api __requestAtlassianAsApp');
export const __requestAtlassianAsUser = unsupported('@forge/api __requestAtlassianAsUser');
export const __fetchProduct = unsupported('@forge/api __fetchProduct');
export const __getRuntime = unsupported('@forge/api __getRuntime');
/** @deprecated in Forge: returns `__requestAtlassianAsApp`. */
export const createRequestStargateAsApp = () => __requestAtlassianAsApp;

// Exported by @forge/api 2 only.
export const getRuntime = unsupported('@forge/api getRuntime');
const propertiesOn = (what) => () => {
  throw new NotSupportedError(`@forge/api properties.${what} (call the product's REST API instead)`);
};
export const properties = {
  onJiraIssue: propertiesOn('onJiraIssue'),
  onJiraProject: propertiesOn('onJiraProject'),
  onConfluencePage: propertiesOn('onConfluencePage'),
  onConfluenceSpace: propertiesOn('onConfluenceSpace'),
};
export const store = properties;

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

// The entity store's conditions and sort order as @forge/api 2–7 export
// them (from @forge/storage): plain values, so apps that import them link.
// Only `storage.entity` reads them, and it is not supported.
const clause = (condition, values) => ({ condition, values });
const entityConditions = {
  beginsWith: (value) => clause('BEGINS_WITH', [value]),
  between: (values) => clause('BETWEEN', values),
  equalsTo: (value) => clause('EQUAL_TO', [value]),
  isGreaterThan: (value) => clause('GREATER_THAN', [value]),
  isGreaterThanEqualTo: (value) => clause('GREATER_THAN_EQUAL_TO', [value]),
  isLessThan: (value) => clause('LESS_THAN', [value]),
  isLessThanEqualTo: (value) => clause('LESS_THAN_EQUAL_TO', [value]),
};
export const WhereConditions = Object.freeze({ ...entityConditions });
export const FilterConditions = Object.freeze({
  ...entityConditions,
  contains: (value) => clause('CONTAINS', [value]),
  doesNotContain: (value) => clause('NOT_CONTAINS', [value]),
  notEqualsTo: (value) => clause('NOT_EQUAL_TO', [value]),
  exists: () => clause('EXISTS', [true]),
  doesNotExist: () => clause('NOT_EXISTS', [true]),
});
export const SortOrder = Object.freeze({ ASC: 'ASC', DESC: 'DESC' });

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
