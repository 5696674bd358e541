// expect: TIME_OUT
export function run() { const end = Date.now() + 1e9; while (Date.now() < end) {} }
