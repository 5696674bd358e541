// EventTarget, Event, AbortController and AbortSignal, as Node and browsers
// define them (the parts apps use: listeners with `once` and `signal`,
// `onabort`, `AbortSignal.abort`, `timeout`, `any`, `throwIfAborted`).
// Loaded by the prelude the first time app code touches one of them.

import { DOMException } from 'kiln:crypto';
import { reportUncaught } from 'kiln:uncaught';

// Module-private access to the classes' private state (set in their static
// blocks), so that none of it is reachable from app code.
let startDispatch;
let propagationStopped;
let signalAbort;

export class Event {
  #type;
  #target = null;
  #defaultPrevented = false;
  #stopped = false;
  #cancelable;
  constructor(type, options = {}) {
    if (arguments.length === 0) throw new TypeError('The "type" argument must be specified');
    this.#type = String(type);
    this.#cancelable = Boolean(options && options.cancelable);
    this.timeStamp = performance.now();
  }
  get type() { return this.#type; }
  get target() { return this.#target; }
  get currentTarget() { return this.#target; }
  get cancelable() { return this.#cancelable; }
  get defaultPrevented() { return this.#defaultPrevented; }
  preventDefault() { if (this.#cancelable) this.#defaultPrevented = true; }
  stopImmediatePropagation() { this.#stopped = true; }
  stopPropagation() {}
  static {
    startDispatch = (event, target) => { event.#target = target; event.#stopped = false; };
    propagationStopped = (event) => event.#stopped;
  }
}

export class EventTarget {
  #listeners = new Map();
  addEventListener(type, listener, options = {}) {
    if (listener === null || listener === undefined) return;
    const once = typeof options === 'object' && options !== null && Boolean(options.once);
    const signal = typeof options === 'object' && options !== null ? options.signal : undefined;
    if (signal && signal.aborted) return;
    const key = String(type);
    const list = this.#listeners.get(key) ?? [];
    if (list.some((l) => l.listener === listener)) return;
    const entry = { listener, once };
    list.push(entry);
    this.#listeners.set(key, list);
    if (signal) signal.addEventListener('abort', () => this.removeEventListener(key, listener), { once: true });
  }
  removeEventListener(type, listener) {
    const list = this.#listeners.get(String(type));
    if (!list) return;
    const i = list.findIndex((l) => l.listener === listener);
    if (i >= 0) list.splice(i, 1);
  }
  dispatchEvent(event) {
    if (!(event instanceof Event)) throw new TypeError('The "event" argument must be an instance of Event');
    startDispatch(event, this);
    const handler = this['on' + event.type];
    const list = [...(this.#listeners.get(event.type) ?? [])];
    if (typeof handler === 'function') list.unshift({ listener: handler, once: false, property: true });
    for (const entry of list) {
      if (entry.once) this.removeEventListener(event.type, entry.listener);
      const { listener } = entry;
      // A listener that throws does not stop the others; its error is
      // uncaught, as in Node, and ends the invocation.
      try {
        if (typeof listener === 'function') listener.call(this, event);
        else if (listener && typeof listener.handleEvent === 'function') listener.handleEvent(event);
      } catch (error) {
        reportUncaught(`an '${event.type}' event listener`, error);
      }
      if (propagationStopped(event)) break;
    }
    return !event.defaultPrevented;
  }
}

const abortError = () => new DOMException('This operation was aborted', 'AbortError');
let constructing = false;

export class AbortSignal extends EventTarget {
  #aborted = false;
  #reason = undefined;
  constructor() {
    if (!constructing) throw new TypeError('Illegal constructor');
    super();
    this.onabort = null;
  }
  get aborted() { return this.#aborted; }
  get reason() { return this.#reason; }
  throwIfAborted() { if (this.#aborted) throw this.#reason; }
  static abort(reason) {
    const signal = newSignal();
    signal.#aborted = true;
    signal.#reason = reason === undefined ? abortError() : reason;
    return signal;
  }
  static timeout(ms) {
    const signal = newSignal();
    setTimeout(() => signalAbort(signal, new DOMException('The operation was aborted due to timeout', 'TimeoutError')), Number(ms));
    return signal;
  }
  static any(signals) {
    const signal = newSignal();
    for (const s of signals) {
      if (s.aborted) { signalAbort(signal, s.reason); return signal; }
    }
    for (const s of signals) s.addEventListener('abort', () => signalAbort(signal, s.reason), { once: true });
    return signal;
  }
  static {
    signalAbort = (signal, reason) => {
      if (signal.#aborted) return;
      signal.#aborted = true;
      signal.#reason = reason === undefined ? abortError() : reason;
      signal.dispatchEvent(new Event('abort'));
    };
  }
}

function newSignal() {
  constructing = true;
  try {
    return new AbortSignal();
  } finally {
    constructing = false;
  }
}

export class AbortController {
  #signal = newSignal();
  get signal() { return this.#signal; }
  abort(reason) { signalAbort(this.#signal, reason); }
}
