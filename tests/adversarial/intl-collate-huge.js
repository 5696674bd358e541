// expect: FUNCTION_OUT_OF_MEMORY|FUNCTION_ERROR|TIME_OUT
// Collation builds an element per character: a huge string must hit the
// memory limit or the deadline, not take the worker down.
export function run() {
  const s = 'é'.repeat(8_000_000);
  return s.localeCompare(s + 'a');
}
