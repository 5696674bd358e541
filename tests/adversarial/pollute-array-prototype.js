// expect: OK 1
export function run() { Array.prototype.push = function () { return 'owned'; }; Array.prototype.leak = 1; return [].leak; }
