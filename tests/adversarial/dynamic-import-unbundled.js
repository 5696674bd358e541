// expect: FUNCTION_ERROR "was not bundled"
export async function run() { const name = ['s', 't', 'd'].join(''); const m = await import(name); return typeof m; }
