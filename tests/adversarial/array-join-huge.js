// expect: FUNCTION_OUT_OF_MEMORY|FUNCTION_ERROR|TIME_OUT
export function run() { return new Array(1e8).join('xx').length; }
