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
// globals, which the engine defines), and globals are defined through
// `native.defineGlobals`, which costs far less than `Object.defineProperty`
// with a descriptor object.

export const native = globalThis.__kiln;
delete globalThis.__kiln;

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

// ---------------------------------------------------------------- host calls
// In their own module, `kiln:host`, loaded by the first module that makes
// one (Kiln's Forge modules and fetch import it from there).

const hostCall = (capability, args) => native.importSync('kiln:host').hostCall(capability, args);

// ---------------------------------------------------------------- lazy globals
// TextEncoder, URL, fetch, Buffer and the rest that not every invocation
// uses are defined by the engine on first use (LAZY_GLOBALS in natives.rs).

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

native.defineGlobals({
  console: Object.freeze(consoleObject),
  setTimeout: (fn, ms, ...args) => schedule(fn, ms, args, false),
  setInterval: (fn, ms, ...args) => schedule(fn, ms, args, true),
  clearTimeout: cancel,
  clearInterval: cancel,
  global: globalThis,
  __kilnModules: Object.freeze({ makeRequire, requireById, hostCall }),
});
// The functions the engine calls; `kiln:host` adds `settleCall` when it loads.
export const hooks = { fireTimer, entry };
native.install(hooks);
