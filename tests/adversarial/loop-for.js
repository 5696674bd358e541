// expect: TIME_OUT
export function run() { for (;;) {} }
