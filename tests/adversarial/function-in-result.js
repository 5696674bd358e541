// expect: FUNCTION_ERROR "a function at result.callback"
export function run() { return { callback() {} }; }
