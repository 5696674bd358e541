// Exceptions nothing can catch: a queueMicrotask callback's, an event
// listener's. They end the invocation with FUNCTION_ERROR, as a timer
// callback's does and as Node ends the process; the engine's own
// queueMicrotask drops them silently. Loaded on the first use of
// queueMicrotask (process.nextTick and events use it too).

import { native } from 'kiln:prelude';

// Record the first uncaught exception; the engine fails the invocation with
// it once the current job is done.
export function reportUncaught(where, error) {
  let text;
  try {
    text = native.importSync('kiln:format').format([error]);
  } catch {
    text = 'an error that cannot be shown';
  }
  native.log(9, `uncaught exception in ${where}: ${text}`);
}

const enqueue = native.queueMicrotask;

export function queueMicrotask(callback) {
  if (typeof callback !== 'function') throw new TypeError('The "callback" argument must be of type function');
  enqueue(() => {
    try {
      callback();
    } catch (error) {
      reportUncaught('a queueMicrotask callback', error);
    }
  });
}
