// @forge/events in Kiln: every name @forge/events exports, with Forge's
// shapes, checks and errors, so that apps link, build their queues at the
// top level, tell Forge's errors apart and answer an event with
// `InvocationError` or `QueueResponse`.
//
// Supported, over the server's `queue.*` host calls: `Queue.push`,
// `Queue.getJob`, `Queue.getStats`, `Queue.cancel`, `JobProgress.getStats`
// and `JobProgress.cancel`. The server's refusals arrive as the error class
// Forge throws for them (its code names the class); anything else is an
// `InternalServerError` carrying the code as `errorCode`.
//
// One module serves both push APIs Forge has had, because apps install
// either and Kiln maps every version to this module. Which one a push
// means is decided by the queue's consumer module, which only the server
// knows: a `function` consumer is the @forge/events 2+ form, whose
// `push(event | event[])` takes `{ body, delayInSeconds?, concurrency? }`
// (an object body, a delay of 0 to 900 s) and answers `{ jobId }`; a
// `resolver` consumer is the 0.x/1.x form (Forge's 2.0 upgrade guide: "Forge
// resolvers are no longer used" by 2.x consumers), whose `push(payload |
// payload[], { delayInSeconds }?)` takes any JSON payloads, hands each to the
// resolver as its `payload`, and answers `'<queue>#<jobId>'`, the id 1.x's
// `getJob` takes and whose `getStats()`/`cancel()` answer a response to
// read with `.json()`. So the checks both forms make alike (at least one
// event, at most 50, at most 200 KB of JSON) are made here before anything
// is sent, and the rest by the server, which knows the form.
//
// Throwing NotSupportedError until Kiln's server has app events:
// `appEvents.publish`.
import { hostCall } from 'kiln:host';
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
// Thrown by Forge's push, though @forge/events does not export it.
class InvalidPayloadError extends EventsError {}
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
const MAXIMUM_EVENTS = 50;
const MAXIMUM_PAYLOAD_SIZE_KB = 200;

const TEXT = {
  invalidQueueName: 'Queue names can only contain alphanumeric characters, dashes and underscores.',
  maxEventsAllowed: (n) => `This push contains more than the ${n} events allowed.`,
  maxPayloadAllowed: (kb) => `The maximum payload size is ${kb}KB.`,
  noEventsPushed: 'No events pushed.',
  jobIdEmpty: 'jobId cannot be empty.',
};

// The server names the error class in the reply's code.
const ERRORS = {
  InvalidQueueNameError,
  InvalidPayloadError,
  TooManyEventsError,
  PayloadTooBigError,
  NoEventsToPushError,
  RateLimitError,
  JobDoesNotExistError,
  InvalidPushSettingsError,
  InvocationLimitReachedError,
};

async function call(capability, args) {
  try {
    return await hostCall(capability, args);
  } catch (e) {
    const code = e && typeof e.code === 'string' ? e.code : undefined;
    const message = e && e.message ? e.message : 'Unexpected error in @forge/events';
    const Known = code !== undefined && Object.prototype.hasOwnProperty.call(ERRORS, code) ? ERRORS[code] : null;
    throw Known ? new Known(message) : new InternalServerError(message, code);
  }
}

function validateQueueKey(key) {
  if (!key || !QUEUE_KEY.test(key)) throw new InvalidQueueNameError(TEXT.invalidQueueName);
}

// UTF-8 length of a string, as Buffer.byteLength counts it (a lone
// surrogate is the three bytes of U+FFFD).
function utf8Length(text) {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c < 0xdc00 && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next < 0xe000) {
        n += 4;
        i++;
      } else n += 3;
    } else n += 3;
  }
  return n;
}

// The checks every version of @forge/events makes alike; the server makes
// the rest (see the top of this file). A push over 200 KB is refused here
// whatever else is wrong with it, so it is never sent.
function validatePushEvents(arg) {
  const events = Array.isArray(arg) ? arg : [arg];
  if (events.length === 0) throw new NoEventsToPushError(TEXT.noEventsPushed);
  if (events.length > MAXIMUM_EVENTS) throw new TooManyEventsError(TEXT.maxEventsAllowed(MAXIMUM_EVENTS));
  const json = JSON.stringify(events);
  if (utf8Length(json) / 1024 > MAXIMUM_PAYLOAD_SIZE_KB) {
    throw new PayloadTooBigError(TEXT.maxPayloadAllowed(MAXIMUM_PAYLOAD_SIZE_KB));
  }
  // What the server gets: the events' JSON form, as Forge's client sends
  // it (dates as strings, functions and undefined dropped).
  return JSON.parse(json);
}

// 1.x's `getStats()` and `cancel()` answer the HTTP response itself.
function legacyResponse(status, value) {
  const text = value === undefined ? '' : JSON.stringify(value);
  return {
    ok: true,
    status,
    statusText: status === 200 ? 'OK' : 'No Content',
    json: async () => JSON.parse(text),
    text: async () => text,
  };
}

export class JobProgress {
  // `legacy`: a 1.x job, whose id is '<queue>#<jobId>'.
  constructor(queueParams, id, legacy = false) {
    this.queueParams = queueParams;
    this.id = id;
    this.legacy = legacy;
  }

  async getStats() {
    const [queue, jobId] = this.#checked();
    const { success, inProgress, failed } = await call('queue.job.stats', { queue, jobId });
    const stats = { success, inProgress, failed };
    return this.legacy ? legacyResponse(200, stats) : stats;
  }

  async cancel() {
    const [queue, jobId] = this.#checked();
    await call('queue.job.cancel', { queue, jobId });
    if (this.legacy) return legacyResponse(204);
  }

  // Forge checks the job id, then the queue's name, before asking.
  #checked() {
    const [queue, jobId] = this.legacy
      ? String(this.id).split('#')
      : [this.queueParams && this.queueParams.key, this.id];
    if (!jobId) throw new JobDoesNotExistError(TEXT.jobIdEmpty);
    validateQueueKey(queue);
    return [queue, jobId];
  }
}

export class Queue {
  constructor(queueParams) {
    this.queueParams = queueParams;
    validateQueueKey(queueParams && queueParams.key);
  }

  // `settings` is 1.x's `{ delayInSeconds }`; 2+ has no second argument
  // and the server ignores it for them.
  async push(events, settings) {
    const queue = this.queueParams.key;
    const args = { queue, events: validatePushEvents(events) };
    if (settings && settings.delayInSeconds !== undefined) args.delayInSeconds = settings.delayInSeconds;
    const { jobId, form } = await call('queue.push', args);
    return form === '1.x' ? `${queue}#${jobId}` : { jobId };
  }

  // A 1.x job id ('<queue>#<jobId>', what 1.x's push answers) names its
  // queue; a 2+ job id (a UUID) never has a '#'.
  getJob(jobId) {
    const legacy = typeof jobId === 'string' && jobId.includes('#');
    return new JobProgress(this.queueParams, jobId, legacy);
  }

  async cancel(jobId) {
    await this.getJob(jobId).cancel();
  }

  async getStats(jobId) {
    return this.getJob(jobId).getStats();
  }
}

// ---------------------------------------------------------------- app events

export const appEvents = { publish: rejects('@forge/events appEvents.publish') };
