// expect: FUNCTION_ERROR "stack"
function a(n) { return b(n + 1); }
function b(n) { return a(n + 1); }
export function run() { return a(0); }
