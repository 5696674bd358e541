// expect: FUNCTION_OUT_OF_MEMORY|FUNCTION_ERROR
export function run() { let s = 'x'; for (;;) s = s + s; }
