// expect: OK "patched"
export function run() { const orig = Promise.prototype.then; Promise.prototype.then = function (a, b) { globalThis.seen = true; return orig.call(this, a, b); }; return 'patched'; }
