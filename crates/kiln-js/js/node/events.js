// node:events — EventEmitter as Node has it (a plain constructor function, so
// that `EventEmitter.call(this)` and util.inherits keep working), with
// `events.once` and the `error` event's semantics. The module's default
// export is EventEmitter itself, as `require('events')` is in Node.

const kCapture = Symbol('kCapture');
export const errorMonitor = Symbol('events.errorMonitor');
export const captureRejectionSymbol = Symbol.for('nodejs.rejection');
let defaultMaxListeners = 10;

function invalidArgType(name, expected, value) {
  const e = new TypeError(`The "${name}" argument must be ${expected}. Received ${value === null ? 'null' : typeof value}`);
  e.code = 'ERR_INVALID_ARG_TYPE';
  return e;
}

function checkListener(listener) {
  if (typeof listener !== 'function') throw invalidArgType('listener', 'of type function', listener);
}

export function EventEmitter(opts) {
  EventEmitter.init.call(this, opts);
}

EventEmitter.prototype._events = undefined;
EventEmitter.prototype._eventsCount = 0;
EventEmitter.prototype._maxListeners = undefined;

EventEmitter.init = function init(opts) {
  if (this._events === undefined || this._events === Object.getPrototypeOf(this)._events) {
    this._events = Object.create(null);
    this._eventsCount = 0;
  }
  this._maxListeners = this._maxListeners || undefined;
  if (opts?.captureRejections) this[kCapture] = true;
};

function events(target) {
  if (target._events === undefined) {
    target._events = Object.create(null);
    target._eventsCount = 0;
  }
  return target._events;
}

Object.defineProperty(EventEmitter, 'defaultMaxListeners', {
  enumerable: true,
  get: () => defaultMaxListeners,
  set(n) {
    if (typeof n !== 'number' || n < 0 || Number.isNaN(n)) {
      const e = new RangeError(`The value of "defaultMaxListeners" is out of range. It must be a non-negative number. Received ${n}`);
      e.code = 'ERR_OUT_OF_RANGE';
      throw e;
    }
    defaultMaxListeners = n;
  },
});

const proto = EventEmitter.prototype;

proto.setMaxListeners = function setMaxListeners(n) {
  if (typeof n !== 'number' || n < 0 || Number.isNaN(n)) {
    const e = new RangeError(`The value of "n" is out of range. It must be a non-negative number. Received ${n}`);
    e.code = 'ERR_OUT_OF_RANGE';
    throw e;
  }
  this._maxListeners = n;
  return this;
};

proto.getMaxListeners = function getMaxListeners() {
  return this._maxListeners === undefined ? defaultMaxListeners : this._maxListeners;
};

proto.emit = function emit(type, ...args) {
  const map = events(this);
  if (type === 'error') {
    if (map[errorMonitor] !== undefined) this.emit(errorMonitor, ...args);
    if (map.error === undefined) {
      const er = args[0];
      if (er instanceof Error) throw er;
      let shown;
      try {
        shown = typeof er === 'string' ? `'${er}'` : JSON.stringify(er) ?? String(er);
      } catch {
        shown = String(er);
      }
      const err = new Error(`Unhandled error. (${shown})`);
      err.code = 'ERR_UNHANDLED_ERROR';
      err.context = er;
      throw err;
    }
  }
  const handler = map[type];
  if (handler === undefined) return false;
  if (typeof handler === 'function') {
    callListener(this, handler, args);
  } else {
    // A copy: listeners added or removed while emitting wait for the next emit.
    for (const listener of handler.slice()) callListener(this, listener, args);
  }
  return true;
};

function callListener(target, listener, args) {
  const result = Reflect.apply(listener, target, args);
  if (target[kCapture] && result && typeof result.then === 'function') {
    result.then(undefined, (err) => {
      queueMicrotask(() => {
        if (typeof target[captureRejectionSymbol] === 'function') target[captureRejectionSymbol](err);
        else target.emit('error', err);
      });
    });
  }
}

function addListener(target, type, listener, prepend) {
  checkListener(listener);
  const map = events(target);
  if (map.newListener !== undefined) {
    target.emit('newListener', type, listener.listener ?? listener);
  }
  const existing = map[type];
  if (existing === undefined) {
    map[type] = listener;
    target._eventsCount++;
    return target;
  }
  const list = typeof existing === 'function' ? [existing] : existing;
  if (prepend) list.unshift(listener);
  else list.push(listener);
  map[type] = list;
  const max = target.getMaxListeners();
  if (max > 0 && list.length > max && !list.warned) {
    list.warned = true;
    const name = target.constructor?.name || 'EventEmitter';
    console.warn(
      `MaxListenersExceededWarning: Possible EventEmitter memory leak detected. ${list.length} ${String(type)} listeners added to [${name}]. Use emitter.setMaxListeners() to increase limit`,
    );
  }
  return target;
}

proto.addListener = function addListener_(type, listener) { return addListener(this, type, listener, false); };
proto.on = proto.addListener;
proto.prependListener = function prependListener(type, listener) { return addListener(this, type, listener, true); };

function onceWrapper(target, type, listener) {
  const state = { fired: false, target, type, listener };
  const wrapped = function (...args) {
    if (state.fired) return undefined;
    state.fired = true;
    state.target.removeListener(state.type, wrapped);
    return Reflect.apply(state.listener, state.target, args);
  };
  wrapped.listener = listener;
  return wrapped;
}

proto.once = function once(type, listener) {
  checkListener(listener);
  return this.on(type, onceWrapper(this, type, listener));
};

proto.prependOnceListener = function prependOnceListener(type, listener) {
  checkListener(listener);
  return this.prependListener(type, onceWrapper(this, type, listener));
};

