// node:util — promisify, inherits, format, inspect, deep equality and type
// checks, as Node offers them. Evaluated only when app code imports it.
import { TextEncoder, TextDecoder } from 'kiln:text';

// ---------------------------------------------------------------- types

const tag = (v) => Object.prototype.toString.call(v).slice(8, -1);
const TypedArray = Object.getPrototypeOf(Uint8Array);
const typedArrayTag = Object.getOwnPropertyDescriptor(TypedArray.prototype, Symbol.toStringTag).get;
const AsyncFunction = (async () => {}).constructor;
const GeneratorFunction = function* () {}.constructor;
const AsyncGeneratorFunction = async function* () {}.constructor;

function isTypedArrayOf(name) {
  return (v) => ArrayBuffer.isView(v) && typedArrayTag.call(v) === name;
}

export const types = Object.freeze({
  isAnyArrayBuffer: (v) => v instanceof ArrayBuffer || (typeof SharedArrayBuffer !== 'undefined' && v instanceof SharedArrayBuffer),
  isArrayBuffer: (v) => v instanceof ArrayBuffer,
  isSharedArrayBuffer: (v) => typeof SharedArrayBuffer !== 'undefined' && v instanceof SharedArrayBuffer,
  isArrayBufferView: (v) => ArrayBuffer.isView(v),
  isTypedArray: (v) => ArrayBuffer.isView(v) && typedArrayTag.call(v) !== undefined,
  isUint8Array: isTypedArrayOf('Uint8Array'),
  isUint8ClampedArray: isTypedArrayOf('Uint8ClampedArray'),
  isUint16Array: isTypedArrayOf('Uint16Array'),
  isUint32Array: isTypedArrayOf('Uint32Array'),
  isInt8Array: isTypedArrayOf('Int8Array'),
  isInt16Array: isTypedArrayOf('Int16Array'),
  isInt32Array: isTypedArrayOf('Int32Array'),
  isFloat32Array: isTypedArrayOf('Float32Array'),
  isFloat64Array: isTypedArrayOf('Float64Array'),
  isBigInt64Array: isTypedArrayOf('BigInt64Array'),
  isBigUint64Array: isTypedArrayOf('BigUint64Array'),
  isDataView: (v) => v instanceof DataView,
  isDate: (v) => v instanceof Date,
  isRegExp: (v) => v instanceof RegExp,
  isMap: (v) => v instanceof Map,
  isSet: (v) => v instanceof Set,
  isWeakMap: (v) => v instanceof WeakMap,
  isWeakSet: (v) => v instanceof WeakSet,
  isMapIterator: (v) => tag(v) === 'Map Iterator',
  isSetIterator: (v) => tag(v) === 'Set Iterator',
  isPromise: (v) => v instanceof Promise,
  isNativeError: (v) => v instanceof Error,
  isAsyncFunction: (v) => v instanceof AsyncFunction || v instanceof AsyncGeneratorFunction,
  isGeneratorFunction: (v) => v instanceof GeneratorFunction || v instanceof AsyncGeneratorFunction,
  isGeneratorObject: (v) => tag(v) === 'Generator',
  isBoxedPrimitive: (v) =>
    v instanceof Number || v instanceof String || v instanceof Boolean || v instanceof BigInt || v instanceof Symbol,
  isNumberObject: (v) => v instanceof Number,
  isStringObject: (v) => v instanceof String,
  isBooleanObject: (v) => v instanceof Boolean,
  isBigIntObject: (v) => v instanceof BigInt,
  isSymbolObject: (v) => v instanceof Symbol,
  // Not observable from JavaScript in this engine.
  isProxy: () => false,
  isExternal: () => false,
  isModuleNamespaceObject: (v) => tag(v) === 'Module',
  isKeyObject: (v) => v != null && v.constructor != null && v.constructor.name === 'KeyObject',
  isCryptoKey: (v) => v != null && v.constructor != null && v.constructor.name === 'CryptoKey',
});

// ---------------------------------------------------------------- inspect

