// expect: TIME_OUT
export function run() { [3, 1, 2].sort(() => { for (;;) {} }); }
