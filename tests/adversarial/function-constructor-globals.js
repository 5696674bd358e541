// expect: OK {"std":"undefined","os":"undefined","require":"undefined","wasm":"undefined"}
export function run() { const g = new Function('return globalThis')(); return { std: typeof g.std, os: typeof g.os, require: typeof g.require, wasm: typeof g.WebAssembly }; }
