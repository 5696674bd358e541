// Kiln's prelude: the globals every invocation starts with, built on the
// native `__kiln` object the engine installs. It runs in every fresh runtime
// before app code, so nothing here survives from one invocation to the next.
//
// This file is Kiln's own code. It is not a security boundary: app code runs
// in the same runtime and can reach everything here. The boundary is the
// process (jail) and the server, which checks every host call.

export const native = globalThis.__kiln;
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

// Ask the server for something; the promise settles with its reply. Kiln's
// own modules import it from here rather than through the global, which app
// code can replace.
export function hostCall(capability, args) {
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

// ---------------------------------------------------------------- lazy globals
// Defined on first use from their own modules.

function lazy(name, module, exported) {
  const settle = (value) =>
    Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });
  Object.defineProperty(globalThis, name, {
    configurable: true,
    enumerable: false,
    get() {
      const value = native.importSync(module)[exported];
      settle(value);
      return value;
    },
    set(value) { settle(value); },
  });
}

lazy('TextEncoder', 'kiln:text', 'TextEncoder');
lazy('TextDecoder', 'kiln:text', 'TextDecoder');
lazy('URL', 'kiln:url', 'URL');
lazy('URLSearchParams', 'kiln:url', 'URLSearchParams');
lazy('structuredClone', 'kiln:clone', 'structuredClone');
lazy('crypto', 'kiln:crypto', 'crypto');
lazy('performance', 'kiln:crypto', 'performance');
lazy('DOMException', 'kiln:crypto', 'DOMException');
lazy('fetch', 'kiln:fetch', 'fetch');
lazy('Headers', 'kiln:fetch', 'Headers');
lazy('Response', 'kiln:fetch', 'Response');
// Node's globals, which apps and their dependencies use without importing.
lazy('Buffer', 'builtin:node:buffer', 'Buffer');
lazy('process', 'builtin:node:process', 'default');
lazy('setImmediate', 'builtin:node:timers', 'setImmediate');
lazy('clearImmediate', 'builtin:node:timers', 'clearImmediate');
define('global', globalThis);
define('btoa', (data) => native.btoa(String(data)));
define('atob', (data) => native.atob(String(data)));

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
    case 'builtin': {
      const namespace = native.importSync(target.name);
      // Node's modules are CommonJS in Node: require() returns the module
      // object itself (EventEmitter for 'events', a callable for 'assert'),
      // the same one every time.
      if (target.name.startsWith('builtin:node:') && 'default' in namespace) return namespace.default;
      return esModuleObject(namespace);
    }
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
