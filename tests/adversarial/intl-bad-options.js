// expect: FUNCTION_ERROR "Invalid time zone specified: ../../etc/localtime"
// Options that are out of range are refused; a time zone that looks like
// a path reads nothing (the database is compiled in).
export function run() {
  for (const bad of [{ maximumFractionDigits: 101 }, { minimumIntegerDigits: 0 }, { style: 'currency', currency: '$$$' }]) {
    try { new Intl.NumberFormat('en', bad); return 'accepted ' + JSON.stringify(bad); } catch (e) { if (!(e instanceof RangeError || e instanceof TypeError)) throw e; }
  }
  return new Date(0).toLocaleString('en-US', { timeZone: '../../etc/localtime' });
}
