// Intl.DateTimeFormat and Date.prototype.toLocaleString, toLocaleDateString
// and toLocaleTimeString (see kiln:intl-base).

import { native } from 'kiln:prelude';
import { toObjectOptions, getOption, getNumberOption, resolveLocale, supportedLocalesOf, requireThis } from 'kiln:intl-base';

// ---------------------------------------------------------------- DateTimeFormat

const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];
const WEEKDAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];
const DTF_STATE = new WeakMap();
const TEXT = ['narrow', 'short', 'long'];
const NUM = ['numeric', '2-digit'];

// A time zone: UTC, a fixed offset (minutes east of UTC) or a zone of the
// IANA database, which Kiln compiles in (`native.timeZoneOffset`).
function resolveTimeZone(zone) {
  if (zone === undefined) return { name: 'UTC', offset: 0, utc: true };
  const text = String(zone);
  const upper = text.toUpperCase();
  if (['UTC', 'ETC/UTC', 'GMT', 'ETC/GMT', 'ETC/UCT', 'UCT', 'ETC/ZULU', 'ZULU', 'ETC/UNIVERSAL', 'UNIVERSAL', 'ETC/GREENWICH', 'GREENWICH', 'ETC/GMT0', 'GMT0', 'ETC/GMT+0', 'ETC/GMT-0', 'GMT+0', 'GMT-0'].includes(upper)) {
    return { name: 'UTC', offset: 0, utc: true };
  }
  let m = /^ETC\/GMT([+-])(\d{1,2})$/.exec(upper);
  if (m && Number(m[2]) <= 14) {
    // POSIX style: Etc/GMT+5 is five hours *behind* UTC.
    const hours = Number(m[2]);
    return { name: `Etc/GMT${m[1]}${hours}`, offset: (m[1] === '+' ? -1 : 1) * hours * 60 };
  }
  m = /^([+-])(\d{2})(?::?(\d{2}))?$/.exec(text);
  if (m && Number(m[2]) <= 23 && Number(m[3] ?? 0) <= 59) {
    const minutes = Number(m[2]) * 60 + Number(m[3] ?? 0);
    return { name: `${m[1]}${m[2]}:${m[3] ?? '00'}`, offset: (m[1] === '-' ? -1 : 1) * minutes };
  }
  // A named zone (a RangeError if the database does not know it).
  return { name: zones().timeZoneName(text), named: true };
}

let zoneNatives;
function zones() {
  return (zoneNatives ??= native.importSync('kiln:natives').native);
}

// The zone's offset (minutes) and abbreviation at an instant.
function zoneAt(s, time) {
  if (!s.named) return { offset: s.offset, utc: s.utc, abbreviation: '' };
  const { seconds, abbreviation } = zones().timeZoneOffset(s.timeZone, time);
  return { offset: seconds / 60, utc: false, abbreviation, zone: s.timeZone };
}

const COMPONENTS = {
  weekday: TEXT, era: TEXT, year: NUM, month: [...NUM, ...TEXT], day: NUM, dayPeriod: TEXT, hour: NUM,
  minute: NUM, second: NUM, timeZoneName: ['short', 'long', 'shortOffset', 'longOffset', 'shortGeneric', 'longGeneric'],
};

