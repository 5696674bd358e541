// expect: FUNCTION_ERROR "a function at result.toJSON"
export function run() { return { toJSON() { for (;;) {} } }; }