const inspectCustom = Symbol.for('nodejs.util.inspect.custom');

const defaultOptions = {
  depth: 2,
  colors: false,
  showHidden: false,
  customInspect: true,
  maxArrayLength: 100,
  maxStringLength: 10000,
  breakLength: 80,
  compact: 3,
  sorted: false,
  getters: false,
};

const ESCAPES = { '\n': '\\n', '\t': '\\t', '\r': '\\r', '\b': '\\b', '\f': '\\f', '\v': '\\v', '\\': '\\\\' };

function quote(s) {
  let q = "'";
  if (s.includes("'")) {
    if (!s.includes('"')) q = '"';
    else if (!s.includes('`') && !s.includes('${')) q = '`';
  }
  const escaped = s.replace(/[\x00-\x1f\x7f\\'"`]/g, (c) => {
    if (c === q) return '\\' + c;
    if (c === "'" || c === '"' || c === '`') return c;
    return ESCAPES[c] ?? '\\x' + c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0');
  });
  return q + escaped + q;
}

function formatKey(key) {
  if (typeof key === 'symbol') return `[${key.toString()}]`;
  return /^[a-zA-Z_][a-zA-Z_0-9]*$/.test(key) ? key : quote(key);
}

function formatNumber(n) {
  return Object.is(n, -0) ? '-0' : String(n);
}

function formatPrimitive(value, ctx) {
  switch (typeof value) {
    case 'string': {
      const trimmed = value.length > ctx.maxStringLength
        ? quote(value.slice(0, ctx.maxStringLength)) + `... ${value.length - ctx.maxStringLength} more character${value.length - ctx.maxStringLength > 1 ? 's' : ''}`
        : quote(value);
      return trimmed;
    }
    case 'number': return formatNumber(value);
    case 'bigint': return `${value}n`;
    case 'boolean': return String(value);
    case 'undefined': return 'undefined';
    case 'symbol': return value.toString();
  }
  return 'null';
}

// A class's `prototype` cannot be reassigned, a plain function's can (the
// source text, which would say so directly, is stripped from bytecode).
// Built-in constructors are like classes in this; Node calls them functions.
function isClass(fn) {
  const desc = Object.getOwnPropertyDescriptor(fn, 'prototype');
  return desc !== undefined && desc.writable === false && globalThis[fn.name] !== fn;
}

function functionBase(fn) {
  if (isClass(fn)) {
    const parent = Object.getPrototypeOf(fn);
    const ext = parent && parent !== Function.prototype && parent.name ? ` extends ${parent.name}` : '';
    return `[class ${fn.name || '(anonymous)'}${ext}]`;
  }
  let kind = 'Function';
  if (fn instanceof AsyncGeneratorFunction) kind = 'AsyncGeneratorFunction';
  else if (fn instanceof AsyncFunction) kind = 'AsyncFunction';
  else if (fn instanceof GeneratorFunction) kind = 'GeneratorFunction';
  return fn.name ? `[${kind}: ${fn.name}]` : `[${kind} (anonymous)]`;
}

function constructorName(value) {
  let proto = Object.getPrototypeOf(value);
  if (proto === null) return null;
  while (proto !== null) {
    const desc = Object.getOwnPropertyDescriptor(proto, 'constructor');
    if (desc && typeof desc.value === 'function' && desc.value.name !== '') return desc.value.name;
    proto = Object.getPrototypeOf(proto);
  }
  return '';
}

function ownKeys(value, ctx) {
  const keys = ctx.showHidden ? Object.getOwnPropertyNames(value) : Object.keys(value);
  const symbols = Object.getOwnPropertySymbols(value).filter(
    (s) => ctx.showHidden || Object.prototype.propertyIsEnumerable.call(value, s),
  );
  const all = keys.concat(symbols);
  if (ctx.sorted) all.sort();
  return all;
}

