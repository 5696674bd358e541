// expect: FUNCTION_OUT_OF_MEMORY
export function run() { const a = []; for (;;) a.push({ x: 1, y: [1, 2, 3] }); }
