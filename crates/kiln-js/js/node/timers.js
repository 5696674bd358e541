// node:timers — the global timers (Kiln's event loop), plus setImmediate as
// a zero-delay timer.
const g = globalThis;

export const setTimeout = (...args) => g.setTimeout(...args);
export const clearTimeout = (id) => g.clearTimeout(id);
export const setInterval = (...args) => g.setInterval(...args);
export const clearInterval = (id) => g.clearInterval(id);
export const setImmediate = (fn, ...args) => g.setTimeout(fn, 0, ...args);
export const clearImmediate = (id) => g.clearTimeout(id);
export const queueMicrotask = (fn) => g.queueMicrotask(fn);

export const promises = {
  setTimeout: (ms, value) => new Promise((resolve) => g.setTimeout(() => resolve(value), ms)),
  setImmediate: (value) => new Promise((resolve) => g.setTimeout(() => resolve(value), 0)),
  scheduler: {
    wait: (ms) => new Promise((resolve) => g.setTimeout(resolve, ms)),
    yield: () => new Promise((resolve) => g.setTimeout(resolve, 0)),
  },
};

export default { setTimeout, clearTimeout, setInterval, clearInterval, setImmediate, clearImmediate, queueMicrotask, promises };
