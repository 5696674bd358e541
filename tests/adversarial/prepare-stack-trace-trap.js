// expect: FUNCTION_ERROR "boom"
// The formatted stack is an object whose conversion to a string never ends:
// the sandbox must not call into it while it reports the error.
export function run() {
  Error.prepareStackTrace = () => {
    const trap = {};
    Object.defineProperty(trap, 'toString', { get() { for (;;) {} } });
    return trap;
  };
  throw new Error('boom');
}