proto.removeListener = function removeListener(type, listener) {
  checkListener(listener);
  const map = events(this);
  const list = map[type];
  if (list === undefined) return this;
  if (list === listener || list.listener === listener) {
    if (--this._eventsCount === 0) this._events = Object.create(null);
    else delete map[type];
    if (map.removeListener !== undefined) this.emit('removeListener', type, list.listener || listener);
    return this;
  }
  if (typeof list === 'function') return this;
  let position = -1;
  for (let i = list.length - 1; i >= 0; i--) {
    if (list[i] === listener || list[i].listener === listener) {
      position = i;
      break;
    }
  }
  if (position < 0) return this;
  const [removed] = list.splice(position, 1);
  if (list.length === 1) map[type] = list[0];
  if (map.removeListener !== undefined) this.emit('removeListener', type, removed.listener || listener);
  return this;
};
proto.off = proto.removeListener;

proto.removeAllListeners = function removeAllListeners(type) {
  const map = events(this);
  if (map.removeListener === undefined) {
    if (arguments.length === 0) {
      this._events = Object.create(null);
      this._eventsCount = 0;
    } else if (map[type] !== undefined) {
      if (--this._eventsCount === 0) this._events = Object.create(null);
      else delete map[type];
    }
    return this;
  }
  if (arguments.length === 0) {
    for (const key of Reflect.ownKeys(map)) {
      if (key !== 'removeListener') this.removeAllListeners(key);
    }
    this.removeAllListeners('removeListener');
    this._events = Object.create(null);
    this._eventsCount = 0;
    return this;
  }
  const listeners = map[type];
  if (typeof listeners === 'function') this.removeListener(type, listeners);
  else if (listeners !== undefined) {
    for (let i = listeners.length - 1; i >= 0; i--) this.removeListener(type, listeners[i]);
  }
  return this;
};

proto.listeners = function listeners(type) {
  const list = events(this)[type];
  if (list === undefined) return [];
  if (typeof list === 'function') return [list.listener || list];
  return list.map((l) => l.listener || l);
};

proto.rawListeners = function rawListeners(type) {
  const list = events(this)[type];
  if (list === undefined) return [];
  return typeof list === 'function' ? [list] : list.slice();
};

proto.listenerCount = function listenerCount(type, listener) {
  const list = events(this)[type];
  if (list === undefined) return 0;
  const all = typeof list === 'function' ? [list] : list;
  if (listener === undefined) return all.length;
  return all.filter((l) => l === listener || l.listener === listener).length;
};

proto.eventNames = function eventNames() {
  return this._eventsCount > 0 ? Reflect.ownKeys(events(this)) : [];
};

// ---------------------------------------------------------------- module functions

export function once(emitter, name, options = {}) {
  return new Promise((resolve, reject) => {
    const signal = options?.signal;
    if (signal?.aborted) {
      reject(abortError(signal.reason));
      return;
    }
    const onError = (err) => {
      emitter.removeListener(name, onEvent);
      reject(err);
    };
    const onEvent = (...args) => {
      if (name !== 'error' && typeof emitter.removeListener === 'function') emitter.removeListener('error', onError);
      resolve(args);
    };
    if (typeof emitter.addEventListener === 'function' && typeof emitter.on !== 'function') {
      emitter.addEventListener(name, (...args) => resolve(args), { once: true });
      return;
    }
    emitter.once(name, onEvent);
    if (name !== 'error') emitter.once('error', onError);
  });
}

function abortError(cause) {
  const e = new Error('The operation was aborted');
  e.name = 'AbortError';
  e.code = 'ABORT_ERR';
  e.cause = cause;
  return e;
}

export function on(emitter, event) {
  const queue = [];
  const waiting = [];
  let error = null;
  let done = false;
  const handler = (...args) => {
    const w = waiting.shift();
    if (w) w.resolve({ value: args, done: false });
    else queue.push(args);
  };
  const onError = (err) => {
    done = true;
    const w = waiting.shift();
    if (w) w.reject(err);
    else error = err;
    iterator.return();
  };
  emitter.on(event, handler);
  if (event !== 'error') emitter.on('error', onError);
  const iterator = {
    next() {
      if (queue.length) return Promise.resolve({ value: queue.shift(), done: false });
      if (error) {
        const p = Promise.reject(error);
        error = null;
        return p;
      }
      if (done) return Promise.resolve({ value: undefined, done: true });
      return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
    },
    return() {
      emitter.removeListener(event, handler);
      emitter.removeListener('error', onError);
      done = true;
      for (const w of waiting.splice(0)) w.resolve({ value: undefined, done: true });
      return Promise.resolve({ value: undefined, done: true });
    },
    throw(err) {
      error = err;
      emitter.removeListener(event, handler);
      emitter.removeListener('error', onError);
      return Promise.reject(err);
    },
    [Symbol.asyncIterator]() { return this; },
  };
  return iterator;
}

export function listenerCount(emitter, type) {
  return emitter.listenerCount(type);
}

export function getEventListeners(emitter, type) {
  return emitter.listeners(type);
}

export function setMaxListeners(n = defaultMaxListeners, ...targets) {
  if (targets.length === 0) defaultMaxListeners = n;
  for (const t of targets) t.setMaxListeners(n);
}

EventEmitter.EventEmitter = EventEmitter;
EventEmitter.once = once;
EventEmitter.on = on;
EventEmitter.listenerCount = listenerCount;
EventEmitter.getEventListeners = getEventListeners;
EventEmitter.setMaxListeners = setMaxListeners;
EventEmitter.errorMonitor = errorMonitor;
EventEmitter.captureRejectionSymbol = captureRejectionSymbol;
EventEmitter.usingDomains = false;

export { EventEmitter as default };
