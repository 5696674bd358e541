// expect: TIME_OUT
export function run() { return { get x() { for (;;) {} } }; }
