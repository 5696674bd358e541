// expect: FUNCTION_OUT_OF_MEMORY
export function run() { const a = []; for (;;) a.push(new Array(100000).fill(1)); }
