// Intl.NumberFormat, Intl.PluralRules and Number.prototype.toLocaleString
// (see kiln:intl-base).

import { native } from 'kiln:prelude';
import { LOCALE, toObjectOptions, getOption, getNumberOption, resolveLocale, supportedLocalesOf, requireThis } from 'kiln:intl-base';

// ---------------------------------------------------------------- decimals
// A number as decimal digits (the shortest that read back as it, as JS
// prints it) and the position of the decimal point, rounded in decimal as
// ICU rounds: (1.005).toFixed(2) is '1.00', Intl gives '1.01'.

function toDecimal(x) {
  if (typeof x === 'bigint') {
    const s = (x < 0n ? -x : x).toString();
    return { digits: s.replace(/^0+(?=.)/, ''), point: s.length };
  }
  const s = String(Math.abs(x));
  const [mantissa, exp] = s.split('e');
  const [int, frac = ''] = mantissa.split('.');
  let digits = int + frac;
  let point = int.length + (exp ? Number(exp) : 0);
  const lead = digits.match(/^0*/)[0].length;
  if (lead === digits.length) return { digits: '0', point: 1 };
  digits = digits.slice(lead);
  point -= lead;
  return { digits: digits.replace(/0+$/, '') || '0', point };
}

function roundUp(mode, negative, next, rest, lastDigit) {
  // next: the first dropped digit; rest: whether anything non-zero follows it.
  const nonZero = next > 0 || rest;
  const half = next > 5 || (next === 5 && rest) ? 1 : next === 5 ? 0 : -1;
  switch (mode) {
    case 'ceil': return !negative && nonZero;
    case 'floor': return negative && nonZero;
    case 'expand': return nonZero;
    case 'trunc': return false;
    case 'halfCeil': return half > 0 || (half === 0 && !negative);
    case 'halfFloor': return half > 0 || (half === 0 && negative);
    case 'halfTrunc': return half > 0;
    case 'halfEven': return half > 0 || (half === 0 && lastDigit % 2 === 1);
    default: return half >= 0; // halfExpand
  }
}

// Keep `keep` digits (counted from the first), rounding the rest away.
function roundDigits(dec, keep, mode, negative) {
  let { digits, point } = dec;
  if (keep >= digits.length) return dec;
  if (keep < 0) return { digits: '0', point: 1, zero: true };
  const next = Number(digits[keep] ?? '0');
  const rest = /[1-9]/.test(digits.slice(keep + 1));
  const last = keep > 0 ? Number(digits[keep - 1]) : 0;
  digits = digits.slice(0, keep);
  if (roundUp(mode, negative, next, rest, last)) {
    const arr = digits.split('').map(Number);
    let i = arr.length - 1;
    while (i >= 0 && arr[i] === 9) { arr[i] = 0; i -= 1; }
    if (i < 0) { arr.unshift(1); point += 1; } else arr[i] += 1;
    digits = arr.join('');
  }
  digits = digits.replace(/0+$/, '');
  if (!digits) return { digits: '0', point: 1, zero: true };
  return { digits, point };
}

function roundToFraction(dec, maxFraction, mode, negative) {
  return roundDigits(dec, dec.point + maxFraction, mode, negative);
}

function roundToSignificant(dec, maxSignificant, mode, negative) {
  return roundDigits(dec, maxSignificant, mode, negative);
}

// Integer and fraction digit strings of a rounded decimal.
function split(dec) {
  if (dec.zero || dec.digits === '0') return { int: '0', frac: '' };
  const { digits, point } = dec;
  if (point <= 0) return { int: '0', frac: '0'.repeat(-point) + digits };
  if (point >= digits.length) return { int: digits + '0'.repeat(point - digits.length), frac: '' };
  return { int: digits.slice(0, point), frac: digits.slice(point) };
}

// ---------------------------------------------------------------- NumberFormat

// Currency and unit names live in their own module, read only by the
// styles that use them.
let loadedTables;
function tables() {
  return (loadedTables ??= native.importSync('kiln:intl-tables'));
}

const NF_STATE = new WeakMap();

function sanctionedUnit(unit) {
  const { UNITS } = tables();
  if (unit in UNITS) return [unit];
  const per = unit.split('-per-');
  if (per.length === 2 && per[0] in UNITS && per[1] in UNITS) return per;
  throw new RangeError(`Invalid unit argument for Intl.NumberFormat() '${unit}'`);
}

