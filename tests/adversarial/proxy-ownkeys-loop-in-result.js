// expect: TIME_OUT
export function run() { return new Proxy({}, { ownKeys() { for (;;) {} } }); }
