// Kiln's prelude: the globals every invocation starts with, built on the
// native `__kiln` object the engine installs. It runs in every fresh runtime
// before app code, so nothing here survives from one invocation to the next.
//
// This file is Kiln's own code. It is not a security boundary: app code runs
// in the same runtime and can reach everything here. The boundary is the
// process (jail) and the server, which checks every host call.
//
// Every invocation pays for everything this module defines, in making it and
// in freeing it: what not every invocation needs lives in a module loaded on
// first use (formatting, host calls, the less used natives, the lazy
// globals), and globals are defined through `native.defineGlobals`, which
// costs far less than `Object.defineProperty` with a descriptor object.

export const native = globalThis.__kiln;
delete globalThis.__kiln;

const define = (name, value) =>
  Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });

// ---------------------------------------------------------------- console

// Formatting lives in its own module, loaded on the first console line.
let format;
const formatArgs = (args) => (format ??= native.importSync('kiln:format').format)(args);

const emit = (level) => (...args) => native.log(level, formatArgs(args));
const consoleObject = { log: emit(1), info: emit(1), debug: emit(0), trace: emit(0), warn: emit(2), error: emit(3) };

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

// Called by the engine when timer `id` is due.
function fireTimer(id, repeat) {
  const timer = timers.get(id);
  if (!timer) return;
  if (!repeat) timers.delete(id);
  timer.fn(...timer.args);
}

// ---------------------------------------------------------------- base64
// The natives refuse bad input with 'InvalidCharacterError: ...'; the Web
// API throws a DOMException of that name, which callers test for.
function base64(convert, data) {
  try {
    return convert(String(data));
  } catch (e) {
    const [name, ...rest] = String(e.message).split(': ');
    if (name !== 'InvalidCharacterError') throw e;
    throw new DOMException(rest.join(': '), name);
  }
}

// ---------------------------------------------------------------- host calls
// In their own module, `kiln:host`, loaded by the first module that makes
// one (Kiln's Forge modules and fetch import it from there).

const hostCall = (capability, args) => native.importSync('kiln:host').hostCall(capability, args);

// ---------------------------------------------------------------- lazy globals
// Defined on first use from their own modules. One function is both getter
// and setter of a lazy global (see `defineGlobals` in natives.rs): read
// first, it loads the value from its module; assigned first, it takes the
// value assigned. Either way the global becomes a plain data property.
function lazy(name, module, exported) {
  return function (value) {
    if (arguments.length === 0) value = native.importSync(module)[exported];
    define(name, value);
    return value;
  };
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

native.defineGlobals(
  {
    console: Object.freeze(consoleObject),
    setTimeout: (fn, ms, ...args) => schedule(fn, ms, args, false),
    setInterval: (fn, ms, ...args) => schedule(fn, ms, args, true),
    clearTimeout: cancel,
    clearInterval: cancel,
    global: globalThis,
    btoa: (data) => base64(native.btoa, data),
    atob: (data) => base64(native.atob, data),
    __kilnModules: Object.freeze({ makeRequire, requireById, hostCall }),
  },
  {
    TextEncoder: lazy('TextEncoder', 'kiln:text', 'TextEncoder'),
    TextDecoder: lazy('TextDecoder', 'kiln:text', 'TextDecoder'),
    URL: lazy('URL', 'kiln:url', 'URL'),
    URLSearchParams: lazy('URLSearchParams', 'kiln:url', 'URLSearchParams'),
    structuredClone: lazy('structuredClone', 'kiln:clone', 'structuredClone'),
    crypto: lazy('crypto', 'kiln:crypto', 'crypto'),
    performance: lazy('performance', 'kiln:crypto', 'performance'),
    DOMException: lazy('DOMException', 'kiln:crypto', 'DOMException'),
    fetch: lazy('fetch', 'kiln:fetch', 'fetch'),
    Headers: lazy('Headers', 'kiln:fetch', 'Headers'),
    Response: lazy('Response', 'kiln:fetch', 'Response'),
    // Node's globals, which apps and their dependencies use without importing.
    Buffer: lazy('Buffer', 'builtin:node:buffer', 'Buffer'),
    process: lazy('process', 'builtin:node:process', 'default'),
    setImmediate: lazy('setImmediate', 'builtin:node:timers', 'setImmediate'),
    clearImmediate: lazy('clearImmediate', 'builtin:node:timers', 'clearImmediate'),
  },
);
// The functions the engine calls; `kiln:host` adds `settleCall` when it loads.
export const hooks = { fireTimer, entry };
native.install(hooks);
