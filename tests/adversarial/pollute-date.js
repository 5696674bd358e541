// expect: OK 0
export function run() { Date.now = () => 0; return Date.now(); }
