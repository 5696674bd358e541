// expect: FUNCTION_ERROR "the sandbox has no network"
export function run() { const net = require('net'); return net.connect(80, '127.0.0.1'); }
