// expect: FUNCTION_ERROR "the sandbox has no network"
export function run() { return require('node:https').get('https://example.com'); }
