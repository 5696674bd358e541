// expect: FUNCTION_ERROR "deeper than"
export function run() { let x = {}; for (let i = 0; i < 200; i++) x = { x }; return x; }
