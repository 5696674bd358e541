// expect: FUNCTION_ERROR "can never settle"
export async function run() { await new Promise(() => {}); }
