// expect: TIME_OUT|FUNCTION_ERROR
export function run() {
  const e = new Error('x');
  Object.defineProperty(e, 'message', { get() { for (;;) {} } });
  throw e;
}
