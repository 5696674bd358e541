// expect: FUNCTION_ERROR "trap"
export function run() { return new Proxy({ a: 1 }, { get() { throw new Error('trap'); } }); }