export class DateTimeFormat {
  constructor(locales, options, required = 'any', defaults = 'date') {
    const locale = resolveLocale(locales);
    options = toObjectOptions(options);
    const owner = 'Intl.DateTimeFormat';
    const s = { locale, calendar: 'gregory', numberingSystem: 'latn' };
    getOption(options, 'localeMatcher', ['lookup', 'best fit'], 'best fit', owner);
    // Only the Gregorian calendar: another `calendar` is ignored, as ICU
    // ignores one it does not know.
    const hour12 = options.hour12;
    const hourCycle = getOption(options, 'hourCycle', ['h11', 'h12', 'h23', 'h24'], undefined, owner);
    const zone = resolveTimeZone(options.timeZone);
    s.timeZone = zone.name;
    s.offset = zone.offset;
    s.utc = zone.utc;
    s.named = zone.named;
    for (const [name, allowed] of Object.entries(COMPONENTS)) {
      const value = getOption(options, name, allowed, undefined, owner);
      if (value !== undefined) s[name] = value;
    }
    const fsd = options.fractionalSecondDigits;
    if (fsd !== undefined) s.fractionalSecondDigits = getNumberOption(options, 'fractionalSecondDigits', 1, 3, undefined);
    s.dateStyle = getOption(options, 'dateStyle', ['full', 'long', 'medium', 'short'], undefined, owner);
    s.timeStyle = getOption(options, 'timeStyle', ['full', 'long', 'medium', 'short'], undefined, owner);
    const explicit = ['weekday', 'era', 'year', 'month', 'day', 'dayPeriod', 'hour', 'minute', 'second', 'fractionalSecondDigits', 'timeZoneName']
      .filter((k) => s[k] !== undefined);
    if ((s.dateStyle || s.timeStyle) && explicit.length) {
      throw new TypeError(`Can't set option ${explicit[0]} when ${s.dateStyle ? 'dateStyle' : 'timeStyle'} is used`);
    }
    if (required === 'date' && s.timeStyle && !s.dateStyle) throw new TypeError('Invalid option : timeStyle');
    if (required === 'time' && s.dateStyle && !s.timeStyle) throw new TypeError('Invalid option : dateStyle');
    if (!s.dateStyle && !s.timeStyle) {
      let needDefaults = true;
      if (required === 'date' || required === 'any') {
        if (['weekday', 'year', 'month', 'day'].some((k) => s[k] !== undefined)) needDefaults = false;
      }
      if (required === 'time' || required === 'any') {
        if (['dayPeriod', 'hour', 'minute', 'second', 'fractionalSecondDigits'].some((k) => s[k] !== undefined)) needDefaults = false;
      }
      if (needDefaults && (defaults === 'date' || defaults === 'all')) {
        s.year = s.month = s.day = 'numeric';
      }
      if (needDefaults && (defaults === 'time' || defaults === 'all')) {
        s.hour = s.minute = s.second = 'numeric';
      }
    }
    if (s.hour !== undefined || s.timeStyle) {
      let cycle = hourCycle ?? 'h12';
      if (hour12 !== undefined) cycle = hour12 ? 'h12' : 'h23';
      s.hourCycle = cycle;
      s.hour12 = cycle === 'h11' || cycle === 'h12';
    }
    DTF_STATE.set(this, s);
  }

  static supportedLocalesOf(locales) { return supportedLocalesOf(locales); }

  get format() {
    requireThis(this, DateTimeFormat, 'format');
    // Node.js (V8) puts a narrow no-break space before AM/PM in
    // formatToParts but a plain space in formatted strings.
    const bound = (date) => this.formatToParts(date).map((p) => p.value).join('').replace(/\u202f/g, ' ');
    Object.defineProperty(this, 'format', { value: bound, configurable: true });
    return bound;
  }

  formatToParts(date) {
    requireThis(this, DateTimeFormat, 'formatToParts');
    const time = date === undefined ? Date.now() : Number(date instanceof Date ? date.getTime() : date);
    if (!Number.isFinite(time) || Math.abs(time) > 8.64e15) throw new RangeError('Invalid time value');
    return dateParts(DTF_STATE.get(this), time);
  }

  formatRange(start, end) {
    return `${this.format(start)} – ${this.format(end)}`;
  }