export class NumberFormat {
  constructor(locales, options) {
    const locale = resolveLocale(locales);
    options = toObjectOptions(options);
    const owner = 'Intl.NumberFormat';
    const s = { locale, numberingSystem: 'latn' };
    s.style = getOption(options, 'style', ['decimal', 'percent', 'currency', 'unit'], 'decimal', owner);
    let currency = options.currency;
    if (currency !== undefined) {
      currency = String(currency);
      if (!/^[A-Za-z]{3}$/.test(currency)) throw new RangeError(`Invalid currency code : ${currency}`);
      currency = currency.toUpperCase();
    }
    s.currencyDisplay = getOption(options, 'currencyDisplay', ['code', 'symbol', 'narrowSymbol', 'name'], 'symbol', owner);
    s.currencySign = getOption(options, 'currencySign', ['standard', 'accounting'], 'standard', owner);
    let unit = options.unit;
    s.unitDisplay = getOption(options, 'unitDisplay', ['short', 'narrow', 'long'], 'short', owner);
    if (s.style === 'currency') {
      if (currency === undefined) throw new TypeError('Currency code is required with currency style.');
      s.currency = currency;
    }
    if (s.style === 'unit') {
      if (unit === undefined) throw new TypeError('Unit is required with unit style.');
      unit = String(unit);
      sanctionedUnit(unit);
      s.unit = unit;
    }
    s.notation = getOption(options, 'notation', ['standard', 'scientific', 'engineering', 'compact'], 'standard', owner);
    const currencyDigits = s.style === 'currency' ? (tables().CURRENCY_DIGITS[s.currency] ?? 2) : 0;
    const defaultMin = s.style === 'currency' && s.notation !== 'compact' ? currencyDigits : 0;
    const defaultMax = s.style === 'currency' && s.notation !== 'compact' ? currencyDigits
      : s.style === 'percent' ? 0 : s.notation === 'compact' ? 0 : 3;
    s.minimumIntegerDigits = getNumberOption(options, 'minimumIntegerDigits', 1, 21, 1);
    const mnsd = options.minimumSignificantDigits;
    const mxsd = options.maximumSignificantDigits;
    const mnfd = options.minimumFractionDigits;
    const mxfd = options.maximumFractionDigits;
    s.roundingPriority = getOption(options, 'roundingPriority', ['auto', 'morePrecision', 'lessPrecision'], 'auto', owner);
    const hasSd = mnsd !== undefined || mxsd !== undefined;
    const hasFd = mnfd !== undefined || mxfd !== undefined;
    s.compactRounding = s.notation === 'compact' && !hasSd && !hasFd;
    if (hasSd || s.roundingPriority !== 'auto') {
      s.minimumSignificantDigits = getNumberOption(options, 'minimumSignificantDigits', 1, 21, 1);
      s.maximumSignificantDigits = getNumberOption(options, 'maximumSignificantDigits', s.minimumSignificantDigits, 21, 21);
    }
    if (!hasSd || s.roundingPriority !== 'auto') {
      let min = getNumberOption(options, 'minimumFractionDigits', 0, 100, undefined);
      let max = getNumberOption(options, 'maximumFractionDigits', 0, 100, undefined);
      if (min === undefined && max === undefined) { min = defaultMin; max = defaultMax; }
      else if (min === undefined) min = Math.min(defaultMin, max);
      else if (max === undefined) max = Math.max(defaultMax, min);
      else if (min > max) throw new RangeError('maximumFractionDigits value is out of range.');
      s.minimumFractionDigits = min;
      s.maximumFractionDigits = max;
    }
    const grouping = options.useGrouping;
    if (grouping === undefined) s.useGrouping = s.notation === 'compact' ? 'min2' : 'auto';
    else if (grouping === true || grouping === 'true') s.useGrouping = 'always';
    else if (grouping === false || grouping === 'false' || grouping === null || grouping === '') s.useGrouping = false;
    else s.useGrouping = getOption({ g: grouping }, 'g', ['always', 'auto', 'min2'], 'auto', owner);
    s.compactDisplay = getOption(options, 'compactDisplay', ['short', 'long'], 'short', owner);
    s.signDisplay = getOption(options, 'signDisplay', ['auto', 'never', 'always', 'exceptZero', 'negative'], 'auto', owner);
    s.roundingMode = getOption(options, 'roundingMode',
      ['ceil', 'floor', 'expand', 'trunc', 'halfCeil', 'halfFloor', 'halfExpand', 'halfTrunc', 'halfEven'], 'halfExpand', owner);
    s.roundingIncrement = 1;
    s.trailingZeroDisplay = getOption(options, 'trailingZeroDisplay', ['auto', 'stripIfInteger'], 'auto', owner);
    NF_STATE.set(this, s);
  }

  static supportedLocalesOf(locales) { return supportedLocalesOf(locales); }

