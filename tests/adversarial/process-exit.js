// expect: FUNCTION_ERROR "process is not defined"
export function run() { process.exit(1); }
