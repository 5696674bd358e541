// Console formatting, loaded by the prelude on the first console line so
// that invocations which never log do not pay for it.

const MAX_INSPECT_DEPTH = 4;
const MAX_INSPECT_ITEMS = 50;

// Strings inside objects are quoted as Node quotes them: single quotes,
// unless the string holds one.
function quote(s) {
  const body = JSON.stringify(s).slice(1, -1);
  if (!s.includes("'")) return `'${body.replace(/\\"/g, '"')}'`;
  if (!s.includes('"')) return `"${body}"`;
  return `'${body.replace(/\\"/g, '"').replace(/'/g, "\\'")}'`;
}

const IDENTIFIER = /^[A-Za-z_$][\w$]*$/;

// A list of items as Node prints it, cut at MAX_INSPECT_ITEMS.
function list(open, items, total, close, noun) {
  if (total > MAX_INSPECT_ITEMS) items.push(`... ${total - MAX_INSPECT_ITEMS} more ${noun}`);
  return items.length ? `${open} ${items.join(', ')} ${close}` : `${open}${close}`;
}

// What Node prints before an object's braces: its class, if not Object.
function prefix(value) {
  const proto = Object.getPrototypeOf(value);
  if (proto === null) return '[Object: null prototype] ';
  const name = proto.constructor && proto.constructor.name;
  return name && name !== 'Object' ? `${name} ` : '';
}

function inspect(value, depth, seen) {
  switch (typeof value) {
    case 'string':
      return depth === 0 ? value : quote(value);
    case 'number':
      return Object.is(value, -0) ? '-0' : String(value);
    case 'boolean':
    case 'undefined':
      return String(value);
    case 'bigint':
      return `${value}n`;
    case 'symbol':
      return value.toString();
    case 'function':
      // Node reads the source; bytecode keeps none, but a class's
      // `prototype` is read-only and an ordinary function's is not.
      if (Object.getOwnPropertyDescriptor(value, 'prototype')?.writable === false) {
        return `[class ${value.name || '(anonymous)'}]`;
      }
      {
        const kind = /^Async|^Generator/.test(value.constructor?.name) ? value.constructor.name : 'Function';
        return value.name ? `[${kind}: ${value.name}]` : `[${kind} (anonymous)]`;
      }
  }
  if (value === null) return 'null';
  if (seen.includes(value)) return '[Circular]';
  if (value instanceof Error) return value.stack ? `${value.name}: ${value.message}\n${value.stack}` : `${value.name}: ${value.message}`;
  if (value instanceof Date) return isNaN(value) ? 'Invalid Date' : value.toISOString();
  if (value instanceof RegExp) return String(value);
  if (depth >= MAX_INSPECT_DEPTH) {
    if (Array.isArray(value)) return '[Array]';
    const name = prefix(value).trim();
    return name && !name.startsWith('[') ? `[${name}]` : '[Object]';
  }
  seen.push(value);
  try {
    const inner = (v) => inspect(v, depth + 1, seen);
    if (Array.isArray(value)) {
      return list('[', value.slice(0, MAX_INSPECT_ITEMS).map(inner), value.length, ']', 'items');
    }
    if (ArrayBuffer.isView(value) && !(value instanceof DataView)) {
      const items = Array.from(value.subarray(0, MAX_INSPECT_ITEMS), inner);
      return list(`${value.constructor.name}(${value.length}) [`, items, value.length, ']', 'items');
    }
    if (value instanceof Map) {
      const items = [];
      for (const [k, v] of value) {
        if (items.length === MAX_INSPECT_ITEMS) break;
        items.push(`${inner(k)} => ${inner(v)}`);
      }
      return list(`Map(${value.size}) {`, items, value.size, '}', 'entries');
    }
    if (value instanceof Set) {
      const items = [];
      for (const v of value) {
        if (items.length === MAX_INSPECT_ITEMS) break;
        items.push(inner(v));
      }
      return list(`Set(${value.size}) {`, items, value.size, '}', 'entries');
    }
    const keys = Object.keys(value);
    const items = keys
      .slice(0, MAX_INSPECT_ITEMS)
      .map((k) => `${IDENTIFIER.test(k) ? k : quote(k)}: ${inner(value[k])}`);
    return prefix(value) + list('{', items, keys.length, '}', 'keys');
  } finally {
    seen.pop();
  }
}

export function format(args) {
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

