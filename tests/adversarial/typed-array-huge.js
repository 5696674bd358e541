// expect: FUNCTION_OUT_OF_MEMORY|FUNCTION_ERROR
export function run() { return new Uint8Array(1e9).length; }
