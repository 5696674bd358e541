// @forge/events in Kiln today: the names exist so apps link; pushing to a
// queue throws NotSupportedError until Kiln's queues are wired in.
import { unsupported, NotSupportedError } from 'builtin:kiln:unsupported';

export { NotSupportedError };
export class Queue {
  constructor({ key } = {}) { this.key = key; }
  push() { return unsupported('@forge/events Queue.push')(); }
  getJob() { return unsupported('@forge/events Queue.getJob')(); }
}
export const InvocationErrorCode = {
  FUNCTION_OUT_OF_MEMORY: 'FUNCTION_OUT_OF_MEMORY',
  TIME_OUT: 'TIME_OUT',
  PLATFORM_UNKNOWN_ERROR: 'PLATFORM_UNKNOWN_ERROR',
  PLATFORM_RATE_LIMITED: 'PLATFORM_RATE_LIMITED',
  UPSTREAM_RATE_LIMITED: 'UPSTREAM_RATE_LIMITED',
  RETRY_REQUEST: 'RETRY_REQUEST',
};
export class InvocationError {
  constructor(options = {}) { this.retryAfter = options.retryAfter; this.retryReason = options.retryReason; this.retryData = options.retryData; }
}
export const appEvents = { publish: unsupported('@forge/events appEvents.publish') };
