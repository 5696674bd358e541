// expect: TIME_OUT
// Runs forever while the module loads, before any handler is called.
for (;;) {}
export function run() { return 'unreachable'; }
