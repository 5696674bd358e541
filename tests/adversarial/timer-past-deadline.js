// expect: TIME_OUT
export async function run() { await new Promise((r) => setTimeout(r, 1e9)); }
