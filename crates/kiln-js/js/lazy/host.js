// Host calls: ask the server for something and settle with its reply.
// Loaded by the first module that makes one, so invocations that make none
// do not pay for it.

import { hooks } from 'kiln:prelude';
import { native } from 'kiln:natives';

const pendingCalls = new Map();

// Ask the server for something; the promise settles with its reply. Kiln's
// own modules import it from here rather than through the global, which app
// code can replace.
export function hostCall(capability, args) {
  return new Promise((resolve, reject) => {
    const id = native.hostCall(String(capability), JSON.stringify(args === undefined ? null : args));
    pendingCalls.set(id, { resolve, reject });
  });
}

// Called by the engine with a host reply.
hooks.settleCall = function settleCall(id, ok, json, code, message) {
  const call = pendingCalls.get(id);
  if (!call) return;
  pendingCalls.delete(id);
  if (ok) {
    call.resolve(JSON.parse(json));
  } else {
    const error = new Error(message);
    error.code = code;
    call.reject(error);
  }
};
