// @forge/events in Kiln: every name @forge/events 3 exports, with Forge's
// shapes, checks and errors, so that apps link, build their queues at the
// top level, tell Forge's errors apart and answer an event with
// `InvocationError` or `QueueResponse`.
//
// Supported, over the server's `queue.*` host calls: `Queue.push(event |
// event[])` (an event is `{ body, delayInSeconds?, concurrency? }`; checked
// here as @forge/events 3 checks it — at most 50 events, 200 KB together,
// an object body, a delay of 0 to 900 s — and again by the server, which
// also decides which installation the events belong to), `Queue.getJob`,
// `Queue.getStats`, `Queue.cancel`, `JobProgress.getStats` and
// `JobProgress.cancel`. The server's refusals arrive as the error class
// Forge throws for them (its code names the class); anything else is an
// `InternalServerError` carrying the code as `errorCode`.
//
// @forge/events 3 has no `push(payload, { delayInSeconds })` form (that
// was 1.x): as in Forge, a payload that is not `{ body: {...} }` is
// refused with InvalidPayloadError.
//
// Throwing NotSupportedError until Kiln's server has app events:
// `appEvents.publish`.
import { hostCall } from 'kiln:prelude';
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
const MAXIMUM_DELAY_SECONDS = 900;

const TEXT = {
  invalidQueueName: 'Queue names can only contain alphanumeric characters, dashes and underscores.',
  invalidEvent: 'Event must be an object.',
  invalidEventBody: 'Event body must be an object.',
  invalidDelayInSecondsSetting: 'The delayInSeconds setting must be between 0 and 900.',
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

// Forge's check: a delay that is set and outside 0..900 is refused.
function validatePushSettings(event) {
  const delay = event.delayInSeconds;
  if ((delay && delay > MAXIMUM_DELAY_SECONDS) || (delay && delay < 0)) {
    throw new InvalidPushSettingsError(TEXT.invalidDelayInSecondsSetting);
  }
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

function validatePushEvents(arg) {
  const events = Array.isArray(arg) ? arg : [arg];
  if (events.length === 0) throw new NoEventsToPushError(TEXT.noEventsPushed);
  if (events.length > MAXIMUM_EVENTS) throw new TooManyEventsError(TEXT.maxEventsAllowed(MAXIMUM_EVENTS));
  for (const event of events) {
    if (typeof event !== 'object' || Array.isArray(event) || event === null) {
      throw new InvalidPayloadError(TEXT.invalidEvent);
    }
    if (typeof event.body !== 'object' || Array.isArray(event.body) || event.body === null) {
      throw new InvalidPayloadError(TEXT.invalidEventBody);
    }
    validatePushSettings(event);
  }
  if (utf8Length(JSON.stringify(events)) / 1024 > MAXIMUM_PAYLOAD_SIZE_KB) {
    throw new PayloadTooBigError(TEXT.maxPayloadAllowed(MAXIMUM_PAYLOAD_SIZE_KB));
  }
  return events;
}

// What the server gets of an event: its JSON form, as Forge's client
// sends it (dates as strings, functions and undefined dropped).
function wire(event) {
  const json = JSON.parse(JSON.stringify(event));
  const out = { body: json.body };
  if (json.delayInSeconds !== undefined) out.delayInSeconds = json.delayInSeconds;
  if (json.concurrency !== undefined) out.concurrency = json.concurrency;
  return out;
}

export class JobProgress {
  constructor(queueParams, id) {
    this.queueParams = queueParams;
    this.id = id;
  }

  async getStats() {
    const queue = this.#checked();
    const { success, inProgress, failed } = await call('queue.job.stats', { queue, jobId: this.id });
    return { success, inProgress, failed };
  }

  async cancel() {
    const queue = this.#checked();
    await call('queue.job.cancel', { queue, jobId: this.id });
  }

  // Forge checks the job id, then the queue's name, before asking.
  #checked() {
    if (!this.id) throw new JobDoesNotExistError(TEXT.jobIdEmpty);
    const queue = this.queueParams && this.queueParams.key;
    validateQueueKey(queue);
    return queue;
  }
}

export class Queue {
  constructor(queueParams) {
    this.queueParams = queueParams;
    validateQueueKey(queueParams && queueParams.key);
  }

  async push(events) {
    const valid = validatePushEvents(events);
    const { jobId } = await call('queue.push', { queue: this.queueParams.key, events: valid.map(wire) });
    return { jobId };
  }

  getJob(jobId) {
    return new JobProgress(this.queueParams, jobId);
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
