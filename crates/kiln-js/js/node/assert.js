// node:assert — the default export is callable (assert(value) is assert.ok).
// Failures throw AssertionError with Node's code, actual, expected and
// operator; messages follow Node's wording without its diffs.
import { inspect, isDeepStrictEqual, isDeepLooseEqual } from 'builtin:node:util';

const show = (v) => inspect(v, { depth: 4 });

export class AssertionError extends Error {
  constructor(options = {}) {
    const { message, actual, expected, operator } = options;
    super(message === undefined ? `${show(actual)} ${operator} ${show(expected)}` : String(message));
    this.name = 'AssertionError';
    this.code = 'ERR_ASSERTION';
    this.actual = actual;
    this.expected = expected;
    this.operator = operator;
    this.generatedMessage = message === undefined;
  }
}

function fail_(actual, expected, message, operator, generated) {
  if (message instanceof Error) throw message;
  const err = new AssertionError({ actual, expected, operator, message: message === undefined ? generated : message });
  err.generatedMessage = message === undefined;
  throw err;
}

function innerOk(args, fnName) {
  const [value, message] = args;
  if (args.length === 0) {
    fail_(undefined, true, undefined, '==', `No value argument passed to \`assert.${fnName}()\``);
  }
  if (!value) fail_(value, true, message, '==', 'The expression evaluated to a falsy value');
}

export function ok(...args) {
  innerOk(args, 'ok');
}

export function equal(actual, expected, message) {
  if (!(actual == expected || (actual !== actual && expected !== expected))) {
    fail_(actual, expected, message, '==', `${show(actual)} == ${show(expected)}`);
  }
}

export function notEqual(actual, expected, message) {
  if (actual == expected || (actual !== actual && expected !== expected)) {
    fail_(actual, expected, message, '!=', `${show(actual)} != ${show(expected)}`);
  }
}

export function strictEqual(actual, expected, message) {
  if (!Object.is(actual, expected)) {
    fail_(actual, expected, message, 'strictEqual', `Expected values to be strictly equal:\n\n${show(actual)} !== ${show(expected)}\n`);
  }
}

export function notStrictEqual(actual, expected, message) {
  if (Object.is(actual, expected)) {
    fail_(actual, expected, message, 'notStrictEqual', `Expected "actual" to be strictly unequal to: ${show(expected)}`);
  }
}

export function deepEqual(actual, expected, message) {
  if (!isDeepLooseEqual(actual, expected)) {
    fail_(actual, expected, message, 'deepEqual', `Expected values to be loosely deep-equal:\n\n${show(actual)}\n\nshould loosely deep-equal\n\n${show(expected)}`);
  }
}

export function notDeepEqual(actual, expected, message) {
  if (isDeepLooseEqual(actual, expected)) {
    fail_(actual, expected, message, 'notDeepEqual', `"actual" deepEqual "expected": ${show(actual)}`);
  }
}

export function deepStrictEqual(actual, expected, message) {
  if (!isDeepStrictEqual(actual, expected)) {
    fail_(actual, expected, message, 'deepStrictEqual', `Expected values to be strictly deep-equal:\n${show(actual)}\n\nshould equal\n\n${show(expected)}`);
  }
}

export function notDeepStrictEqual(actual, expected, message) {
  if (isDeepStrictEqual(actual, expected)) {
    fail_(actual, expected, message, 'notDeepStrictEqual', `Expected "actual" not to be strictly deep-equal to: ${show(expected)}`);
  }
}

export function fail(message = 'Failed') {
  if (message instanceof Error) throw message;
  const err = new AssertionError({ message, operator: 'fail' });
  err.generatedMessage = arguments.length === 0;
  throw err;
}

export function match(string, regexp, message) {
  if (typeof string !== 'string' || !regexp.test(string)) {
    fail_(string, regexp, message, 'match', `The input did not match the regular expression ${regexp}. Input:\n\n${show(string)}\n`);
  }
}

export function doesNotMatch(string, regexp, message) {
  if (typeof string !== 'string' || regexp.test(string)) {
    fail_(string, regexp, message, 'doesNotMatch', `The input was expected to not match the regular expression ${regexp}. Input:\n\n${show(string)}\n`);
  }
}

export function ifError(value) {
  if (value !== null && value !== undefined) {
    let message = 'ifError got unwanted exception: ';
    message += typeof value === 'object' && typeof value.message === 'string' ? value.message : show(value);
    const err = new AssertionError({ actual: value, expected: null, operator: 'ifError', message });
    err.generatedMessage = true;
    throw err;
  }
}