function formatProperty(value, key, ctx, depth, array) {
  const desc = Object.getOwnPropertyDescriptor(value, key) || { value: value[key], enumerable: true };
  let str;
  if (desc.value !== undefined || !('get' in desc)) {
    ctx.indentationLvl += 2;
    str = formatValue(desc.value, ctx, depth);
    ctx.indentationLvl -= 2;
  } else if (desc.get !== undefined) {
    str = desc.set !== undefined ? '[Getter/Setter]' : '[Getter]';
  } else {
    str = desc.set !== undefined ? '[Setter]' : 'undefined';
  }
  if (array) return str;
  const name = desc.enumerable === false ? `[${formatKey(key)}]` : formatKey(key);
  return `${name}: ${str}`;
}

function isBelowBreakLength(ctx, output, start, base) {
  let total = output.length + start;
  if (total + output.length > ctx.breakLength) return false;
  for (const entry of output) {
    total += entry.length;
    if (total > ctx.breakLength) return false;
  }
  return base === '' || !base.includes('\n');
}

function reduceToSingleString(ctx, output, base, braces, depth) {
  if (ctx.compact !== true) {
    if (typeof ctx.compact === 'number' && ctx.compact >= 1 && ctx.currentDepth - depth < ctx.compact) {
      const start = output.length + ctx.indentationLvl + braces[0].length + base.length + 10;
      if (isBelowBreakLength(ctx, output, start, base)) {
        const joined = output.join(', ');
        if (!joined.includes('\n')) return `${base ? `${base} ` : ''}${braces[0]} ${joined} ${braces[1]}`;
      }
    }
    const indentation = `\n${' '.repeat(ctx.indentationLvl)}`;
    return `${base ? `${base} ` : ''}${braces[0]}${indentation}  ${output.join(`,${indentation}  `)}${indentation}${braces[1]}`;
  }
  const start = output.length + ctx.indentationLvl + braces[0].length + base.length + 10;
  if (isBelowBreakLength(ctx, output, start, base)) {
    return `${braces[0]}${base ? ` ${base}` : ''} ${output.join(', ')} ${braces[1]}`;
  }
  const indentation = `\n${' '.repeat(ctx.indentationLvl)}`;
  return `${base ? `${base} ` : ''}${braces[0]}${indentation}  ${output.join(`,${indentation}  `)} ${braces[1]}`;
}

function formatError(err) {
  const name = err.name || 'Error';
  const message = err.message === undefined ? '' : String(err.message);
  const head = message ? `${name}: ${message}` : name;
  const stack = typeof err.stack === 'string' ? err.stack : '';
  if (!stack) return `[${head}]`;
  return stack.startsWith(head) ? stack.trimEnd() : `${head}\n${stack.trimEnd()}`;
}

function formatValue(value, ctx, depth) {
  if (value === null || (typeof value !== 'object' && typeof value !== 'function')) {
    return formatPrimitive(value, ctx);
  }
  if (ctx.customInspect) {
    const custom = value[inspectCustom];
    if (typeof custom === 'function' && custom !== inspect) {
      const options = { ...ctx, depth: ctx.depth === null ? null : ctx.depth - depth, stylize: (s) => s };
      const result = custom.call(value, options.depth, options, inspect);
      if (result !== value) {
        return typeof result === 'string' ? result : formatValue(result, ctx, depth);
      }
    }
  }
  const seenAt = ctx.seen.indexOf(value);
  if (seenAt !== -1) {
    let index = ctx.circular.get(value);
    if (index === undefined) {
      index = ctx.circular.size + 1;
      ctx.circular.set(value, index);
    }
    return `[Circular *${index}]`;
  }
  return formatRaw(value, ctx, depth);
}

