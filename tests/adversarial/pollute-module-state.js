// expect: OK 1
let counter = 0;
export function run() { counter += 1; return counter; }
