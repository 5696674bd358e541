// expect: OK "frozen"
export function run() { Object.freeze(Object.prototype); Object.freeze(Array.prototype); return 'frozen'; }
