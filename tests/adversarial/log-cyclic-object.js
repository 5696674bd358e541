// expect: OK "done"
export function run() { const o = { a: 1 }; o.o = o; console.log(o, [o], new Error('e')); return 'done'; }
