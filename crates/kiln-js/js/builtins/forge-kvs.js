// @forge/kvs in Kiln: Forge's key-value store and secrets with Forge's API,
// results and errors, over the server's `kvs.*` host calls. The server keeps
// the entries (sealed, per installation) and decides whose they are; this
// module only shapes requests and replies, so nothing here is a boundary.
//
// Supported: `get` (with `metadataFields`), `set` (with `ttl`, `keyPolicy`,
// `returnValue`, `returnMetadataFields`), `delete`,
// `query().where('key', WhereConditions.beginsWith(p)).cursor(c).limit(n)
// .getMany() / .getOne()` (with `metadataFields`), `batchGet`, `batchSet`
// (with `options.ttl`), `batchDelete`, `getSecret`, `setSecret`,
// `deleteSecret`; `ForgeKvsError` and `ForgeKvsAPIError` with Forge's codes.
//
// Throwing NotSupportedError: the entity store (`kvs.entity`, `Filter`),
// transactions (`kvs.transact`), query conditions other than `beginsWith` on
// 'key', batch items naming an entity, `setSecret` options other than
// `keyPolicy: 'OVERRIDE'`, and `metadataFields` on `getSecret`.
import { hostCall } from 'kiln:host';
import { unsupported, NotSupportedError } from 'builtin:kiln:unsupported';

export { NotSupportedError };

// The @forge/kvs release whose API this module follows.
const PACKAGE_VERSION = '1.6.5';

// ---------------------------------------------------------------- errors

export class ForgeKvsError extends Error {
  constructor(message, packageVersion = PACKAGE_VERSION) {
    super(message);
    this.name = 'ForgeKvsError';
    this.packageVersion = packageVersion;
  }
}

// A refusal by the store: `code` is Forge's (`KEY_TOO_LONG`, `INVALID_KEY`,
// `KEY_ALREADY_EXISTS`...). Like Forge's, its name stays 'ForgeKvsError'.
export class ForgeKvsAPIError extends ForgeKvsError {
  constructor(responseDetails, forgeError) {
    super(forgeError.message);
    const details = responseDetails || {};
    this.responseDetails = {
      status: details.status,
      statusText: details.statusText,
      traceId: details.traceId,
      httpMethod: details.httpMethod,
      httpPath: details.httpPath,
      responseBodyLength: details.responseBodyLength,
    };
    const { code, message, context, ...more } = forgeError;
    this.code = code;
    this.message = message;
    this.context = { ...context, ...more };
  }
}

// The HTTP status Forge's store answers each code with, so that
// `responseDetails` reads as it would on Forge.
const CLIENT_ERRORS = new Set([
  'BAD_REQUEST', 'INVALID_KEY', 'KEY_TOO_LONG', 'MAX_SIZE', 'MAX_DEPTH', 'INVALID_VALUE', 'INVALID_TTL',
  'INVALID_LIMIT', 'INVALID_CURSOR', 'TOO_MANY_KEYS',
]);

function statusOf(code) {
  if (CLIENT_ERRORS.has(code)) return [400, 'Bad Request'];
  if (code === 'PERMISSION_DENIED') return [403, 'Forbidden'];
  if (code === 'KEY_ALREADY_EXISTS') return [409, 'Conflict'];
  return [500, 'Internal Server Error'];
}

// `path` is the endpoint Forge's client would have called.
function apiError(path, code, message) {
  const [status, statusText] = statusOf(code);
  const body = JSON.stringify({ code, message });
  return new ForgeKvsAPIError(
    { status, statusText, traceId: null, httpMethod: 'POST', httpPath: path, responseBodyLength: body.length },
    { code, message },
  );
}

// ---------------------------------------------------------------- host calls

const OPS = {
  get: ['kvs.get', '/api/v1/get'],
  set: ['kvs.set', '/api/v1/set'],
  delete: ['kvs.delete', '/api/v1/delete'],
  query: ['kvs.query', '/api/v1/query'],
  batchGet: ['kvs.batchGet', '/api/v1/batch/get'],
  batchSet: ['kvs.batchSet', '/api/v1/batch/set'],
  batchDelete: ['kvs.batchDelete', '/api/v1/batch/delete'],
  getSecret: ['kvs.getSecret', '/api/v1/secret/get'],
  setSecret: ['kvs.setSecret', '/api/v1/secret/set'],
  deleteSecret: ['kvs.deleteSecret', '/api/v1/secret/delete'],
};

async function call([capability, path], args) {
  try {
    return await hostCall(capability, args);
  } catch (e) {
    const code = e && typeof e.code === 'string' ? e.code : 'UNKNOWN_ERROR';
    throw apiError(path, code, e && e.message ? e.message : 'Unexpected error in Forge KVS API');
  }
}

// ---------------------------------------------------------------- shapes

export const MetadataField = Object.freeze({
  CREATED_AT: 'CREATED_AT',
  UPDATED_AT: 'UPDATED_AT',
  EXPIRE_TIME: 'EXPIRE_TIME',
});
export const Sort = Object.freeze({ ASC: 'ASC', DESC: 'DESC' });

