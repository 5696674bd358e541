// expect: TIME_OUT
// V8's stack-formatting hook, which QuickJS calls while an error is being
// made: a loop there runs inside the engine's own error path.
export function run() {
  Error.prepareStackTrace = () => { for (;;) {} };
  throw new Error('boom');
}
