// expect: OK "done"
export function run() { console.log('x'.repeat(8 * 1024 * 1024)); return 'done'; }
