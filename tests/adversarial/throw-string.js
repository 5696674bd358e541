// expect: FUNCTION_ERROR "uncaught \"nope\""
export function run() { throw 'nope'; }
