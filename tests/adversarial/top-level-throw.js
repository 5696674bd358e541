// expect: FUNCTION_ERROR "thrown while loading"
throw new Error('thrown while loading');
export function run() { return 'unreachable'; }