const KNOWN_FIELDS = new Set(Object.values(MetadataField));

// Forge's store refuses a metadata field it does not know.
function checkFields(fields, path) {
  if (fields === undefined || fields === null) return;
  if (!Array.isArray(fields) || !fields.every((f) => KNOWN_FIELDS.has(f))) {
    throw apiError(path, 'BAD_REQUEST', 'Provided request body is invalid: metadataFields must list CREATED_AT, UPDATED_AT or EXPIRE_TIME');
  }
}

// The host's times are milliseconds; Forge gives `createdAt` and
// `updatedAt` in seconds and `expireTime` as an ISO 8601 instant.
const seconds = (ms) => Math.floor(ms / 1000);
const instant = (ms) => (ms === null || ms === undefined ? undefined : new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z'));

// `{key, value}` and the metadata asked for (a field asked for is present
// even when unset, as in Forge).
function withMetadata(entry, fields) {
  const out = { key: entry.key, value: entry.value };
  if (!Array.isArray(fields)) return out;
  if (fields.includes(MetadataField.CREATED_AT)) out.createdAt = seconds(entry.createdAt);
  if (fields.includes(MetadataField.UPDATED_AT)) out.updatedAt = seconds(entry.updatedAt);
  if (fields.includes(MetadataField.EXPIRE_TIME)) out.expireTime = instant(entry.expireTime);
  return out;
}

const isObject = (v) => v !== null && typeof v === 'object';

export const isOverrideAndReturnOptions = (options) => isObject(options) && 'returnValue' in options;

// ---------------------------------------------------------------- conditions

const clause = (condition, ...values) => ({ condition, values });

export const WhereConditions = Object.freeze({
  beginsWith: (value) => clause('BEGINS_WITH', value),
  between: (first, second) => clause('BETWEEN', first, second),
  equalTo: (value) => clause('EQUAL_TO', value),
  greaterThan: (value) => clause('GREATER_THAN', value),
  greaterThanEqualTo: (value) => clause('GREATER_THAN_EQUAL_TO', value),
  lessThan: (value) => clause('LESS_THAN', value),
  lessThanEqualTo: (value) => clause('LESS_THAN_EQUAL_TO', value),
});

export const FilterConditions = Object.freeze({
  beginsWith: WhereConditions.beginsWith,
  between: WhereConditions.between,
  contains: (value) => clause('CONTAINS', value),
  notContains: (value) => clause('NOT_CONTAINS', value),
  equalTo: WhereConditions.equalTo,
  notEqualTo: (value) => clause('NOT_EQUAL_TO', value),
  exists: () => clause('EXISTS', true),
  notExists: () => clause('NOT_EXISTS', true),
  greaterThan: WhereConditions.greaterThan,
  greaterThanEqualTo: WhereConditions.greaterThanEqualTo,
  lessThan: WhereConditions.lessThan,
  lessThanEqualTo: WhereConditions.lessThanEqualTo,
});

// Filters belong to the entity store, which Kiln does not have yet.
export const Filter = unsupported('@forge/kvs Filter (entity store filters)');

// ---------------------------------------------------------------- get, set, delete

async function get(key, options) {
  checkFields(options && options.metadataFields, OPS.get[1]);
  const entry = await call(OPS.get, { key });
  if (entry === null) return undefined;
  return options ? withMetadata(entry, options.metadataFields) : entry.value;
}

async function set(key, value, options) {
  const opts = isObject(options) ? options : {};
  checkFields(opts.returnMetadataFields, OPS.set[1]);
  const entry = await call(OPS.set, {
    key,
    value,
    ttl: opts.ttl,
    keyPolicy: opts.keyPolicy,
    returnValue: opts.returnValue,
  });
  if (!isOverrideAndReturnOptions(options) || entry === null) return undefined;
  return withMetadata(entry, opts.returnMetadataFields);
}

async function remove(key) {
  await call(OPS.delete, { key });
}

// ---------------------------------------------------------------- query

// The key prefix a query's `where` asks for: Kiln's store pages through
// keys by prefix, so `beginsWith` on 'key' is the one condition it serves.
function prefixOf(where) {
  if (where === undefined || where === null || (Array.isArray(where) && where.length === 0)) return '';
  if (!Array.isArray(where) || where.length > 1) {
    throw new NotSupportedError('@forge/kvs query with other than one where condition');
  }
  const [{ property, condition, values } = {}] = where;
  if (property !== 'key') {
    throw new NotSupportedError(`@forge/kvs query().where('${property}', ...) (KVS queries filter on 'key' only)`);
  }
  if (condition !== 'BEGINS_WITH') {
    throw new NotSupportedError(`@forge/kvs query().where('key', ${condition}) (Kiln serves WhereConditions.beginsWith)`);
  }
  const value = Array.isArray(values) ? values[0] : undefined;
  if (typeof value !== 'string' && typeof value !== 'number') {
    throw apiError(OPS.query[1], 'BAD_REQUEST', 'Provided request body is invalid: beginsWith takes a string or a number');
  }
  return String(value);
}

// Like Forge's, the builder changes itself and returns itself.
class KvsQueryBuilder {
  #options;

  constructor(options) {
    this.#options = { ...(isObject(options) ? options : {}) };
  }

  where(property, condition) {
    this.#options.where = [{ property, ...condition }];
    return this;
  }

  cursor(cursor) {
    this.#options.cursor = cursor;
    return this;
  }

  limit(limit) {
    this.#options.limit = limit;
    return this;
  }

  async getOne() {
    const { results } = await this.limit(1).getMany();
    return results && results.length > 0 ? results[0] : undefined;
  }

  async getMany() {
    const { where, cursor, limit, metadataFields } = this.#options;
    checkFields(metadataFields, OPS.query[1]);
    const page = await call(OPS.query, { prefix: prefixOf(where), cursor, limit });
    return {
      results: page.results.map((entry) => withMetadata(entry, metadataFields)),
      nextCursor: page.nextCursor === null ? undefined : page.nextCursor,
    };
  }
}

// ---------------------------------------------------------------- batches

function batchList(items, op) {
  if (!Array.isArray(items) || !items.every(isObject)) {
    throw apiError(op[1], 'BAD_REQUEST', 'Provided request body is invalid: a batch is a list of items');
  }
  for (const item of items) {
    if (item.entityName !== undefined) {
      throw new NotSupportedError(`@forge/kvs ${op[0].slice(4)} with entityName '${item.entityName}' (the entity store)`);
    }
  }
  return items;
}

const failure = ({ key, code, message }) => ({ key, error: { code, message } });

// A batch set takes only `options.ttl`, as Forge's does.
function batchTtl(options) {
  if (options === undefined || options === null) return undefined;
  const other = Object.keys(options).filter((k) => k !== 'ttl');
  if (other.length > 0) throw new NotSupportedError(`@forge/kvs batchSet with options.${other[0]}`);
  return options.ttl;
}

async function batchSet(items) {
  const list = batchList(items, OPS.batchSet);
  const reply = await call(OPS.batchSet, {
    items: list.map((item) => ({ key: item.key, value: item.value, ttl: batchTtl(item.options) })),
  });
  return { successfulKeys: reply.succeeded.map((key) => ({ key })), failedKeys: reply.failed.map(failure) };
}

async function batchGet(items) {
  const list = batchList(items, OPS.batchGet);
  const fields = new Map();
  for (const item of list) {
    const wanted = item.options && item.options.metadataFields;
    checkFields(wanted, OPS.batchGet[1]);
    fields.set(item.key, wanted);
  }
  const reply = await call(OPS.batchGet, { keys: list.map((item) => item.key) });
  // Failures and missing keys in the order they were asked for.
  const failed = new Map(reply.failed.map((f) => [f.key, f]));
  for (const key of reply.missing) failed.set(key, { key, code: 'KEY_NOT_FOUND', message: 'Key does not exist' });
  const failedKeys = [];
  for (const { key } of list) {
    if (failed.has(key)) {
      failedKeys.push(failure(failed.get(key)));
      failed.delete(key);
    }
  }
  return {
    successfulKeys: reply.succeeded.map((entry) => withMetadata(entry, fields.get(entry.key))),
    failedKeys,
  };
}

async function batchDelete(items) {
  const list = batchList(items, OPS.batchDelete);
  const reply = await call(OPS.batchDelete, { keys: list.map((item) => item.key) });
  return { successfulKeys: reply.succeeded.map((key) => ({ key })), failedKeys: reply.failed.map(failure) };
}

// ---------------------------------------------------------------- secrets
// Kiln's secret store keeps a value and nothing else: no TTL, key policy,
// returned value or metadata, so asking for one fails loudly.

async function getSecret(key, options) {
  if (options && Array.isArray(options.metadataFields) && options.metadataFields.length > 0) {
    throw new NotSupportedError('@forge/kvs kvs.getSecret with metadataFields');
  }
  const value = await call(OPS.getSecret, { key });
  if (value === null) return undefined;
  return options ? { key, value } : value;
}

async function setSecret(key, value, options) {
  if (isObject(options)) {
    for (const [name, given] of Object.entries(options)) {
      if (given === undefined || (name === 'keyPolicy' && given === 'OVERRIDE')) continue;
      const what = name === 'keyPolicy' ? `keyPolicy '${given}'` : `options.${name}`;
      throw new NotSupportedError(`@forge/kvs kvs.setSecret with ${what}`);
    }
  }
  await call(OPS.setSecret, { key, value });
}

async function deleteSecret(key) {
  await call(OPS.deleteSecret, { key });
}

// ---------------------------------------------------------------- kvs

export const kvs = {
  get,
  set,
  delete: remove,
  query: (options) => new KvsQueryBuilder(options),
  batchSet,
  batchGet,
  batchDelete,
  getSecret,
  setSecret,
  deleteSecret,
  entity: unsupported('@forge/kvs kvs.entity (the entity store)'),
  transact: unsupported('@forge/kvs kvs.transact (transactions)'),
};
export default kvs;
