// expect: FUNCTION_ERROR "'node:fs' module: app code has no file system"
export function run() { return require('fs').readFileSync('/etc/passwd', 'utf8'); }
