// expect: FUNCTION_ERROR "'node:os' module"
export async function run() { const os = await import('os'); return os.hostname(); }