function formatRaw(value, ctx, depth) {
  const name = constructorName(value);
  const prefix = (fallback, size) => {
    const n = name === null ? `[${fallback}: null prototype]` : name;
    return `${n}${size === undefined ? '' : `(${size})`} `;
  };
  let braces;
  let base = '';
  let keys = ownKeys(value, ctx);
  let formatter = null;
  let array = false;
  let noEntries = false;

  if (Array.isArray(value)) {
    const p = name === 'Array' ? '' : prefix('Array', value.length);
    braces = [`${p}[`, ']'];
    keys = keys.filter((k) => typeof k === 'symbol' || !/^(0|[1-9][0-9]*)$/.test(k));
    formatter = formatArray;
    array = true;
    noEntries = value.length === 0 && keys.length === 0;
  } else if (ArrayBuffer.isView(value) && !(value instanceof DataView)) {
    braces = [`${prefix(typedArrayTag.call(value), value.length)}[`, ']'];
    keys = keys.filter((k) => typeof k === 'symbol' || !/^(0|[1-9][0-9]*)$/.test(k));
    formatter = formatArray;
    array = true;
    noEntries = value.length === 0 && keys.length === 0;
  } else if (value instanceof Map) {
    braces = [`${prefix('Map', value.size)}{`, '}'];
    formatter = formatMap;
    noEntries = value.size === 0 && keys.length === 0;
  } else if (value instanceof Set) {
    braces = [`${prefix('Set', value.size)}{`, '}'];
    formatter = formatSet;
    noEntries = value.size === 0 && keys.length === 0;
  } else if (typeof value === 'function') {
    base = functionBase(value);
    keys = keys.filter((k) => k !== 'prototype');
    if (keys.length === 0) return base;
    braces = ['{', '}'];
  } else if (value instanceof RegExp) {
    base = RegExp.prototype.toString.call(value);
    keys = keys.filter((k) => k !== 'lastIndex');
    if (keys.length === 0) return base;
    braces = ['{', '}'];
  } else if (value instanceof Date) {
    base = Number.isNaN(value.getTime()) ? 'Invalid Date' : value.toISOString();
    if (keys.length === 0) return base;
    braces = ['{', '}'];
  } else if (value instanceof Error) {
    base = formatError(value);
    keys = keys.filter((k) => k !== 'stack' && k !== 'message');
    if (keys.length === 0) return base;
    braces = ['{', '}'];
  } else if (value instanceof ArrayBuffer) {
    const bytes = new Uint8Array(value);
    const hex = Array.from(bytes.subarray(0, 50), (b) => b.toString(16).padStart(2, '0')).join(' ');
    const more = bytes.length > 50 ? ` ... ${bytes.length - 50} more bytes` : '';
    return `ArrayBuffer { [Uint8Contents]: <${hex}${more}>, byteLength: ${value.byteLength} }`;
  } else if (value instanceof Promise) {
    braces = ['Promise {', '}'];
    formatter = () => ['<unknown>'];
  } else if (value instanceof WeakMap || value instanceof WeakSet) {
    return `${name} { <items unknown> }`;
  } else if (value instanceof Number || value instanceof String || value instanceof Boolean) {
    const kind = value instanceof Number ? 'Number' : value instanceof String ? 'String' : 'Boolean';
    base = `[${kind}: ${formatPrimitive(value.valueOf(), ctx)}]`;
    if (value instanceof String) keys = keys.filter((k) => !/^(0|[1-9][0-9]*)$/.test(k));
    if (keys.length === 0) return base;
    braces = ['{', '}'];
  } else {
    const t = value[Symbol.toStringTag];
    let p = name === null ? '[Object: null prototype] ' : name === 'Object' ? '' : `${name} `;
    if (typeof t === 'string' && t !== '' && t !== name) p = `${p}[${t}] `;
    if (name === '' && !p) p = '';
    braces = [`${p}{`, '}'];
    noEntries = keys.length === 0;
    if (noEntries) return `${p}{}`;
  }

  if (noEntries) return `${braces[0]}${braces[1]}`;
  if (ctx.depth !== null && depth > ctx.depth) {
    if (array) return `[${name === null ? 'Array' : name || 'Array'}]`;
    return `[${name === null ? 'Object: null prototype' : name || 'Object'}]`;
  }

  ctx.seen.push(value);
  ctx.currentDepth = depth;
  let output;
  try {
    output = formatter ? formatter(value, ctx, depth + 1) : [];
    for (const key of keys) output.push(formatProperty(value, key, ctx, depth + 1, false));
  } finally {
    ctx.seen.pop();
  }
  let result = reduceToSingleString(ctx, output, base, braces, depth);
  const index = ctx.circular.get(value);
  if (index !== undefined) result = `<ref *${index}> ${result}`;
  return result;
}

