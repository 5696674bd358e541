// expect: FUNCTION_ERROR "'node:child_process' module"
import cp from 'child_process';
export function run() { return cp.execSync('id').toString(); }
