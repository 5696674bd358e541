// expect: OK "set"
export function run() { globalThis.secret = 'tenant-a-secret'; globalThis.sharedCache = { token: 'abc' }; return 'set'; }