function formatArray(value, ctx, depth) {
  const output = [];
  const max = Math.min(ctx.maxArrayLength, value.length);
  let holes = 0;
  let i = 0;
  for (; i < value.length && output.length < max; i++) {
    if (!Object.prototype.hasOwnProperty.call(value, i) && !ArrayBuffer.isView(value)) {
      holes++;
      continue;
    }
    if (holes > 0) {
      output.push(`<${holes} empty item${holes > 1 ? 's' : ''}>`);
      holes = 0;
    }
    ctx.indentationLvl += 2;
    output.push(formatValue(value[i], ctx, depth));
    ctx.indentationLvl -= 2;
  }
  if (holes > 0) output.push(`<${holes} empty item${holes > 1 ? 's' : ''}>`);
  if (i < value.length) {
    const rest = value.length - i;
    output.push(`... ${rest} more item${rest > 1 ? 's' : ''}`);
  }
  return output;
}

function formatMap(value, ctx, depth) {
  const output = [];
  ctx.indentationLvl += 2;
  for (const [k, v] of value) {
    if (output.length >= ctx.maxArrayLength) break;
    output.push(`${formatValue(k, ctx, depth)} => ${formatValue(v, ctx, depth)}`);
  }
  ctx.indentationLvl -= 2;
  if (value.size > output.length) output.push(`... ${value.size - output.length} more items`);
  return output;
}

function formatSet(value, ctx, depth) {
  const output = [];
  ctx.indentationLvl += 2;
  for (const v of value) {
    if (output.length >= ctx.maxArrayLength) break;
    output.push(formatValue(v, ctx, depth));
  }
  ctx.indentationLvl -= 2;
  if (value.size > output.length) output.push(`... ${value.size - output.length} more items`);
  return output;
}

export function inspect(value, options) {
  const ctx = { ...defaultOptions, seen: [], circular: new Map(), indentationLvl: 0, currentDepth: 0 };
  if (typeof options === 'boolean') {
    ctx.showHidden = options;
    if (arguments.length > 2 && arguments[2] !== undefined) ctx.depth = arguments[2];
  } else if (options && typeof options === 'object') {
    for (const k of Object.keys(options)) if (k in defaultOptions || k === 'stylize') ctx[k] = options[k];
  }
  if (ctx.depth === Infinity) ctx.depth = null;
  if (ctx.maxArrayLength === null) ctx.maxArrayLength = Infinity;
  if (ctx.maxStringLength === null) ctx.maxStringLength = Infinity;
  return formatValue(value, ctx, 0);
}
inspect.custom = inspectCustom;
inspect.defaultOptions = defaultOptions;

// ---------------------------------------------------------------- format

function hasBuiltInToString(value) {
  const toString = value.toString;
  return (
    toString === Object.prototype.toString ||
    toString === Error.prototype.toString ||
    toString === Array.prototype.toString ||
    toString === Date.prototype.toString ||
    toString === RegExp.prototype.toString ||
    toString === Function.prototype.toString ||
    typeof toString !== 'function'
  );
}

function formatArg(spec, arg, inspectOptions) {
  switch (spec) {
    case 's':
      if (typeof arg === 'number') return formatNumber(arg);
      if (typeof arg === 'bigint') return `${arg}n`;
      if (typeof arg !== 'object' || arg === null || !hasBuiltInToString(arg)) return String(arg);
      return inspect(arg, { ...inspectOptions, depth: 0, colors: false, compact: 3 });
    case 'j':
      try {
        return JSON.stringify(arg);
      } catch (e) {
        if (e instanceof TypeError && /circular/i.test(e.message)) return '[Circular]';
        throw e;
      }
    case 'd': {
      if (typeof arg === 'bigint') return `${arg}n`;
      if (typeof arg === 'symbol') return 'NaN';
      return formatNumber(Number(arg));
    }
    case 'i': {
      if (typeof arg === 'bigint') return `${arg}n`;
      if (typeof arg === 'symbol') return 'NaN';
      return formatNumber(parseInt(arg));
    }
    case 'f':
      if (typeof arg === 'symbol') return 'NaN';
      return formatNumber(parseFloat(arg));
    case 'o':
      return inspect(arg, { ...inspectOptions, showHidden: true, depth: 4 });
    case 'O':
      return inspect(arg, inspectOptions);
    case 'c':
      return '';
  }
  return '';
}

