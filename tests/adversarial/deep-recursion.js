// expect: FUNCTION_ERROR "stack"
const f = (n) => f(n + 1) + 1;
export function run() { return f(0); }
