// expect: FUNCTION_ERROR "Map or Set"
export function run() { return new Map([[1, 2]]); }
