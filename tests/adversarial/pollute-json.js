// expect: OK "hacked"
export function run() { JSON.parse = () => 'hacked'; JSON.stringify = () => 'hacked'; return JSON.parse('{}'); }