const NO_EXCEPTION = Symbol('no exception');

// Whether `actual` (what was thrown) matches `expected` as Node defines it.
function matches(actual, expected, message, fnName) {
  if (expected === undefined) return;
  if (typeof expected === 'function') {
    if (expected.prototype !== undefined && actual instanceof expected) return;
    if (Error.isPrototypeOf(expected) || expected === Error) {
      fail_(actual, expected, message, fnName, `The error is expected to be an instance of "${expected.name}". Received "${actual?.constructor?.name}"`);
    }
    if (expected.call({}, actual) === true) return;
    fail_(actual, expected, message, fnName, `The ${expected.name ? `"${expected.name}" ` : ''}validation function is expected to return "true". Received ${show(actual)}`);
  }
  if (expected instanceof RegExp) {
    if (expected.test(String(actual))) return;
    fail_(actual, expected, message, fnName, `The input did not match the regular expression ${expected}. Input:\n\n${show(String(actual))}\n`);
  }
  if (typeof expected === 'object' && expected !== null) {
    for (const key of Object.keys(expected)) {
      const want = expected[key];
      const got = actual == null ? undefined : actual[key];
      const ok = want instanceof RegExp && typeof got === 'string' ? want.test(got) : isDeepStrictEqual(got, want);
      if (!ok) {
        fail_(actual, expected, message, fnName, `Expected values to be strictly deep-equal:\n${key}: ${show(got)}\n\nshould equal\n\n${key}: ${show(want)}`);
      }
    }
  }
}

function splitArgs(expected, message) {
  return typeof expected === 'string' ? [undefined, expected] : [expected, message];
}

export function throws(fn, expectedArg, messageArg) {
  if (typeof fn !== 'function') throw new TypeError('The "fn" argument must be of type function.');
  const [expected, message] = splitArgs(expectedArg, messageArg);
  let thrown = NO_EXCEPTION;
  try {
    fn();
  } catch (e) {
    thrown = e;
  }
  if (thrown === NO_EXCEPTION) {
    fail_(undefined, expected, message, 'throws', `Missing expected exception${expected?.name ? ` (${expected.name})` : ''}${message ? `: ${message}` : '.'}`);
  }
  matches(thrown, expected, message, 'throws');
}

export function doesNotThrow(fn, expectedArg, messageArg) {
  const [, message] = splitArgs(expectedArg, messageArg);
  try {
    fn();
  } catch (e) {
    fail_(e, expectedArg, undefined, 'doesNotThrow', `Got unwanted exception${message ? `: ${message}` : '.'}\nActual message: "${e?.message}"`);
  }
}

export async function rejects(promiseFn, expectedArg, messageArg) {
  const [expected, message] = splitArgs(expectedArg, messageArg);
  let thrown = NO_EXCEPTION;
  try {
    await (typeof promiseFn === 'function' ? promiseFn() : promiseFn);
  } catch (e) {
    thrown = e;
  }
  if (thrown === NO_EXCEPTION) {
    fail_(undefined, expected, message, 'rejects', `Missing expected rejection${expected?.name ? ` (${expected.name})` : ''}${message ? `: ${message}` : '.'}`);
  }
  matches(thrown, expected, message, 'rejects');
}

export async function doesNotReject(promiseFn, expectedArg, messageArg) {
  const [, message] = splitArgs(expectedArg, messageArg);
  try {
    await (typeof promiseFn === 'function' ? promiseFn() : promiseFn);
  } catch (e) {
    fail_(e, expectedArg, undefined, 'doesNotReject', `Got unwanted rejection${message ? `: ${message}` : '.'}\nActual message: "${e?.message}"`);
  }
}

function attach(target) {
  Object.assign(target, {
    AssertionError, ok, equal, notEqual, strictEqual, notStrictEqual, deepEqual, notDeepEqual,
    deepStrictEqual, notDeepStrictEqual, fail, match, doesNotMatch, ifError, throws, doesNotThrow,
    rejects, doesNotReject,
  });
  return target;
}

const assert = attach(function assert(...args) { innerOk(args, 'ok'); });

// assert.strict: the legacy loose comparisons replaced by the strict ones.
export const strict = attach(function strict(...args) { innerOk(args, 'ok'); });
Object.assign(strict, {
  equal: strictEqual,
  notEqual: notStrictEqual,
  deepEqual: deepStrictEqual,
  notDeepEqual: notDeepStrictEqual,
});
assert.strict = strict;
strict.strict = strict;

export default assert;