export function formatWithOptions(inspectOptions, ...args) {
  if (inspectOptions === null || typeof inspectOptions !== 'object') {
    const e = new TypeError(`The "inspectOptions" argument must be of type object. Received ${inspect(inspectOptions)}`);
    e.code = 'ERR_INVALID_ARG_TYPE';
    throw e;
  }
  const first = args[0];
  let a = 0;
  let out = '';
  if (typeof first === 'string') {
    if (args.length === 1) return first;
    a = 1;
    let last = 0;
    for (let i = 0; i < first.length - 1; i++) {
      if (first.charCodeAt(i) !== 37) continue; // '%'
      const spec = first[i + 1];
      if (spec === '%') {
        out += first.slice(last, i) + '%';
        last = i + 2;
        i++;
        continue;
      }
      if (!'sjdifoOc'.includes(spec) || a >= args.length) continue;
      out += first.slice(last, i) + formatArg(spec, args[a], inspectOptions);
      a++;
      last = i + 2;
      i++;
    }
    out += first.slice(last);
  }
  for (; a < args.length; a++) {
    const v = args[a];
    const s = typeof v === 'string' ? v : inspect(v, inspectOptions);
    out += out === '' && a === 0 ? s : ` ${s}`;
  }
  return out;
}

export function format(...args) {
  return formatWithOptions({}, ...args);
}

// ---------------------------------------------------------------- deep equality

function isDeepEqual(a, b, strict, memo) {
  if (strict ? Object.is(a, b) : a == b || (a !== a && b !== b)) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) {
    if (!strict && (typeof a !== 'object' || a === null) && (typeof b !== 'object' || b === null)) return a == b;
    return false;
  }
  if (strict && Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) return false;
  if (tag(a) !== tag(b)) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (a instanceof Date) {
    if (!(b instanceof Date) || a.getTime() !== b.getTime()) return false;
  } else if (a instanceof RegExp) {
    if (!(b instanceof RegExp) || a.source !== b.source || a.flags !== b.flags || a.lastIndex !== b.lastIndex) return false;
  } else if (a instanceof Error) {
    if (!(b instanceof Error) || a.message !== b.message || a.name !== b.name) return false;
  } else if (ArrayBuffer.isView(a)) {
    if (!ArrayBuffer.isView(b) || a.byteLength !== b.byteLength) return false;
    if (!strict && !(a instanceof Float32Array || a instanceof Float64Array)) {
      const x = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
      const y = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
      for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
    } else {
      if (a.length !== b.length) return false;
      for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i]) && !(!strict && a[i] === b[i])) return false;
    }
  } else if (a instanceof ArrayBuffer) {
    if (!(b instanceof ArrayBuffer) || !isDeepEqual(new Uint8Array(a), new Uint8Array(b), strict, memo)) return false;
  } else if (a instanceof Number || a instanceof String || a instanceof Boolean || a instanceof BigInt || a instanceof Symbol) {
    if (!Object.is(a.valueOf(), b.valueOf())) return false;
  }

  const keysA = strict ? ownEnumerable(a) : Object.keys(a);
  const keysB = strict ? ownEnumerable(b) : Object.keys(b);
  if (keysA.length !== keysB.length) return false;
  const setB = new Set(keysB);
  for (const k of keysA) if (!setB.has(k)) return false;

  // Cycles: a pair already being compared is assumed equal.
  for (const [x, y] of memo) if (x === a && y === b) return true;
  memo.push([a, b]);
  try {
    if (a instanceof Map) {
      if (!(b instanceof Map) || a.size !== b.size || !mapEqual(a, b, strict, memo)) return false;
    } else if (a instanceof Set) {
      if (!(b instanceof Set) || a.size !== b.size || !setEqual(a, b, strict, memo)) return false;
    }
    if (Array.isArray(a) && a.length !== b.length) return false;
    for (const k of keysA) if (!isDeepEqual(a[k], b[k], strict, memo)) return false;
    return true;
  } finally {
    memo.pop();
  }
}

