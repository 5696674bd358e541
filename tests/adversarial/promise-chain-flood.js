// expect: TIME_OUT
export async function run() {
  const step = () => Promise.resolve().then(step);
  step();
  await new Promise((r) => setTimeout(r, 10000));
}
