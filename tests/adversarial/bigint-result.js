// expect: FUNCTION_ERROR "BigInt"
export function run() { return { n: 10n }; }
