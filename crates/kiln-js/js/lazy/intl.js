// The Intl global (see kiln:intl-base), with RelativeTimeFormat, ListFormat
// and Locale, which only it offers.

import { LOCALE, toObjectOptions, getOption, canonicalizeLocale, canonicalLocaleList, resolveLocale, supportedLocalesOf, requireThis } from 'kiln:intl-base';
import { NumberFormat, PluralRules, currencies, units } from 'kiln:intl-number';
import { DateTimeFormat } from 'kiln:intl-date';
import { Collator } from 'kiln:intl-collator';

// ---------------------------------------------------------------- RelativeTimeFormat

const RTF_STATE = new WeakMap();
const RELATIVE_UNITS = ['year', 'quarter', 'month', 'week', 'day', 'hour', 'minute', 'second'];
const RELATIVE_SHORT = { year: 'yr.', quarter: ['qtr.', 'qtrs.'], month: 'mo.', week: 'wk.', day: ['day', 'days'], hour: 'hr.', minute: 'min.', second: 'sec.' };
const RELATIVE_NARROW = { year: 'y', quarter: 'q', month: 'mo', week: 'w', day: 'd', hour: 'h', minute: 'm', second: 's' };
const RELATIVE_AUTO = {
  year: ['last year', 'this year', 'next year'], quarter: ['last quarter', 'this quarter', 'next quarter'],
  month: ['last month', 'this month', 'next month'], week: ['last week', 'this week', 'next week'],
  day: ['yesterday', 'today', 'tomorrow'], hour: [null, 'this hour', null], minute: [null, 'this minute', null],
  second: [null, 'now', null],
};

class RelativeTimeFormat {
  constructor(locales, options) {
    const locale = resolveLocale(locales);
    options = toObjectOptions(options);
    const owner = 'Intl.RelativeTimeFormat';
    const style = getOption(options, 'style', ['long', 'short', 'narrow'], 'long', owner);
    const numeric = getOption(options, 'numeric', ['always', 'auto'], 'always', owner);
    RTF_STATE.set(this, { locale, style, numeric, numberingSystem: 'latn', number: new NumberFormat(LOCALE) });
  }

  static supportedLocalesOf(locales) { return supportedLocalesOf(locales); }

  format(value, unit) {
    return this.formatToParts(value, unit).map((p) => p.value).join('');
  }

  formatToParts(value, unit) {
    requireThis(this, RelativeTimeFormat, 'formatToParts');
    const s = RTF_STATE.get(this);
    const n = Number(value);
    if (!Number.isFinite(n)) throw new RangeError('Invalid value');
    const u = String(unit).replace(/s$/, '');
    if (!RELATIVE_UNITS.includes(u)) throw new RangeError(`Invalid unit argument for format() '${String(unit)}'`);
    if (s.numeric === 'auto' && [-1, 0, 1].includes(n)) {
      const word = RELATIVE_AUTO[u][n + 1];
      if (word) {
        const short = s.style !== 'long' && !['day', 'second', 'hour', 'minute'].includes(u)
          ? word.replace(/(\S+)$/, () => (typeof RELATIVE_SHORT[u] === 'string' ? RELATIVE_SHORT[u] : RELATIVE_SHORT[u][0]))
          : word;
        return [{ type: 'literal', value: short }];
      }
    }
    const past = n < 0 || Object.is(n, -0);
    const numberParts = s.number.formatToParts(Math.abs(n)).map((p) => ({ ...p, unit: u }));
    const plural = !(Math.abs(n) === 1);
    let word;
    if (s.style === 'long') word = ' ' + u + (plural ? 's' : '');
    else if (s.style === 'short') {
      const f = RELATIVE_SHORT[u];
      word = ' ' + (typeof f === 'string' ? f : f[plural ? 1 : 0]);
    } else word = RELATIVE_NARROW[u];
    if (past) return [...numberParts, { type: 'literal', value: `${word} ago` }];
    return [{ type: 'literal', value: 'in ' }, ...numberParts, ...(word ? [{ type: 'literal', value: word }] : [])];
  }

  resolvedOptions() {
    requireThis(this, RelativeTimeFormat, 'resolvedOptions');
    const { locale, style, numeric, numberingSystem } = RTF_STATE.get(this);
    return { locale, style, numeric, numberingSystem };
  }
}

// ---------------------------------------------------------------- ListFormat

const LF_STATE = new WeakMap();