  resolvedOptions() {
    requireThis(this, DateTimeFormat, 'resolvedOptions');
    const s = DTF_STATE.get(this);
    const out = { locale: s.locale, calendar: s.calendar, numberingSystem: s.numberingSystem, timeZone: s.timeZone };
    for (const k of ['hourCycle', 'hour12', 'weekday', 'era', 'year', 'month', 'day', 'dayPeriod', 'hour', 'minute', 'second',
      'fractionalSecondDigits', 'timeZoneName', 'dateStyle', 'timeStyle']) {
      if (s[k] === undefined) continue;
      // With a 24-hour cycle, English shows hours with two digits.
      if (k === 'hour' && !s.hour12) out[k] = '2-digit';
      else if ((k === 'minute' || k === 'second') && s.hour !== undefined) out[k] = '2-digit';
      else out[k] = s[k];
    }
    return out;
  }
}

function pad(n, width) {
  return String(n).padStart(width, '0');
}

function fields(s, time) {
  const zone = zoneAt(s, time);
  const local = new Date(time + Math.round(zone.offset * 60000));
  return {
    year: local.getUTCFullYear(), month: local.getUTCMonth(), day: local.getUTCDate(), weekday: local.getUTCDay(),
    hour: local.getUTCHours(), minute: local.getUTCMinutes(), second: local.getUTCSeconds(), ms: local.getUTCMilliseconds(),
    zone,
  };
}

// English names ICU gives the zones of North America by their
// abbreviations, and the long names of some others; any other zone is
// named by its offset ('GMT+8', 'GMT+08:00'), as ICU names zones it has no
// English name for.
const AMERICAN = {
  EST: 'Eastern Standard Time', EDT: 'Eastern Daylight Time', CST: 'Central Standard Time', CDT: 'Central Daylight Time',
  MST: 'Mountain Standard Time', MDT: 'Mountain Daylight Time', PST: 'Pacific Standard Time', PDT: 'Pacific Daylight Time',
  AKST: 'Alaska Standard Time', AKDT: 'Alaska Daylight Time', HST: 'Hawaii-Aleutian Standard Time', HDT: 'Hawaii-Aleutian Daylight Time',
};
const LONG_NAMES = {
  GMT: 'Greenwich Mean Time', BST: 'British Summer Time', CET: 'Central European Standard Time',
  CEST: 'Central European Summer Time', EET: 'Eastern European Standard Time', EEST: 'Eastern European Summer Time',
  WET: 'Western European Standard Time', WEST: 'Western European Summer Time', JST: 'Japan Standard Time',
  KST: 'Korean Standard Time', AEST: 'Australian Eastern Standard Time', AEDT: 'Australian Eastern Daylight Time',
  ACST: 'Australian Central Standard Time', ACDT: 'Australian Central Daylight Time', AWST: 'Australian Western Standard Time',
  NZST: 'New Zealand Standard Time', NZDT: 'New Zealand Daylight Time', SAST: 'South Africa Standard Time',
};
// Zones whose abbreviation is ambiguous (IST, CST) or only an offset ('-03').
const ZONE_LONG_NAMES = {
  'Asia/Kolkata': 'India Standard Time', 'Asia/Calcutta': 'India Standard Time', 'Asia/Shanghai': 'China Standard Time',
  'Asia/Hong_Kong': 'Hong Kong Standard Time', 'Asia/Singapore': 'Singapore Standard Time', 'Asia/Dubai': 'Gulf Standard Time',
  'America/Sao_Paulo': 'Brasilia Standard Time',
};

function offsetName(offset, long) {
  if (offset === 0) return 'GMT';
  const sign = offset < 0 ? '-' : '+';
  const abs = Math.abs(offset);
  const h = Math.floor(abs / 60);
  const m = Math.round(abs % 60);
  if (long) return `GMT${sign}${pad(h, 2)}:${pad(m, 2)}`;
  return `GMT${sign}${h}${m ? ':' + pad(m, 2) : ''}`;
}

