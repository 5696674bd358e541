// Intl.Collator and String.prototype.localeCompare (see kiln:intl-base).

import { toObjectOptions, getOption, resolveLocale, supportedLocalesOf, requireThis } from 'kiln:intl-base';

// ---------------------------------------------------------------- Collator
// An approximation of the root collation order (CLDR, as ICU applies it):
// whitespace, then punctuation and symbols, then digits, then letters;
// letters compare first without accents or case, then by accents, then by
// case (lower before upper).

const PUNCTUATION_ORDER = '_-,;:!?.\'"()[]{}@*/\\&#%`^+<=>|~$';
const EXPANSIONS = { 'ß': 'ss', 'æ': 'ae', 'Æ': 'AE', 'œ': 'oe', 'Œ': 'OE', 'ĳ': 'ij', 'Ĳ': 'IJ', 'ﬀ': 'ff', 'ﬁ': 'fi', 'ﬂ': 'fl' };
const BASE_LETTERS = { 'ø': 'o', 'Ø': 'O', 'đ': 'd', 'Đ': 'D', 'ł': 'l', 'Ł': 'L', 'ħ': 'h', 'Ħ': 'H', 'ı': 'i', 'ŧ': 't', 'Ŧ': 'T', 'þ': 'th', 'Þ': 'TH', 'ð': 'd', 'Ð': 'D' };
const COLLATOR_STATE = new WeakMap();

// Collation elements of a string: [primary class, primary value, accents, case].
function collationElements(text, numeric, ignorePunctuation) {
  const out = [];
  const chars = Array.from(String(text).normalize('NFKD'));
  for (let i = 0; i < chars.length; i += 1) {
    let c = chars[i];
    if (/\p{M}/u.test(c)) {
      if (out.length) out[out.length - 1][2] += c;
      continue;
    }
    let accent = '';
    if (BASE_LETTERS[c]) { accent = '\u0338'; c = BASE_LETTERS[c]; }
    const expanded = EXPANSIONS[c] ?? c;
    if (expanded.length > 1 && !/\d/.test(c)) {
      for (const e of expanded) out.push([4, e.toLowerCase(), accent + (expanded === c ? '' : '\u0000'), e === e.toLowerCase() ? 0 : 1]);
      continue;
    }
    if (/\s/u.test(c)) {
      if (!ignorePunctuation) out.push([1, ' '.codePointAt(0) - 1000 + c.codePointAt(0) / 1e6, '', 0]);
      continue;
    }
    if (/\d/u.test(c)) {
      if (numeric) {
        let j = i;
        let run = '';
        while (j < chars.length && /\d/.test(chars[j])) { run += chars[j]; j += 1; }
        i = j - 1;
        const trimmed = run.replace(/^0+(?=\d)/, '');
        // Longer numbers sort after shorter ones; equal lengths by digits.
        out.push([3, String(trimmed.length).padStart(4, '0') + trimmed, '', 0]);
      } else out.push([3, c, '', 0]);
      continue;
    }
    if (/\p{L}/u.test(c)) {
      const lower = c.toLowerCase();
      out.push([4, lower, accent, c === lower ? 0 : 1]);
      continue;
    }
    if (ignorePunctuation && /[\p{P}\p{S}]/u.test(c)) continue;
    const rank = PUNCTUATION_ORDER.indexOf(c);
    out.push([2, rank >= 0 ? rank : 100 + c.codePointAt(0), '', 0]);
  }
  return out;
}

function compareLevel(a, b, level, caseFirst) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i += 1) {
    const x = a[i];
    const y = b[i];
    if (level === 1) {
      if (x[0] !== y[0]) return x[0] < y[0] ? -1 : 1;
      if (x[1] !== y[1]) return x[1] < y[1] ? -1 : 1;
    } else if (level === 2) {
      if (x[2] !== y[2]) return x[2] < y[2] ? -1 : 1;
    } else if (x[3] !== y[3]) {
      const upperFirst = caseFirst === 'upper';
      return (x[3] < y[3]) !== upperFirst ? -1 : 1;
    }
  }
  if (level === 1 && a.length !== b.length) return a.length < b.length ? -1 : 1;
  return 0;
}

export class Collator {
  constructor(locales, options) {
    const locale = resolveLocale(locales);
    options = toObjectOptions(options);
    const owner = 'Intl.Collator';
    const usage = getOption(options, 'usage', ['sort', 'search'], 'sort', owner);
    const sensitivity = getOption(options, 'sensitivity', ['base', 'accent', 'case', 'variant'], 'variant', owner);
    const ignorePunctuation = getOption(options, 'ignorePunctuation', 'boolean', false, owner);
    const numeric = getOption(options, 'numeric', 'boolean', false, owner);
    const caseFirst = getOption(options, 'caseFirst', ['upper', 'lower', 'false'], 'false', owner);
    COLLATOR_STATE.set(this, { locale, usage, sensitivity, ignorePunctuation, collation: 'default', numeric, caseFirst });
  }

  static supportedLocalesOf(locales) { return supportedLocalesOf(locales); }

  get compare() {
    requireThis(this, Collator, 'compare');
    const s = COLLATOR_STATE.get(this);
    const bound = (a, b) => compareStrings(s, String(a), String(b));
    Object.defineProperty(this, 'compare', { value: bound, configurable: true });
    return bound;
  }

  resolvedOptions() {
    requireThis(this, Collator, 'resolvedOptions');
    return { ...COLLATOR_STATE.get(this) };
  }
}

function compareStrings(s, a, b) {
  if (a === b) return 0;
  const x = collationElements(a, s.numeric, s.ignorePunctuation);
  const y = collationElements(b, s.numeric, s.ignorePunctuation);
  const primary = compareLevel(x, y, 1);
  if (primary || s.sensitivity === 'base') return primary;
  if (s.sensitivity !== 'case') {
    const secondary = compareLevel(x, y, 2);
    if (secondary || s.sensitivity === 'accent') return secondary;
  }
  return compareLevel(x, y, 3, s.caseFirst);
}

// ---------------------------------------------------------------- String.prototype.localeCompare

let defaultCollator;

export function localeCompare(that, locales, options) {
  if (this === null || this === undefined) throw new TypeError('String.prototype.localeCompare called on null or undefined');
  const collator = locales === undefined && options === undefined
    ? (defaultCollator ??= new Collator())
    : new Collator(locales, options);
  return collator.compare(String(this), String(that));
}
