// expect: FUNCTION_ERROR "boom"
// An 8 MB stack string: the error that reaches the server is cut to size.
export function run() {
  Error.stackTraceLimit = Infinity;
  Error.prepareStackTrace = () => 'x'.repeat(1 << 23);
  throw new Error('boom');
}
