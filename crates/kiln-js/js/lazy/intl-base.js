// Kiln's `Intl`: what its parts share (locales, options). The parts load
// apart, on first use: `kiln:intl-number` (and `kiln:intl-tables` for
// currencies and units), `kiln:intl-date`,
// `kiln:intl-collator`, and `kiln:intl` for the global itself, so a
// handler that only sorts strings or prints a number reads only what that
// needs. The notes below hold for all of them.
//
// QuickJS has no Intl: its toLocaleString methods print plain numbers and
// fixed-format dates, and localeCompare compares code units ('a' after 'B').
// Forge runs functions under Node.js with ICU, in UTC. Kiln formats as
// Node.js does for English (United States) and compares strings with an
// approximation of the Unicode collation algorithm's root order, enough for
// sorting names and titles as Node.js sorts them.
//
// What this is not (docs/COMPATIBILITY.md): every locale is formatted as
// en-US (as a Node.js built with English-only ICU does, `resolvedOptions()`
// says so); time zones come from the IANA database compiled into Kiln, but
// only some have English names (the rest are named by offset); only the
// Gregorian calendar and Latin digits; no Intl.Segmenter or DisplayNames.

export const LOCALE = 'en-US';

// ---------------------------------------------------------------- shared

export function toObjectOptions(options) {
  if (options === undefined) return Object.create(null);
  if (options === null) throw new TypeError('Cannot convert undefined or null to object');
  return Object(options);
}

export function getOption(options, property, allowed, fallback, owner) {
  let value = options[property];
  if (value === undefined) return fallback;
  if (allowed === 'boolean') return Boolean(value);
  value = String(value);
  if (allowed && !allowed.includes(value)) {
    throw new RangeError(`Value ${value} out of range for ${owner} options property ${property}`);
  }
  return value;
}

export function getNumberOption(options, property, min, max, fallback) {
  const raw = options[property];
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < min || value > max) {
    throw new RangeError(`${property} value is out of range.`);
  }
  return Math.floor(value);
}

const LOCALE_PATTERN = /^[A-Za-z]{2,8}(?:-[A-Za-z0-9]{1,8})*$/;

export function canonicalizeLocale(tag) {
  if (typeof tag !== 'string' && (typeof tag !== 'object' || tag === null)) {
    throw new TypeError('Language ID should be string or object.');
  }
  tag = String(tag);
  if (!LOCALE_PATTERN.test(tag) || tag.split('-').slice(1).some((p) => p.length === 1 && !/^[0-9a-wyzA-WYZ]$/.test(p) && p.toLowerCase() !== 'x')) {
    throw new RangeError(`Incorrect locale information provided`);
  }
  return tag
    .split('-')
    .map((part, i) => {
      if (i === 0) return part.toLowerCase();
      if (part.length === 4 && /^[A-Za-z]+$/.test(part)) return part[0].toUpperCase() + part.slice(1).toLowerCase();
      if (part.length === 2 && /^[A-Za-z]+$/.test(part)) return part.toUpperCase();
      return part.toLowerCase();
    })
    .join('-');
}

export function canonicalLocaleList(locales) {
  if (locales === undefined) return [];
  const list = typeof locales === 'string' ? [locales] : Array.from(Object(locales));
  const seen = [];
  for (const tag of list) {
    const canonical = canonicalizeLocale(tag);
    if (!seen.includes(canonical)) seen.push(canonical);
  }
  return seen;
}

// Every requested locale is checked (a malformed tag is a RangeError, as in
// Node.js); what is formatted is always en-US, and `resolvedOptions()`
// says so ('en' when 'en' was asked for, as ICU resolves it).
export function resolveLocale(locales) {
  const [first] = canonicalLocaleList(locales);
  return first === 'en' ? 'en' : LOCALE;
}

export function supportedLocalesOf(locales) {
  return canonicalLocaleList(locales).filter((tag) => tag === 'en' || tag.startsWith('en-'));
}

export function requireThis(value, Class, method) {
  if (!(value instanceof Class)) {
    throw new TypeError(`Method Intl.${Class.name}.prototype.${method} called on incompatible receiver ${String(value)}`);
  }
}
