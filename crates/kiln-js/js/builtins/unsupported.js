// Shared by Kiln's @forge/* modules for what Kiln does not implement yet:
// calling it throws a precise error instead of failing silently.
export class NotSupportedError extends Error {
  constructor(what) {
    super(`${what} is not supported by Kiln yet`);
    this.name = 'NotSupportedError';
    this.code = 'NOT_SUPPORTED';
  }
}

export const unsupported = (what) => {
  const fn = function () { throw new NotSupportedError(what); };
  Object.defineProperty(fn, 'name', { value: what });
  return fn;
};
