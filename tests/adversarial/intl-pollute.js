// expect: OK "patched"
// Kiln's Intl and the locale methods replaced in one invocation must be
// Kiln's again in the next (the canary formats and compares).
export function run() {
  Number.prototype.toLocaleString = () => 'pwned';
  String.prototype.localeCompare = () => 0;
  Intl.NumberFormat.prototype.formatToParts = () => [{ type: 'literal', value: 'pwned' }];
  Object.defineProperty(Intl, 'NumberFormat', { value: function () { return { format: () => 'pwned' }; } });
  return (1).toLocaleString() === 'pwned' && new Intl.NumberFormat().format(1) === 'pwned' ? 'patched' : 'not patched';
}
