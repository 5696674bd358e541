// expect: FUNCTION_ERROR "Maximum call stack size exceeded"
// Twenty thousand nested maps through Kiln's own structuredClone.
export function run() {
  const root = new Map();
  let at = root;
  for (let i = 0; i < 2e4; i++) {
    const next = new Map();
    at.set('a', next);
    at = next;
  }
  return structuredClone(root).size;
}