  get format() {
    requireThis(this, NumberFormat, 'format');
    const bound = (value) => this.formatToParts(value).map((p) => p.value).join('');
    Object.defineProperty(this, 'format', { value: bound, configurable: true });
    return bound;
  }

  formatToParts(value) {
    requireThis(this, NumberFormat, 'formatToParts');
    return numberParts(NF_STATE.get(this), toNumeric(value));
  }

  resolvedOptions() {
    requireThis(this, NumberFormat, 'resolvedOptions');
    const s = NF_STATE.get(this);
    const out = {};
    for (const key of ['locale', 'numberingSystem', 'style', 'currency', 'currencyDisplay', 'currencySign', 'unit',
      'unitDisplay', 'minimumIntegerDigits', 'minimumFractionDigits', 'maximumFractionDigits',
      'minimumSignificantDigits', 'maximumSignificantDigits', 'useGrouping', 'notation', 'compactDisplay',
      'signDisplay', 'roundingMode', 'roundingIncrement', 'trailingZeroDisplay', 'roundingPriority']) {
      if (s[key] === undefined) continue;
      if ((key === 'currencyDisplay' || key === 'currencySign') && s.style !== 'currency') continue;
      if (key === 'unitDisplay' && s.style !== 'unit') continue;
      if (key === 'compactDisplay' && s.notation !== 'compact') continue;
      out[key] = s[key];
    }
    return out;
  }
}

function toNumeric(value) {
  if (typeof value === 'bigint') return value;
  if (typeof value === 'string' && /^\s*-?\d+\s*$/.test(value) && value.trim().replace('-', '').length > 15) {
    return BigInt(value.trim());
  }
  return Number(value);
}

// Round a decimal as the format's digit options say.
function roundFor(s, dec, negative) {
  if (s.compactRounding) {
    // Compact notation: whole numbers, but at least two significant digits.
    const byFraction = roundToFraction(dec, 0, s.roundingMode, negative);
    if (dec.point >= 2) return { dec: byFraction, minFraction: 0 };
    return { dec: roundToSignificant(dec, 2, s.roundingMode, negative), minFraction: 0 };
  }
  const bySignificant = s.maximumSignificantDigits !== undefined
    ? roundToSignificant(dec, s.maximumSignificantDigits, s.roundingMode, negative) : undefined;
  const byFraction = s.maximumFractionDigits !== undefined
    ? roundToFraction(dec, s.maximumFractionDigits, s.roundingMode, negative) : undefined;
  const minSignificant = (d) => {
    if (s.minimumSignificantDigits === undefined) return 0;
    const point = d.zero ? 1 : d.point;
    return Math.max(0, s.minimumSignificantDigits - point);
  };
  if (bySignificant && byFraction) {
    const fracOf = (d) => split(d).frac.length;
    const more = fracOf(bySignificant) >= fracOf(byFraction);
    const pickSignificant = s.roundingPriority === 'morePrecision' ? more : !more;
    return pickSignificant
      ? { dec: bySignificant, minFraction: minSignificant(bySignificant) }
      : { dec: byFraction, minFraction: s.minimumFractionDigits };
  }
  if (bySignificant) return { dec: bySignificant, minFraction: minSignificant(bySignificant) };
  return { dec: byFraction, minFraction: s.minimumFractionDigits };
}

function groupInteger(int, s) {
  const grouping = s.useGrouping;
  if (!grouping || int.length < 4 || (grouping === 'min2' && int.length < 5)) return [int];
  const groups = [];
  let end = int.length;
  while (end > 3) { groups.unshift(int.slice(end - 3, end)); end -= 3; }
  groups.unshift(int.slice(0, end));
  return groups;
}

const COMPACT = [
  [12, 'T', ' trillion'], [9, 'B', ' billion'], [6, 'M', ' million'], [3, 'K', ' thousand'],
];

// The compact unit for a number whose leading digit is at 10^magnitude.
function compactUnit(magnitude) {
  const found = COMPACT.find(([power]) => magnitude >= power);
  return found ? { power: found[0], short: found[1], long: found[2] } : null;
}

function currencyText(s, plural) {
  const code = s.currency;
  switch (s.currencyDisplay) {
    case 'code': return code;
    case 'name': return (tables().CURRENCY_NAMES[code] ?? [code, code])[plural ? 1 : 0];
    case 'narrowSymbol': return tables().NARROW_SYMBOLS[code] ?? tables().CURRENCY_SYMBOLS[code] ?? code;
    default: return tables().CURRENCY_SYMBOLS[code] ?? code;
  }
}

