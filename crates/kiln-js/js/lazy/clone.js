// Loaded by the prelude the first time app code touches one of these
// globals, so invocations that never use them do not pay for them.
// ---------------------------------------------------------------- structuredClone

class DataCloneError extends Error {
  constructor(message) { super(message); this.name = 'DataCloneError'; }
}

const errorTypes = { Error, EvalError, RangeError, ReferenceError, SyntaxError, TypeError, URIError };

function clone(value, memo) {
  if (value === null || typeof value !== 'object') {
    if (typeof value === 'function') throw new DataCloneError(`${value.name || 'function'} could not be cloned`);
    if (typeof value === 'symbol') throw new DataCloneError('a Symbol could not be cloned');
    return value;
  }
  if (memo.has(value)) return memo.get(value);
  let out;
  if (Array.isArray(value)) {
    out = new Array(value.length);
    memo.set(value, out);
    for (let i = 0; i < value.length; i++) if (i in value) out[i] = clone(value[i], memo);
    return out;
  }
  if (value instanceof Date) { out = new Date(value.getTime()); memo.set(value, out); return out; }
  if (value instanceof RegExp) { out = new RegExp(value.source, value.flags); memo.set(value, out); return out; }
  if (value instanceof Map) {
    out = new Map(); memo.set(value, out);
    for (const [k, v] of value) out.set(clone(k, memo), clone(v, memo));
    return out;
  }
  if (value instanceof Set) {
    out = new Set(); memo.set(value, out);
    for (const v of value) out.add(clone(v, memo));
    return out;
  }
  if (value instanceof ArrayBuffer) { out = value.slice(0); memo.set(value, out); return out; }
  if (ArrayBuffer.isView(value)) {
    out = new value.constructor(value.buffer.slice(value.byteOffset, value.byteOffset + value.byteLength));
    memo.set(value, out);
    return out;
  }
  if (value instanceof Error) {
    // The HTML standard's rule: one of the standard error types by name
    // (anything else becomes Error), the message, and the stack as V8 keeps it.
    const type = Object.hasOwn(errorTypes, value.name) ? errorTypes[value.name] : Error;
    out = Object.hasOwn(value, 'message') ? new type(String(value.message)) : new type();
    memo.set(value, out);
    if (typeof value.stack === 'string') out.stack = value.stack;
    return out;
  }
  if (value instanceof Promise || value instanceof WeakMap || value instanceof WeakSet) {
    throw new DataCloneError(`${value.constructor.name} could not be cloned`);
  }
  out = {};
  memo.set(value, out);
  for (const k of Object.keys(value)) out[k] = clone(value[k], memo);
  return out;
}

export const structuredClone = (value) => clone(value, new Map());