function zoneName(zone, style) {
  if (zone.utc) {
    if (style === 'long') return 'Coordinated Universal Time';
    if (style === 'short') return 'UTC';
    return 'GMT';
  }
  const american = zone.zone && /^(America|US|Pacific\/Honolulu)/.test(zone.zone) && AMERICAN[zone.abbreviation];
  if (style === 'short' || style === 'shortGeneric') {
    if (american) return style === 'short' ? zone.abbreviation : `${zone.abbreviation[0]}T`;
    return offsetName(zone.offset, false);
  }
  if (style === 'long' || style === 'longGeneric') {
    const name = american || (zone.zone && (ZONE_LONG_NAMES[zone.zone]
      ?? (!zone.zone.startsWith('America/') && LONG_NAMES[zone.abbreviation])));
    if (name) return style === 'long' ? name : name.replace(/ (Standard|Daylight|Summer) /, ' ');
    return offsetName(zone.offset, true);
  }
  // Only the UTC zone itself is plain 'GMT' here: London in winter is 'GMT+0'.
  if (zone.offset === 0) return style === 'longOffset' ? 'GMT+00:00' : 'GMT+0';
  return offsetName(zone.offset, style === 'longOffset');
}

function yearText(year, style) {
  if (year <= 0) return String(1 - year);
  return style === '2-digit' ? pad(year % 100, 2) : String(year);
}

function datePartsOf(s, f) {
  const parts = [];
  const lit = (value) => parts.push({ type: 'literal', value });
  const push = (type, value) => parts.push({ type, value });
  const weekday = s.weekday && (s.weekday === 'narrow' ? WEEKDAYS[f.weekday][0] : s.weekday === 'short' ? WEEKDAYS[f.weekday].slice(0, 3) : WEEKDAYS[f.weekday]);
  const era = s.era && (f.year <= 0 ? (s.era === 'long' ? 'Before Christ' : s.era === 'narrow' ? 'B' : 'BC') : (s.era === 'long' ? 'Anno Domini' : s.era === 'narrow' ? 'A' : 'AD'));
  const textMonth = s.month && TEXT.includes(s.month);
  if (textMonth) {
    const name = s.month === 'narrow' ? MONTHS[f.month][0] : s.month === 'short' ? MONTHS[f.month].slice(0, 3) : MONTHS[f.month];
    if (weekday) { push('weekday', weekday); lit(', '); }
    push('month', name);
    if (s.day) { lit(' '); push('day', s.day === '2-digit' ? pad(f.day, 2) : String(f.day)); }
    if (s.year) { lit(s.day ? ', ' : ' '); push('year', yearText(f.year, s.year)); }
    if (era) { lit(' '); push('era', era); }
    return parts;
  }
  const numeric = [];
  if (s.month) numeric.push(['month', s.month === '2-digit' ? pad(f.month + 1, 2) : String(f.month + 1)]);
  if (s.day) numeric.push(['day', s.day === '2-digit' ? pad(f.day, 2) : String(f.day)]);
  if (s.year) numeric.push(['year', yearText(f.year, s.year)]);
  if (weekday) {
    push('weekday', weekday);
    if (numeric.length) lit(', ');
  }
  numeric.forEach(([type, value], i) => {
    if (i > 0) lit(s.month ? '/' : ' ');
    push(type, value);
  });
  if (era) { lit(' '); push('era', era); }
  return parts;
}

