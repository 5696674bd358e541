// expect: FUNCTION_ERROR "did not finish loading"
await new Promise(() => {});
export function run() { return 'unreachable'; }
