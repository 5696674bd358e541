// expect: FUNCTION_ERROR
export function run() { return JSON.parse('['.repeat(1000000) + ']'.repeat(1000000)); }
