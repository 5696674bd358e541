// Console formatting, loaded by the prelude on the first console line so
// that invocations which never log do not pay for it.

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

