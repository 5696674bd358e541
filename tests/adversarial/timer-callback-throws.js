// expect: FUNCTION_ERROR "uncaught exception in a timer callback"
export async function run() {
  setTimeout(() => { throw new Error('boom'); }, 0);
  await new Promise((r) => setTimeout(r, 100));
}