function numberParts(s, x) {
  const parts = [];
  const isBig = typeof x === 'bigint';
  const negative = isBig ? x < 0n : x < 0 || Object.is(x, -0);
  let dec = null;
  let exponent = 0;
  let compact = null;
  if (isBig || Number.isFinite(x)) {
    if (s.style === 'percent') {
      dec = toDecimal(x);
      if (!(dec.digits === '0')) dec = { digits: dec.digits, point: dec.point + 2 };
    } else dec = toDecimal(x);
    if (s.notation === 'scientific' || s.notation === 'engineering') {
      if (dec.digits !== '0') {
        exponent = dec.point - 1;
        if (s.notation === 'engineering') exponent = Math.floor(exponent / 3) * 3;
        dec = { digits: dec.digits, point: dec.point - exponent };
      }
    } else if (s.notation === 'compact' && dec.digits !== '0') {
      compact = compactUnit(dec.point - 1);
    }
  }
  let rounded = null;
  if (dec) {
    const scaled = compact ? { digits: dec.digits, point: dec.point - compact.power } : dec;
    rounded = roundFor(s, scaled, negative);
    // Rounding can carry into the next unit: 999,999.5 is '1M', not '1000K'.
    const next = compact ? compactUnit(compact.power + 3) : s.notation === 'compact' ? compactUnit(3) : null;
    if (next && next.power > (compact?.power ?? 0) && !rounded.dec.zero && split(rounded.dec).int.length > next.power - (compact?.power ?? 0)) {
      compact = next;
      rounded = roundFor(s, { digits: dec.digits, point: dec.point - compact.power }, negative);
    }
    if ((s.notation === 'scientific' || s.notation === 'engineering') && !rounded.dec.zero) {
      const width = s.notation === 'engineering' ? 3 : 1;
      if (rounded.dec.point > width) {
        exponent += width;
        rounded = roundFor(s, { digits: rounded.dec.digits, point: rounded.dec.point - width }, negative);
      }
    }
  }
  const isZero = rounded ? rounded.dec.zero || rounded.dec.digits === '0' : false;
  let sign = '';
  const nan = !isBig && Number.isNaN(x);
  switch (s.signDisplay) {
    case 'never': break;
    case 'always': sign = negative ? '-' : '+'; break;
    case 'exceptZero': sign = isZero || nan ? '' : negative ? '-' : '+'; break;
    case 'negative': sign = negative && !isZero ? '-' : ''; break;
    default: sign = negative ? '-' : '';
  }
  const accounting = s.style === 'currency' && s.currencySign === 'accounting' && sign === '-';
  if (accounting) parts.push({ type: 'literal', value: '(' });
  else if (sign) parts.push({ type: sign === '-' ? 'minusSign' : 'plusSign', value: sign });
  const plural = !(rounded && !rounded.dec.zero && split(rounded.dec).int === '1' && split(rounded.dec).frac === '')
    || (rounded && rounded.minFraction > 0);
  const currencyBefore = s.style === 'currency' && s.currencyDisplay !== 'name';
  if (currencyBefore) {
    const text = currencyText(s, plural);
    parts.push({ type: 'currency', value: text });
    // A symbol that ends in a letter is spaced from digits, not from NaN or ∞.
    if (/[A-Za-z]$/.test(text) && rounded) parts.push({ type: 'literal', value: '\u00a0' });
  }
  if (nan) parts.push({ type: 'nan', value: 'NaN' });
  else if (!rounded) parts.push({ type: 'infinity', value: '∞' });
  else {
    let { int, frac } = split(rounded.dec);
    if (int.length < s.minimumIntegerDigits) int = '0'.repeat(s.minimumIntegerDigits - int.length) + int;
    if (frac.length < rounded.minFraction) frac += '0'.repeat(rounded.minFraction - frac.length);
    if (s.trailingZeroDisplay === 'stripIfInteger' && /^0*$/.test(frac)) frac = '';
    const groups = groupInteger(int, s);
    groups.forEach((g, i) => {
      if (i > 0) parts.push({ type: 'group', value: ',' });
      parts.push({ type: 'integer', value: g });
    });
    if (frac) {
      parts.push({ type: 'decimal', value: '.' });
      parts.push({ type: 'fraction', value: frac });
    }
    if (s.notation === 'scientific' || s.notation === 'engineering') {
      parts.push({ type: 'exponentSeparator', value: 'E' });
      if (exponent < 0) parts.push({ type: 'exponentMinusSign', value: '-' });
      parts.push({ type: 'exponentInteger', value: String(Math.abs(exponent)) });
    }
    if (compact) {
      if (s.compactDisplay === 'long') parts.push({ type: 'literal', value: ' ' });
      parts.push({ type: 'compact', value: (s.compactDisplay === 'long' ? compact.long : compact.short).trim() });
    }
  }
  if (s.style === 'percent') parts.push({ type: 'percentSign', value: '%' });
  if (s.style === 'currency' && s.currencyDisplay === 'name') {
    parts.push({ type: 'literal', value: ' ' });
    parts.push({ type: 'currency', value: currencyText(s, plural) });
  }
  if (s.style === 'unit') unitParts(s, parts, plural);
  if (accounting) parts.push({ type: 'literal', value: ')' });
  return parts;
}

