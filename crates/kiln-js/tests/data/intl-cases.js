// Intl and the locale-sensitive built-in methods, case by case: each line is
// 'label => result' (JSON, or the error's name). Run by crates/kiln-js/tests/intl.rs;
// intl-node.txt is what Node.js prints for the same cases (see there).
export function cases() {
  const out = [];
  const t = (label, f) => { try { out.push(label + ' => ' + JSON.stringify(f())); } catch (e) { out.push(label + ' => ' + e.name); } };
  const nums = [0, -0, 1, -1, 0.5, 1.005, 2.5, -2.5, 1234.5678, 999999.5, 1e21, 1.5e-7, 123456789.123, NaN, Infinity, -Infinity, 0.000123, 1000, 10000, 99999, 999.9995];
  const nopts = [
    undefined, { maximumFractionDigits: 0 }, { minimumFractionDigits: 2 }, { minimumFractionDigits: 2, maximumFractionDigits: 2 },
    { style: 'percent' }, { style: 'percent', maximumFractionDigits: 1 }, { style: 'currency', currency: 'USD' },
    { style: 'currency', currency: 'EUR' }, { style: 'currency', currency: 'JPY' }, { style: 'currency', currency: 'GBP', currencyDisplay: 'code' },
    { style: 'currency', currency: 'USD', currencyDisplay: 'name' }, { style: 'currency', currency: 'CAD' }, { style: 'currency', currency: 'CHF' },
    { style: 'currency', currency: 'USD', currencySign: 'accounting' }, { notation: 'compact' }, { notation: 'compact', compactDisplay: 'long' },
    { notation: 'scientific' }, { notation: 'engineering' }, { maximumSignificantDigits: 3 }, { minimumSignificantDigits: 5 },
    { useGrouping: false }, { signDisplay: 'always' }, { signDisplay: 'exceptZero' }, { minimumIntegerDigits: 3 },
    { style: 'unit', unit: 'kilobyte' }, { style: 'unit', unit: 'megabyte', unitDisplay: 'long' }, { style: 'unit', unit: 'kilometer-per-hour' },
    { style: 'unit', unit: 'day', unitDisplay: 'long' }, { style: 'unit', unit: 'second', unitDisplay: 'narrow' },
    { roundingMode: 'floor', maximumFractionDigits: 1 }, { maximumFractionDigits: 2, trailingZeroDisplay: 'stripIfInteger', minimumFractionDigits: 2 },
  ];
  for (const o of nopts) for (const n of nums) t('nf ' + JSON.stringify(o) + ' ' + String(n), () => new Intl.NumberFormat('en-US', o).format(n));
  t('nf parts', () => new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD' }).formatToParts(-1234.5));
  t('nf resolved', () => new Intl.NumberFormat().resolvedOptions());
  t('nf resolved cur', () => new Intl.NumberFormat('en', { style: 'currency', currency: 'eur' }).resolvedOptions());
  t('nf bad', () => new Intl.NumberFormat('en', { style: 'currency' }));
  t('nf bad2', () => new Intl.NumberFormat('en', { style: 'bogus' }));
  t('nf bigint', () => new Intl.NumberFormat().format(123456789012345678901234567890n));
  t('nf nonew', () => Intl.NumberFormat().format(1234));
  const d = new Date(Date.UTC(2026, 0, 5, 9, 3, 7, 45));
  const d2 = new Date(Date.UTC(2026, 10, 30, 0, 0, 0));
  const d3 = new Date(Date.UTC(2026, 6, 4, 12, 30, 0));
  const dopts = [
    undefined, { dateStyle: 'full' }, { dateStyle: 'long' }, { dateStyle: 'medium' }, { dateStyle: 'short' },
    { timeStyle: 'full' }, { timeStyle: 'long' }, { timeStyle: 'medium' }, { timeStyle: 'short' },
    { dateStyle: 'full', timeStyle: 'short' }, { dateStyle: 'medium', timeStyle: 'short' }, { dateStyle: 'short', timeStyle: 'medium' },
    { dateStyle: 'long', timeStyle: 'long' },
    { year: 'numeric', month: 'long', day: 'numeric' }, { year: 'numeric', month: 'short', day: '2-digit' },
    { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' }, { weekday: 'short' }, { month: 'long' }, { month: 'short', day: 'numeric' },
    { month: 'long', year: 'numeric' }, { year: 'numeric', month: '2-digit', day: '2-digit' }, { month: 'numeric', day: 'numeric' },
    { year: 'numeric', month: 'numeric' }, { year: '2-digit' }, { day: 'numeric' }, { weekday: 'long', month: 'numeric', day: 'numeric' },
    { hour: 'numeric' }, { hour: '2-digit', minute: '2-digit' }, { hour: 'numeric', minute: 'numeric', hour12: false },
    { hour: 'numeric', minute: '2-digit', second: '2-digit', hour12: false }, { hour: 'numeric', minute: 'numeric', hourCycle: 'h23' },
    { minute: '2-digit', second: '2-digit' }, { hour: 'numeric', minute: '2-digit', timeZoneName: 'short' },
    { year: 'numeric', month: 'short', day: 'numeric', hour: 'numeric', minute: '2-digit' },
    { timeZone: 'UTC' }, { timeZone: 'Etc/GMT-3', hour: 'numeric', minute: 'numeric', timeZoneName: 'short' },
    { timeZone: '+05:30', dateStyle: 'medium', timeStyle: 'long' }, { timeZone: 'America/New_York' },
    { hour: 'numeric', minute: '2-digit', second: '2-digit', fractionalSecondDigits: 3 },
    { weekday: 'narrow' }, { month: 'narrow' }, { era: 'short', year: 'numeric' }, { dateStyle: 'short', month: 'long' },
  ];
  for (const o of dopts) for (const x of [d, d2, d3]) t('dtf ' + JSON.stringify(o) + ' ' + x.toISOString(), () => new Intl.DateTimeFormat('en-US', o).format(x));
  for (const x of [d, d2, d3]) {
    t('toLocaleString', () => x.toLocaleString());
    t('toLocaleDateString', () => x.toLocaleDateString());
    t('toLocaleTimeString', () => x.toLocaleTimeString());
    t('toLocaleDateString long', () => x.toLocaleDateString('en-US', { month: 'long', day: 'numeric' }));
    t('toLocaleTimeString short', () => x.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }));
    t('toLocaleString hour', () => x.toLocaleString('en-US', { hour: 'numeric' }));
    t('toLocaleString en-GB', () => x.toLocaleString('en-GB'));
  }
  const zones = ['America/New_York', 'America/Los_Angeles', 'America/Chicago', 'America/Toronto', 'Europe/London', 'Europe/Paris', 'Europe/Berlin', 'Asia/Kolkata', 'Asia/Tokyo', 'Asia/Shanghai', 'Australia/Sydney', 'America/Sao_Paulo', 'Pacific/Honolulu', 'asia/calcutta'];
  for (const timeZone of zones) {
    for (const x of [d, d3]) {
      for (const timeZoneName of [undefined, 'short', 'long', 'shortOffset', 'longOffset']) {
        t('tz ' + timeZone + ' ' + timeZoneName + ' ' + x.toISOString(), () => new Intl.DateTimeFormat('en-US', { timeZone, timeZoneName, dateStyle: timeZoneName ? undefined : 'full', timeStyle: timeZoneName ? undefined : 'long' }).format(x));
      }
      t('tz toLocaleString ' + timeZone + ' ' + x.toISOString(), () => x.toLocaleString('en-US', { timeZone }));
    }
    t('tz resolved ' + timeZone, () => new Intl.DateTimeFormat('en-US', { timeZone }).resolvedOptions().timeZone);
  }
  t('tz unknown', () => new Intl.DateTimeFormat('en', { timeZone: 'Mars/Olympus_Mons' }));
  t('dtf parts', () => new Intl.DateTimeFormat('en-US', { dateStyle: 'medium', timeStyle: 'short' }).formatToParts(d));
  t('dtf resolved', () => Intl.DateTimeFormat().resolvedOptions());
  t('dtf resolved2', () => new Intl.DateTimeFormat('en', { hour: 'numeric', hour12: false }).resolvedOptions());
  t('dtf tz', () => Intl.DateTimeFormat().resolvedOptions().timeZone);
  t('dtf invalid', () => new Intl.DateTimeFormat().format(new Date(NaN)));
  t('invalid date', () => new Date(NaN).toLocaleString());
  const words = ['banana', 'Apple', 'apple', 'Äpfel', 'cherry', 'éclair', 'Eclair', 'zebra', 'Zebra', '10 items', '9 items', 'item 10', 'item 9', '_private', '-dash', ' space', 'Ångström', 'ab', 'a-b', 'a b', 'résumé', 'resume', 'Resume', 'straße', 'strasse', 'ß', 'Ǆ', 'ø', 'o', 'p', 'Ωmega', 'alpha', '日本', 'Ярослав', '', 'a', 'A', '1', '$', '€'];
  t('sort', () => [...words].sort((a, b) => a.localeCompare(b)));
  t('sort numeric', () => [...words].sort(new Intl.Collator('en', { numeric: true }).compare));
  t('sort base', () => ['a', 'A', 'á', 'b'].map((x) => ['a', 'A', 'á', 'b'].map((y) => x.localeCompare(y, 'en', { sensitivity: 'base' }))));
  t('sort accent', () => ['a', 'A', 'á', 'b'].map((x) => ['a', 'A', 'á', 'b'].map((y) => x.localeCompare(y, 'en', { sensitivity: 'accent' }))));
  t('sort case', () => ['a', 'A', 'á', 'b'].map((x) => ['a', 'A', 'á', 'b'].map((y) => x.localeCompare(y, 'en', { sensitivity: 'case' }))));
  t('sort upper', () => ['a', 'A', 'b', 'B'].sort(new Intl.Collator('en', { caseFirst: 'upper' }).compare));
  t('ignorePunct', () => 'a-b'.localeCompare('ab', 'en', { ignorePunctuation: true }));
  t('collator resolved', () => new Intl.Collator().resolvedOptions());
  const pr = new Intl.PluralRules('en-US');
  const po = new Intl.PluralRules('en-US', { type: 'ordinal' });
  t('plural', () => [0, 1, 2, 1.5, -1, 11, 21].map((n) => pr.select(n)));
  t('ordinal', () => [0, 1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111].map((n) => po.select(n)));
  t('plural resolved', () => pr.resolvedOptions());
  for (const style of ['long', 'short', 'narrow']) for (const numeric of ['always', 'auto']) {
    const rtf = new Intl.RelativeTimeFormat('en', { style, numeric });
    t('rtf ' + style + numeric, () => [-2, -1, 0, 1, 2, 1000, 1.5].flatMap((v) => ['year', 'quarter', 'months', 'week', 'day', 'hours', 'minute', 'second'].map((u) => rtf.format(v, u))));
  }
  t('rtf parts', () => new Intl.RelativeTimeFormat('en').formatToParts(-1234, 'day'));
  for (const type of ['conjunction', 'disjunction', 'unit']) for (const style of ['long', 'short', 'narrow']) {
    const lf = new Intl.ListFormat('en', { type, style });
    t('lf ' + type + style, () => [[], ['a'], ['a', 'b'], ['a', 'b', 'c'], ['a', 'b', 'c', 'd']].map((l) => lf.format(l)));
  }
  t('canonical', () => Intl.getCanonicalLocales(['EN-us', 'zh-hant-tw', 'de']));
  t('badlocale', () => Intl.getCanonicalLocales('not a locale'));
  t('supported', () => Intl.NumberFormat.supportedLocalesOf(['en-GB', 'fr']));
  t('tag', () => Object.prototype.toString.call(Intl));
  t('tag2', () => Object.prototype.toString.call(new Intl.NumberFormat()));
  t('instanceof', () => new Intl.NumberFormat() instanceof Intl.NumberFormat);
  t('nonew instanceof', () => Intl.DateTimeFormat() instanceof Intl.DateTimeFormat);
  t('names', () => [Intl.NumberFormat.name, (1).toLocaleString.name, ''.localeCompare.name, new Date().toLocaleDateString.name]);
  t('num toLocale', () => [(1234.5).toLocaleString(), (1234.5).toLocaleString('en-US', { style: 'currency', currency: 'USD' }), (0.256).toLocaleString(undefined, { style: 'percent' })]);
  t('arr toLocale', () => [1234, 5678.9].toLocaleString());
  t('keys', () => Object.keys(Intl));
  t('pr type', () => new Intl.PluralRules('en', { type: 'bogus' }));
  return out;
}
