// expect: FUNCTION_OUT_OF_MEMORY|FUNCTION_ERROR
export function run() { return 'x'.repeat(2 ** 30).length; }
