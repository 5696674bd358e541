// expect: TIME_OUT
export async function run() {
  setTimeout(() => { for (;;) {} }, 0);
  await new Promise((r) => setTimeout(r, 5000));
}
