// node:assert/strict — the same object as assert.strict.
import { strict } from 'builtin:node:assert';

export const {
  AssertionError, ok, equal, notEqual, strictEqual, notStrictEqual, deepEqual, notDeepEqual, deepStrictEqual,
  notDeepStrictEqual, fail, match, doesNotMatch, ifError, throws, doesNotThrow, rejects, doesNotReject,
} = strict;
export { strict };
export default strict;
