// expect: FUNCTION_ERROR "stack"
export function run() { const o = { toString() { return '' + o; } }; return '' + o; }
