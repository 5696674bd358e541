// expect: FUNCTION_ERROR "process.exit(1) is not supported by Kiln"
export function run() { process.exit(1); }
