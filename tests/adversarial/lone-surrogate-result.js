// expect: OK {"k\ufffd":["\ufffd","x\ufffd","😀"],"m":"log \ufffd"}
// Unpaired surrogates in a result's property names and values (and in a
// console line) once made the worker send JSON the server refused as a
// protocol violation; they cross as U+FFFD, as TextEncoder writes them.
export function run() {
  const half = '😀'.slice(0, 1);
  console.log('log', half);
  return { ['k' + half]: [half, 'x' + '😀'.slice(1), '😀'], m: 'log \ufffd' };
}
