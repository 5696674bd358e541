// @forge/events in Kiln: every name @forge/events 3 exports, so that apps
// link and can build their queues at the top level, tell Forge's errors
// apart and answer an event with `InvocationError` or `QueueResponse`.
//
// Pure JavaScript, with Forge's shapes: `Queue` (its key checked as Forge
// checks it), `InvocationError` (which, as in Forge, *returns* its JSON
// form `{ _retry: true, retryOptions }`), `QueueResponse`,
// `InvocationErrorCode`, and the error classes.
//
// Throwing NotSupportedError until Kiln's server has queues and app events:
// `Queue.push`, `Queue.cancel`, `Queue.getStats`, `JobProgress.getStats`,
// `JobProgress.cancel` and `appEvents.publish`.
import { unsupported, NotSupportedError } from 'builtin:kiln:unsupported';

export { NotSupportedError };

// Forge's methods here are async: what Kiln lacks is a rejected promise,
// so `.catch()` on the call sees it as it would see Forge's errors.
const rejects = (what) => {
  const refuse = unsupported(what);
  return async () => refuse();
};

// ---------------------------------------------------------------- errors

class EventsError extends Error {}

export class InvalidPushSettingsError extends EventsError {}
export class InvalidQueueNameError extends EventsError {}
export class TooManyEventsError extends EventsError {}
export class PayloadTooBigError extends EventsError {}
export class NoEventsToPushError extends EventsError {}
export class RateLimitError extends EventsError {}
export class PartialSuccessError extends EventsError {
  constructor(message, result, failedEvents) {
    super(message);
    this.result = result;
    this.failedEvents = failedEvents;
  }
}
export class InternalServerError extends EventsError {
  constructor(message, errorCode, details) {
    super(message);
    this.errorCode = errorCode;
    this.details = details;
  }
}
export class JobDoesNotExistError extends EventsError {}
export class InvocationLimitReachedError extends EventsError {}

// ---------------------------------------------------------------- answers

export const InvocationErrorCode = Object.freeze({
  FUNCTION_OUT_OF_MEMORY: 'FUNCTION_OUT_OF_MEMORY',
  FUNCTION_TIME_OUT: 'FUNCTION_TIME_OUT',
  FUNCTION_PLATFORM_UNKNOWN_ERROR: 'FUNCTION_PLATFORM_UNKNOWN_ERROR',
  FUNCTION_PLATFORM_RATE_LIMITED: 'FUNCTION_PLATFORM_RATE_LIMITED',
  FUNCTION_UPSTREAM_RATE_LIMITED: 'FUNCTION_UPSTREAM_RATE_LIMITED',
  FUNCTION_RETRY_REQUEST: 'FUNCTION_RETRY_REQUEST',
});

// Forge's smallest retry delay, in seconds.
const MIN_RETRY_AFTER = 1;

class Response {
  constructor(retry) {
    this._retry = retry;
  }
}

export class QueueResponse extends Response {
  constructor() {
    super(false);
  }

  retry() {
    this._retry = true;
  }
}

// A consumer or trigger returns this to ask for the event again. Like
// Forge's, the constructor returns the plain `{ _retry, retryOptions }`
// object, which is what the platform reads from the function's result.
export class InvocationError extends Response {
  constructor(
    retryOptions = { retryAfter: MIN_RETRY_AFTER, retryReason: InvocationErrorCode.FUNCTION_RETRY_REQUEST },
  ) {
    super(true);
    this.retryOptions = retryOptions;
    if (this.retryOptions.retryAfter !== undefined && this.retryOptions.retryAfter <= 0) {
      this.retryOptions.retryAfter = MIN_RETRY_AFTER;
    }
    return this.toJSON();
  }

  toJSON() {
    return { _retry: this._retry, retryOptions: this.retryOptions };
  }
}

// ---------------------------------------------------------------- queues

const QUEUE_KEY = /^[a-zA-Z0-9-_]+$/;

export class JobProgress {
  constructor(queueParams, id) {
    this.queueParams = queueParams;
    this.id = id;
  }

  getStats() {
    return rejects('@forge/events JobProgress.getStats')();
  }

  cancel() {
    return rejects('@forge/events JobProgress.cancel')();
  }
}

export class Queue {
  constructor(queueParams) {
    this.queueParams = queueParams;
    const key = queueParams && queueParams.key;
    if (!key || !QUEUE_KEY.test(key)) {
      throw new InvalidQueueNameError('Queue names can only contain alphanumeric characters, dashes and underscores.');
    }
  }

  push() {
    return rejects('@forge/events Queue.push')();
  }

  getJob(jobId) {
    return new JobProgress(this.queueParams, jobId);
  }

  cancel() {
    return rejects('@forge/events Queue.cancel')();
  }

  getStats() {
    return rejects('@forge/events Queue.getStats')();
  }
}

// ---------------------------------------------------------------- app events

export const appEvents = { publish: rejects('@forge/events appEvents.publish') };
