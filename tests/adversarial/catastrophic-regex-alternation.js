// expect: TIME_OUT
export function run() { return /^(a|aa)+$/.test('a'.repeat(60) + 'b'); }
