// expect: FUNCTION_ERROR "cannot block"
// Atomics.wait would park the worker on a futex where neither the engine's
// interrupt nor its deadline can reach it; the runtime refuses to block.
export function run() {
  const cell = new Int32Array(new SharedArrayBuffer(4));
  return Atomics.wait(cell, 0, 0);
}
