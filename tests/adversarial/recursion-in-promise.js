// expect: FUNCTION_ERROR "stack"
export async function run() { const f = async (n) => (await f(n + 1)) + 1; return f(0); }
