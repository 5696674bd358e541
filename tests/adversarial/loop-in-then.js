// expect: TIME_OUT
export async function run() {
  Promise.resolve().then(() => { for (;;) {} });
  await new Promise((r) => setTimeout(r, 50));
}
