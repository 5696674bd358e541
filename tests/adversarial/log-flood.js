// expect: OK "done"
export function run() { for (let i = 0; i < 100000; i++) console.log('line', i); return 'done'; }
