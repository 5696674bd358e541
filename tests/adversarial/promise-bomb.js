// expect: FUNCTION_OUT_OF_MEMORY
export function run() { const ps = []; for (;;) ps.push(new Promise(() => {})); }