class ListFormat {
  constructor(locales, options) {
    const locale = resolveLocale(locales);
    options = toObjectOptions(options);
    const owner = 'Intl.ListFormat';
    const type = getOption(options, 'type', ['conjunction', 'disjunction', 'unit'], 'conjunction', owner);
    const style = getOption(options, 'style', ['long', 'short', 'narrow'], 'long', owner);
    LF_STATE.set(this, { locale, type, style });
  }

  static supportedLocalesOf(locales) { return supportedLocalesOf(locales); }

  format(list) {
    return this.formatToParts(list).map((p) => p.value).join('');
  }

  formatToParts(list) {
    requireThis(this, ListFormat, 'formatToParts');
    const { type, style } = LF_STATE.get(this);
    const items = [];
    for (const item of list ?? []) {
      if (typeof item !== 'string') throw new TypeError(`Iterable yielded ${String(item)} which is not a string`);
      items.push(item);
    }
    const parts = [];
    const word = type === 'disjunction' ? 'or' : type === 'conjunction' ? (style === 'long' ? 'and' : style === 'short' ? '&' : '') : '';
    items.forEach((item, i) => {
      if (i > 0) {
        let sep;
        const last = i === items.length - 1;
        if (type === 'unit') sep = style === 'narrow' ? ' ' : ', ';
        else if (!word) sep = ', ';
        else if (last) sep = items.length === 2 ? ` ${word} ` : `, ${word} `;
        else sep = ', ';
        parts.push({ type: 'literal', value: sep });
      }
      parts.push({ type: 'element', value: item });
    });
    return parts;
  }

  resolvedOptions() {
    requireThis(this, ListFormat, 'resolvedOptions');
    return { ...LF_STATE.get(this) };
  }
}

// ---------------------------------------------------------------- Locale

class Locale {
  constructor(tag, options) {
    if (tag instanceof Locale) tag = tag.toString();
    const canonical = canonicalizeLocale(tag);
    const parts = canonical.split('-');
    this.baseName = canonical;
    this.language = parts[0];
    const script = parts.find((p, i) => i > 0 && p.length === 4 && /^[A-Z][a-z]{3}$/.test(p));
    const region = parts.find((p, i) => i > 0 && (/^[A-Z]{2}$/.test(p) || /^\d{3}$/.test(p)));
    if (script) this.script = script;
    if (region) this.region = region;
    options = toObjectOptions(options);
    for (const key of ['calendar', 'caseFirst', 'collation', 'hourCycle', 'numberingSystem']) {
      if (options[key] !== undefined) this[key] = String(options[key]);
    }
    if (options.numeric !== undefined) this.numeric = Boolean(options.numeric);
  }

  toString() { return this.baseName; }

  maximize() { return this; }

  minimize() { return this; }
}

// ---------------------------------------------------------------- the global

// Collator, DateTimeFormat and NumberFormat may be called without `new`
// (`Intl.DateTimeFormat().resolvedOptions().timeZone` is a common idiom);
// classes cannot, so each is exposed through a function that constructs it.
function callable(Class) {
  function Constructor(locales, options) {
    return Reflect.construct(Class, [locales, options], new.target ?? Constructor);
  }
  Object.defineProperty(Constructor, 'name', { value: Class.name });
  Constructor.prototype = Class.prototype;
  Object.defineProperty(Class.prototype, 'constructor', { value: Constructor, writable: true, configurable: true });
  Object.defineProperty(Constructor, 'supportedLocalesOf', {
    value: supportedLocalesOf, writable: true, configurable: true,
  });
  return Constructor;
}

export const Intl = {
  Collator: callable(Collator),
  DateTimeFormat: callable(DateTimeFormat),
  ListFormat,
  Locale,
  NumberFormat: callable(NumberFormat),
  PluralRules,
  RelativeTimeFormat,
  getCanonicalLocales: (locales) => canonicalLocaleList(locales),
  supportedValuesOf(key) {
    const values = {
      calendar: ['gregory', 'iso8601'],
      collation: ['default'],
      currency: currencies(),
      numberingSystem: ['latn'],
      timeZone: ['UTC'],
      unit: units(),
    }[String(key)];
    if (!values) throw new RangeError(`Invalid key : ${String(key)}`);
    return values.slice();
  },
};
Object.defineProperty(Intl, Symbol.toStringTag, { value: 'Intl', configurable: true });
for (const Class of [Collator, DateTimeFormat, ListFormat, Locale, NumberFormat, PluralRules, RelativeTimeFormat]) {
  Object.defineProperty(Class.prototype, Symbol.toStringTag, { value: `Intl.${Class.name}`, configurable: true });
}
for (const key of Object.keys(Intl)) {
  Object.defineProperty(Intl, key, { enumerable: false });
}
