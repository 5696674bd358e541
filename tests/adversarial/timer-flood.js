// expect: FUNCTION_ERROR "too many timers"
export function run() { for (let i = 0; i < 20000; i++) setTimeout(() => {}, 1e6); }
