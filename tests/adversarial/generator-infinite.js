// expect: TIME_OUT
export function run() { const g = (function* () { while (true) yield 1; })(); for (const _ of g) {} }
