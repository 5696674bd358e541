// expect: FUNCTION_ERROR "RangeError: rejected"
export async function run() { await Promise.reject(new RangeError('rejected')); }
