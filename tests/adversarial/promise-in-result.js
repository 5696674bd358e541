// expect: FUNCTION_ERROR "a Promise"
export function run() { return { later: Promise.resolve(1) }; }