function ownEnumerable(o) {
  return Object.keys(o).concat(Object.getOwnPropertySymbols(o).filter((s) => Object.prototype.propertyIsEnumerable.call(o, s)));
}

function setEqual(a, b, strict, memo) {
  const rest = [];
  for (const v of a) {
    if (typeof v === 'object' && v !== null) rest.push(v);
    else if (!b.has(v)) {
      if (strict) return false;
      rest.push(v);
    }
  }
  if (rest.length === 0) return true;
  const candidates = [...b].filter((v) => (typeof v === 'object' && v !== null) || !strict || !a.has(v));
  for (const v of rest) {
    const i = candidates.findIndex((w) => isDeepEqual(v, w, strict, memo));
    if (i === -1) return false;
    candidates.splice(i, 1);
  }
  return true;
}

function mapEqual(a, b, strict, memo) {
  const rest = [];
  for (const [k, v] of a) {
    if (typeof k !== 'object' || k === null) {
      if (!b.has(k) || !isDeepEqual(v, b.get(k), strict, memo)) {
        if (strict) return false;
        rest.push([k, v]);
      }
    } else rest.push([k, v]);
  }
  if (rest.length === 0) return true;
  const candidates = [...b].filter(([k]) => (typeof k === 'object' && k !== null) || !strict);
  for (const [k, v] of rest) {
    const i = candidates.findIndex(([x, y]) => isDeepEqual(k, x, strict, memo) && isDeepEqual(v, y, strict, memo));
    if (i === -1) return false;
    candidates.splice(i, 1);
  }
  return true;
}

export function isDeepStrictEqual(a, b) {
  return isDeepEqual(a, b, true, []);
}

// For node:assert's loose deepEqual.
export function isDeepLooseEqual(a, b) {
  return isDeepEqual(a, b, false, []);
}

// ---------------------------------------------------------------- functions

const customPromisify = Symbol.for('nodejs.util.promisify.custom');

function invalidArgType(name, expected, value) {
  const e = new TypeError(`The "${name}" argument must be ${expected}. Received ${inspect(value, { depth: 0 })}`);
  e.code = 'ERR_INVALID_ARG_TYPE';
  return e;
}

export function promisify(original) {
  if (typeof original !== 'function') throw invalidArgType('original', 'of type function', original);
  if (original[customPromisify]) {
    const fn = original[customPromisify];
    if (typeof fn !== 'function') throw invalidArgType('util.promisify.custom', 'of type function', fn);
    return Object.defineProperty(fn, customPromisify, { value: fn, enumerable: false, writable: false, configurable: true });
  }
  function fn(...args) {
    return new Promise((resolve, reject) => {
      Reflect.apply(original, this, [...args, (err, ...values) => {
        if (err) return reject(err);
        resolve(values.length > 1 ? values : values[0]);
      }]);
    });
  }
  Object.setPrototypeOf(fn, Object.getPrototypeOf(original));
  Object.defineProperty(fn, customPromisify, { value: fn, enumerable: false, writable: false, configurable: true });
  Object.defineProperties(fn, Object.getOwnPropertyDescriptors(original));
  return fn;
}
promisify.custom = customPromisify;

