// expect: FUNCTION_OUT_OF_MEMORY
export function run() { const o = {}; for (let i = 0; ; i++) o['key' + i] = i; }
