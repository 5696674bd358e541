// Currency and unit names for Intl.NumberFormat's currency and unit styles
// (see kiln:intl-base), loaded only by a format that uses one: a plain
// number does not read them.

export const CURRENCY_SYMBOLS = {
  USD: '$', EUR: '€', GBP: '£', JPY: '¥', CAD: 'CA$', AUD: 'A$', NZD: 'NZ$', HKD: 'HK$', MXN: 'MX$',
  BRL: 'R$', INR: '₹', CNY: 'CN¥', KRW: '₩', ILS: '₪', VND: '₫', TWD: 'NT$', PHP: '₱', XAF: 'FCFA',
  XOF: 'F\u202fCFA', XCD: 'EC$', XPF: 'CFPF',
};
export const NARROW_SYMBOLS = {
  USD: '$', EUR: '€', GBP: '£', JPY: '¥', CAD: '$', AUD: '$', NZD: '$', HKD: '$', MXN: '$', BRL: 'R$',
  INR: '₹', CNY: '¥', KRW: '₩', ILS: '₪', VND: '₫', TWD: '$', PHP: '₱', SGD: '$', CHF: 'CHF', SEK: 'kr',
  NOK: 'kr', DKK: 'kr', PLN: 'zł', RUB: '₽', TRY: '₺', UAH: '₴', ZAR: 'R', THB: '฿', NGN: '₦', ARS: '$',
  CLP: '$', COP: '$', CZK: 'Kč', HUF: 'Ft', IDR: 'Rp', MYR: 'RM', EGP: 'E£', KZT: '₸', GEL: '₾',
};
export const CURRENCY_NAMES = {
  USD: ['US dollar', 'US dollars'], EUR: ['euro', 'euros'], GBP: ['British pound', 'British pounds'],
  JPY: ['Japanese yen', 'Japanese yen'], CAD: ['Canadian dollar', 'Canadian dollars'],
  AUD: ['Australian dollar', 'Australian dollars'], CHF: ['Swiss franc', 'Swiss francs'],
  CNY: ['Chinese yuan', 'Chinese yuan'], INR: ['Indian rupee', 'Indian rupees'],
  SEK: ['Swedish krona', 'Swedish kronor'], NOK: ['Norwegian krone', 'Norwegian kroner'],
  DKK: ['Danish krone', 'Danish kroner'], PLN: ['Polish zloty', 'Polish zlotys'],
  BRL: ['Brazilian real', 'Brazilian reals'], MXN: ['Mexican peso', 'Mexican pesos'],
  NZD: ['New Zealand dollar', 'New Zealand dollars'], SGD: ['Singapore dollar', 'Singapore dollars'],
  HKD: ['Hong Kong dollar', 'Hong Kong dollars'], KRW: ['South Korean won', 'South Korean won'],
  ZAR: ['South African rand', 'South African rand'],
};
export const CURRENCY_DIGITS = {
  BIF: 0, CLP: 0, DJF: 0, GNF: 0, ISK: 0, JPY: 0, KMF: 0, KRW: 0, PYG: 0, RWF: 0, UGX: 0, UYI: 0,
  VND: 0, VUV: 0, XAF: 0, XOF: 0, XPF: 0, BHD: 3, IQD: 0, JOD: 3, KWD: 3, LYD: 3, OMR: 3, TND: 3,
};

// Units ICU calls sanctioned, with English short, narrow and long forms
// (singular, plural).
export const UNITS = {
  acre: [' ac', 'ac', ' acre', ' acres'], bit: [' bit', 'bit', ' bit', ' bits'], byte: [' byte', 'B', ' byte', ' bytes'],
  celsius: ['°C', '°C', ' degree Celsius', ' degrees Celsius'], centimeter: [' cm', 'cm', ' centimeter', ' centimeters'],
  day: [' day', 'd', ' day', ' days', ' days'], degree: [' deg', '°', ' degree', ' degrees'],
  fahrenheit: ['°F', '°', ' degree Fahrenheit', ' degrees Fahrenheit'], foot: [' ft', '′', ' foot', ' feet'],
  gigabit: [' Gb', 'Gb', ' gigabit', ' gigabits'], gigabyte: [' GB', 'GB', ' gigabyte', ' gigabytes'],
  gram: [' g', 'g', ' gram', ' grams'], hectare: [' ha', 'ha', ' hectare', ' hectares'],
  hour: [' hr', 'h', ' hour', ' hours'], inch: [' in', '″', ' inch', ' inches'],
  kilobit: [' kb', 'kb', ' kilobit', ' kilobits'], kilobyte: [' kB', 'kB', ' kilobyte', ' kilobytes'],
  kilogram: [' kg', 'kg', ' kilogram', ' kilograms'], kilometer: [' km', 'km', ' kilometer', ' kilometers'],
  liter: [' L', 'L', ' liter', ' liters'], megabit: [' Mb', 'Mb', ' megabit', ' megabits'],
  megabyte: [' MB', 'MB', ' megabyte', ' megabytes'], meter: [' m', 'm', ' meter', ' meters'],
  mile: [' mi', 'mi', ' mile', ' miles'], milliliter: [' mL', 'mL', ' milliliter', ' milliliters'],
  millimeter: [' mm', 'mm', ' millimeter', ' millimeters'], millisecond: [' ms', 'ms', ' millisecond', ' milliseconds'],
  minute: [' min', 'm', ' minute', ' minutes'], month: [' mth', 'm', ' month', ' months', ' mths'],
  ounce: [' oz', 'oz', ' ounce', ' ounces'], percent: ['%', '%', ' percent', ' percent'],
  petabyte: [' PB', 'PB', ' petabyte', ' petabytes'], pound: [' lb', 'lb', ' pound', ' pounds'],
  second: [' sec', 's', ' second', ' seconds'], stone: [' st', 'st', ' stone', ' stones'],
  terabit: [' Tb', 'Tb', ' terabit', ' terabits'], terabyte: [' TB', 'TB', ' terabyte', ' terabytes'],
  week: [' wk', 'w', ' week', ' weeks', ' wks'], yard: [' yd', 'yd', ' yard', ' yards'],
  year: [' yr', 'y', ' year', ' years', ' yrs'], microsecond: [' μs', 'μs', ' microsecond', ' microseconds'],
  nanosecond: [' ns', 'ns', ' nanosecond', ' nanoseconds'],
};

// Compound units English names as one: short, narrow, long plural, long singular.
export const COMPOUND_UNITS = {
  'kilometer-per-hour': ['km/h', 'km/h', 'kilometers per hour', 'kilometer per hour'],
  'mile-per-hour': ['mph', 'mph', 'miles per hour', 'mile per hour'],
  'meter-per-second': ['m/s', 'm/s', 'meters per second', 'meter per second'],
  'mile-per-gallon': ['mpg', 'mpg', 'miles per gallon', 'mile per gallon'],
  'liter-per-kilometer': ['L/km', 'L/km', 'liters per kilometer', 'liter per kilometer'],
};