function timePartsOf(s, f) {
  const parts = [];
  const lit = (value) => parts.push({ type: 'literal', value });
  const push = (type, value) => parts.push({ type, value });
  const fields = [];
  if (s.hour) {
    let hour = f.hour;
    if (s.hourCycle === 'h12') hour = hour % 12 === 0 ? 12 : hour % 12;
    else if (s.hourCycle === 'h11') hour %= 12;
    else if (s.hourCycle === 'h24' && hour === 0) hour = 24;
    const twoDigit = s.hour === '2-digit' || !s.hour12;
    fields.push(['hour', twoDigit ? pad(hour, 2) : String(hour)]);
  }
  if (s.minute) fields.push(['minute', s.hour || s.second ? pad(f.minute, 2) : String(f.minute)]);
  if (s.second) fields.push(['second', s.minute ? pad(f.second, 2) : String(f.second)]);
  fields.forEach(([type, value], i) => {
    if (i > 0) lit(':');
    push(type, value);
  });
  if (s.fractionalSecondDigits) {
    lit('.');
    push('fractionalSecond', pad(f.ms, 3).slice(0, s.fractionalSecondDigits));
  }
  if (s.hour && s.hour12) {
    lit('\u202f');
    push('dayPeriod', f.hour < 12 ? 'AM' : 'PM');
  } else if (s.dayPeriod && !s.hour) {
    const h = f.hour;
    const period = h >= 6 && h < 12 ? 'in the morning' : h >= 12 && h < 18 ? 'in the afternoon' : h >= 18 && h < 21 ? 'in the evening' : 'at night';
    if (parts.length) lit(' ');
    push('dayPeriod', h === 12 && f.minute === 0 ? 'noon' : period);
  }
  if (s.timeZoneName) {
    if (parts.length) lit(' ');
    push('timeZoneName', zoneName(f.zone, s.timeZoneName));
  }
  return parts;
}

const DATE_STYLES = {
  full: { weekday: 'long', month: 'long', day: 'numeric', year: 'numeric' },
  long: { month: 'long', day: 'numeric', year: 'numeric' },
  medium: { month: 'short', day: 'numeric', year: 'numeric' },
  short: { month: 'numeric', day: 'numeric', year: '2-digit' },
};
const TIME_STYLES = {
  full: { hour: 'numeric', minute: '2-digit', second: '2-digit', timeZoneName: 'long' },
  long: { hour: 'numeric', minute: '2-digit', second: '2-digit', timeZoneName: 'short' },
  medium: { hour: 'numeric', minute: '2-digit', second: '2-digit' },
  short: { hour: 'numeric', minute: '2-digit' },
};

function dateParts(s, time) {
  const f = fields(s, time);
  let date;
  let timeParts;
  let joiner = ', ';
  if (s.dateStyle || s.timeStyle) {
    if (s.dateStyle) date = datePartsOf({ ...DATE_STYLES[s.dateStyle] }, f);
    if (s.timeStyle) timeParts = timePartsOf({ ...TIME_STYLES[s.timeStyle], hourCycle: s.hourCycle, hour12: s.hour12 }, f);
    if (s.dateStyle === 'full' || s.dateStyle === 'long') joiner = ' at ';
  } else {
    const hasDate = s.weekday || s.era || s.year || s.month || s.day;
    const hasTime = s.hour || s.minute || s.second || s.fractionalSecondDigits || s.dayPeriod || s.timeZoneName;
    if (hasDate) date = datePartsOf(s, f);
    if (hasTime) {
      timeParts = timePartsOf(s, f);
      // A time zone name with a date alone follows the date.
      if (!(s.hour || s.minute || s.second || s.fractionalSecondDigits || s.dayPeriod) && date) joiner = ', ';
    }
  }
  if (date && timeParts && timeParts.length) return [...date, { type: 'literal', value: joiner }, ...timeParts];
  return date ?? timeParts ?? [];
}

// ---------------------------------------------------------------- Date.prototype.toLocale*String

function formatDate(date, locales, options, required, defaults) {
  if (!(date instanceof Date)) throw new TypeError(`this is not a Date object.`);
  const time = date.getTime();
  if (Number.isNaN(time)) return 'Invalid Date';
  return new DateTimeFormat(locales, options, required, defaults).format(time);
}

export function toLocaleString(locales, options) {
  return formatDate(this, locales, options, 'any', 'all');
}

export function toLocaleDateString(locales, options) {
  return formatDate(this, locales, options, 'date', 'date');
}

export function toLocaleTimeString(locales, options) {
  return formatDate(this, locales, options, 'time', 'time');
}
