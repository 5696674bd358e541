// expect: FUNCTION_OUT_OF_MEMORY|FUNCTION_ERROR|TIME_OUT
// A number with millions of digits, grouped and split into parts.
export function run() {
  const parts = new Intl.NumberFormat('en-US').formatToParts(10n ** 2_000_000n);
  return parts.length;
}