export function callbackify(original) {
  if (typeof original !== 'function') throw invalidArgType('original', 'of type function', original);
  function callbackified(...args) {
    const callback = args.pop();
    if (typeof callback !== 'function') throw invalidArgType('last', 'of type function', callback);
    const cb = callback.bind(this);
    Reflect.apply(original, this, args).then(
      (value) => queueMicrotask(() => cb(null, value)),
      (reason) => {
        let err = reason;
        if (!reason) {
          err = new Error('Promise was rejected with a falsy value');
          err.code = 'ERR_FALSY_VALUE_REJECTION';
          err.reason = reason;
        }
        queueMicrotask(() => cb(err));
      },
    );
  }
  Object.defineProperty(callbackified, 'name', { value: `${original.name}Callbackified` });
  return callbackified;
}

export function inherits(ctor, superCtor) {
  if (typeof ctor !== 'function') throw invalidArgType('ctor', 'of type function', ctor);
  if (typeof superCtor !== 'function') throw invalidArgType('superCtor', 'of type function', superCtor);
  if (superCtor.prototype === undefined) throw invalidArgType('superCtor.prototype', 'of type object', superCtor.prototype);
  Object.defineProperty(ctor, 'super_', { value: superCtor, writable: true, configurable: true });
  Object.setPrototypeOf(ctor.prototype, superCtor.prototype);
}

const warned = new Set();

export function deprecate(fn, message, code) {
  if (typeof fn !== 'function') throw invalidArgType('fn', 'of type function', fn);
  let warnedHere = false;
  function deprecated(...args) {
    if (!warnedHere && !(code !== undefined && warned.has(code))) {
      warnedHere = true;
      if (code !== undefined) warned.add(code);
      console.warn(`${code ? `[${code}] ` : ''}DeprecationWarning: ${message}`);
    }
    return new.target ? Reflect.construct(fn, args, new.target) : Reflect.apply(fn, this, args);
  }
  Object.setPrototypeOf(deprecated, fn);
  if (fn.prototype) deprecated.prototype = fn.prototype;
  return deprecated;
}

// Kiln has no NODE_DEBUG: debug logging is always off.
export function debuglog() {
  const log = () => {};
  log.enabled = false;
  return log;
}
export const debug = debuglog;

export function stripVTControlCharacters(s) {
  // eslint-disable-next-line no-control-regex
  return String(s).replace(/[\u001B\u009B][[\]()#;?]*(?:(?:(?:[a-zA-Z\d]*(?:;[-a-zA-Z\d/#&.:=?%@~_]*)*)?\u0007)|(?:(?:\d{1,4}(?:;\d{0,4})*)?[\dA-PR-TZcf-ntqry=><~]))/g, '');
}

export function toUSVString(s) {
  return String(s).replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');
}

// Legacy type checks, still used by older libraries.
export const isArray = Array.isArray;
export const isBoolean = (v) => typeof v === 'boolean';
export const isNull = (v) => v === null;
export const isNullOrUndefined = (v) => v == null;
export const isNumber = (v) => typeof v === 'number';
export const isString = (v) => typeof v === 'string';
export const isSymbol = (v) => typeof v === 'symbol';
export const isUndefined = (v) => v === undefined;
export const isRegExp = types.isRegExp;
export const isObject = (v) => v !== null && typeof v === 'object';
export const isDate = types.isDate;
export const isError = (v) => v instanceof Error;
export const isFunction = (v) => typeof v === 'function';
export const isPrimitive = (v) => v === null || (typeof v !== 'object' && typeof v !== 'function');
export const isBuffer = (v) => v instanceof Uint8Array && v.constructor != null && v.constructor.name === 'Buffer';

export { TextEncoder, TextDecoder };

export default {
  format,
  formatWithOptions,
  inspect,
  isDeepStrictEqual,
  promisify,
  callbackify,
  inherits,
  deprecate,
  debuglog,
  debug,
  stripVTControlCharacters,
  toUSVString,
  types,
  TextEncoder,
  TextDecoder,
  isArray,
  isBoolean,
  isNull,
  isNullOrUndefined,
  isNumber,
  isString,
  isSymbol,
  isUndefined,
  isRegExp,
  isObject,
  isDate,
  isError,
  isFunction,
  isPrimitive,
  isBuffer,
};
