// node:process — and the global `process`, built from here the first time
// app code touches it. Nothing of the host is visible: `env` holds only what
// Kiln puts there (see `environment` below), there is no pid, argv or
// working directory, and `exit` throws.
import { performance } from 'kiln:crypto';
import { native } from 'kiln:natives';

// The app's variables (`kiln variables set`), which the server sends with
// the program a worker serves: known before any module's top level runs,
// fixed for the worker's life (as in Forge, a change applies to workers
// started after it). Never the worker's own environment.
const environment = JSON.parse(native.env());

function unsupported(what) {
  const e = new Error(`process.${what} is not supported by Kiln: app code cannot control its process`);
  e.name = 'NotSupportedError';
  e.code = 'NOT_SUPPORTED';
  return e;
}

function hrtime(previous) {
  const ns = BigInt(Math.round(performance.now() * 1e6));
  let seconds = Number(ns / 1000000000n);
  let nanos = Number(ns % 1000000000n);
  if (Array.isArray(previous)) {
    seconds -= previous[0];
    nanos -= previous[1];
    if (nanos < 0) {
      seconds -= 1;
      nanos += 1e9;
    }
  }
  return [seconds, nanos];
}
hrtime.bigint = () => BigInt(Math.round(performance.now() * 1e6));

const listeners = () => process;

const process = {
  env: environment,
  version: 'v20.11.1',
  versions: Object.freeze({ node: '20.11.1', kiln: '0' }),
  release: Object.freeze({ name: 'node' }),
  platform: 'linux',
  arch: 'x64',
  title: 'kiln',
  argv: ['/usr/local/bin/node'],
  argv0: 'node',
  execArgv: [],
  execPath: '/usr/local/bin/node',
  pid: 1,
  ppid: 0,
  exitCode: undefined,
  browser: false,
  features: Object.freeze({}),
  config: Object.freeze({ variables: {} }),
  cwd: () => '/',
  chdir() { throw unsupported('chdir'); },
  umask: () => 0o22,
  uptime: () => performance.now() / 1000,
  hrtime,
  memoryUsage: Object.assign(() => ({ rss: 0, heapTotal: 0, heapUsed: 0, external: 0, arrayBuffers: 0 }), { rss: () => 0 }),
  cpuUsage: () => ({ user: 0, system: 0 }),
  nextTick(callback, ...args) {
    if (typeof callback !== 'function') {
      const e = new TypeError('The "callback" argument must be of type function.');
      e.code = 'ERR_INVALID_ARG_TYPE';
      throw e;
    }
    queueMicrotask(() => callback(...args));
  },
  emitWarning(warning, type) {
    const text = warning instanceof Error ? `${warning.name}: ${warning.message}` : `${typeof type === 'string' ? type : 'Warning'}: ${warning}`;
    console.warn(text);
  },
  exit(code) {
    const e = unsupported(`exit(${code === undefined ? '' : code})`);
    e.message += '; return from the handler, or throw, instead';
    throw e;
  },
  abort() { throw unsupported('abort()'); },
  kill() { throw unsupported('kill()'); },
  // Process events never fire in a Kiln invocation; registering is harmless.
  on: listeners,
  once: listeners,
  off: listeners,
  addListener: listeners,
  removeListener: listeners,
  removeAllListeners: listeners,
  prependListener: listeners,
  prependOnceListener: listeners,
  emit: () => false,
  listeners: () => [],
  listenerCount: () => 0,
  stdout: { write: (s) => { console.log(String(s).replace(/\n$/, '')); return true; }, isTTY: false },
  stderr: { write: (s) => { console.error(String(s).replace(/\n$/, '')); return true; }, isTTY: false },
};

export const { env, version, versions, platform, arch, nextTick, cwd, exit, emitWarning } = process;
export { hrtime };
export default process;
