// expect: FUNCTION_ERROR "larger than"
export function run() { return 'x'.repeat(6 * 1024 * 1024); }
