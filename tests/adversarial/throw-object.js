// expect: FUNCTION_ERROR "uncaught object"
export function run() { throw { code: 1 }; }
