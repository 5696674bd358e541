// expect: TIME_OUT
export async function run() {
  const again = () => queueMicrotask(again);
  again();
  await new Promise(() => {});
}
