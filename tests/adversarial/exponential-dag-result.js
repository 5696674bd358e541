// expect: FUNCTION_ERROR|TIME_OUT
export function run() { let x = ['leaf']; for (let i = 0; i < 40; i++) x = [x, x]; return x; }
