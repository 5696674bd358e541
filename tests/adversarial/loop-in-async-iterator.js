// expect: TIME_OUT
export async function run() {
  const it = { [Symbol.asyncIterator]() { return { next: async () => ({ done: false, value: 1 }) }; } };
  for await (const _ of it) {}
}
