// expect: FUNCTION_ERROR "must be a function"
export function run() { setTimeout('globalThis.x = 1', 0); }
