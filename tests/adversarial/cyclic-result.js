// expect: FUNCTION_ERROR "cycle at result.self"
export function run() { const o = {}; o.self = o; return o; }
