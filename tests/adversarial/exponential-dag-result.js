// expect: FUNCTION_ERROR "larger than"
export function run() { let x = ['leaf']; for (let i = 0; i < 40; i++) x = [x, x]; return x; }
