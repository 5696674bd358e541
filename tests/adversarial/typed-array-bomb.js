// expect: FUNCTION_OUT_OF_MEMORY
export function run() { const a = []; for (;;) a.push(new Float64Array(1 << 16)); }
