// expect: FUNCTION_OUT_OF_MEMORY
export function run() { let f = () => 0; const keep = []; for (;;) { const big = new Array(10000).fill(f); f = () => big; keep.push(f); } }
