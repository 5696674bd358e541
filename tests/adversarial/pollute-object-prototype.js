// expect: OK true
export function run() { Object.prototype.isAdmin = true; return ({}).isAdmin; }
