// expect: FUNCTION_ERROR "cannot start processes or threads"
export function run() { const { Worker } = require('worker_threads'); return new Worker('x'); }
