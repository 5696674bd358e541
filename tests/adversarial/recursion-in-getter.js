// expect: FUNCTION_ERROR "stack"
export function run() { const o = { get x() { return this.x; } }; return o.x; }