function unitParts(s, parts, plural) {
  const [unit, per] = sanctionedUnit(s.unit);
  const { UNITS, COMPOUND_UNITS } = tables();
  const forms = UNITS[unit];
  let text;
  if (s.unitDisplay === 'long') text = plural ? forms[3] : forms[2];
  else if (s.unitDisplay === 'narrow') text = forms[1];
  else text = plural && forms[4] ? forms[4] : forms[0];
  const compound = COMPOUND_UNITS[s.unit];
  if (compound) {
    text = ' ' + (s.unitDisplay === 'long' ? compound[plural ? 2 : 3] : compound[s.unitDisplay === 'narrow' ? 1 : 0]);
  } else if (per) {
    const perForms = UNITS[per];
    text += s.unitDisplay === 'long' ? ' per' + perForms[2] : '/' + (s.unitDisplay === 'narrow' ? perForms[1] : perForms[0].trim());
  }
  if (text.startsWith(' ')) parts.push({ type: 'literal', value: ' ' });
  parts.push({ type: 'unit', value: text.trim() });
}

// ---------------------------------------------------------------- PluralRules

const PR_STATE = new WeakMap();

export class PluralRules {
  constructor(locales, options) {
    // The locales are checked, but ICU's plural rules are per language:
    // Node.js resolves 'en-US' to 'en'.
    resolveLocale(locales);
    options = toObjectOptions(options);
    const type = getOption(options, 'type', ['cardinal', 'ordinal'], 'cardinal', 'Intl.PluralRules');
    const format = new NumberFormat(LOCALE, {
      minimumIntegerDigits: options.minimumIntegerDigits,
      minimumFractionDigits: options.minimumFractionDigits,
      maximumFractionDigits: options.maximumFractionDigits,
      minimumSignificantDigits: options.minimumSignificantDigits,
      maximumSignificantDigits: options.maximumSignificantDigits,
      useGrouping: false,
    });
    PR_STATE.set(this, { locale: 'en', type, format });
  }

  static supportedLocalesOf(locales) { return supportedLocalesOf(locales); }

  select(n) {
    requireThis(this, PluralRules, 'select');
    const { type, format } = PR_STATE.get(this);
    const text = format.format(Number(n)).replace('-', '');
    if (type === 'ordinal') {
      if (text.includes('.')) return 'other';
      const i = Number(text);
      if (i % 10 === 1 && i % 100 !== 11) return 'one';
      if (i % 10 === 2 && i % 100 !== 12) return 'two';
      if (i % 10 === 3 && i % 100 !== 13) return 'few';
      return 'other';
    }
    return text === '1' ? 'one' : 'other';
  }

  resolvedOptions() {
    requireThis(this, PluralRules, 'resolvedOptions');
    const { locale, type, format } = PR_STATE.get(this);
    const o = format.resolvedOptions();
    const out = { locale, type, minimumIntegerDigits: o.minimumIntegerDigits };
    for (const k of ['minimumFractionDigits', 'maximumFractionDigits', 'minimumSignificantDigits', 'maximumSignificantDigits']) {
      if (o[k] !== undefined) out[k] = o[k];
    }
    out.pluralCategories = type === 'ordinal' ? ['few', 'one', 'two', 'other'] : ['one', 'other'];
    return out;
  }
}

// ---------------------------------------------------------------- Number.prototype.toLocaleString

let defaultNumber;

function thisNumber(value, method) {
  if (typeof value === 'number') return value;
  if (value instanceof Number) return value.valueOf();
  throw new TypeError(`Number.prototype.${method} requires that 'this' be a Number`);
}

export function toLocaleString(locales, options) {
  const x = thisNumber(this, 'toLocaleString');
  if (locales === undefined && options === undefined) return (defaultNumber ??= new NumberFormat()).format(x);
  return new NumberFormat(locales, options).format(x);
}

export const currencies = () =>
  Object.keys(tables().CURRENCY_SYMBOLS).concat(Object.keys(tables().NARROW_SYMBOLS)).filter((c, i, a) => a.indexOf(c) === i).sort();
export const units = () => Object.keys(tables().UNITS).sort();
