// expect: TIME_OUT
export function run() { let i = 0; while (true) { i++; } }
