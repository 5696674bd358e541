// expect: FUNCTION_OUT_OF_MEMORY
export function run() { const m = new Map(); for (let i = 0; ; i++) m.set(i, { i, pad: new Array(64).fill(i) }); }
