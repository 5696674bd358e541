// expect: TIME_OUT
export async function run() {
  let n = 0;
  setInterval(() => { n++; }, 0);
  await new Promise(() => setTimeout(() => {}, 1e9));
}
