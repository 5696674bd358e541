// crypto, performance and DOMException. Loaded by the prelude the first time app code touches one of these
// globals, so invocations that never use them do not pay for them.
import { native } from 'kiln:natives';

// ---------------------------------------------------------------- crypto

const hex = (b) => (b < 16 ? '0' : '') + b.toString(16);
export const crypto = Object.freeze({
  getRandomValues(array) {
    if (!ArrayBuffer.isView(array)) {
      throw new TypeError('getRandomValues needs an integer typed array');
    }
    // DOMExceptions with the names the Web Crypto API gives, as Node throws.
    if (array instanceof Float32Array || array instanceof Float64Array || array instanceof DataView) {
      throw new DOMException('getRandomValues needs an integer typed array', 'TypeMismatchError');
    }
    if (array.byteLength > 65536) {
      throw new DOMException(`getRandomValues can fill at most 65536 bytes, not ${array.byteLength}`, 'QuotaExceededError');
    }
    const bytes = native.random(array.byteLength);
    new Uint8Array(array.buffer, array.byteOffset, array.byteLength).set(bytes);
    return array;
  },
  randomUUID() {
    const b = native.random(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = b.map(hex);
    return `${h.slice(0, 4).join('')}-${h.slice(4, 6).join('')}-${h.slice(6, 8).join('')}-${h.slice(8, 10).join('')}-${h.slice(10).join('')}`;
  },
});

// performance: milliseconds since this invocation's context was created.
const origin = Date.now();
const monotonic = native.monotonicMs;
const start = monotonic();
export const performance = Object.freeze({
  timeOrigin: origin,
  now: () => monotonic() - start,
  mark() {},
  measure() {},
  toJSON: () => ({ timeOrigin: origin }),
});

export class DOMException extends Error {
  constructor(message = '', name = 'Error') {
    super(message);
    this.name = name;
  }
}
