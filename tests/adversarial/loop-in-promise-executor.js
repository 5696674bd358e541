// expect: TIME_OUT
export async function run() { await new Promise(() => { for (;;) {} }); }
