// @forge/metrics: counters, gauges and timers, following @forge/metrics 0.2.x
// (`internalMetrics.counter(name).incr()`, `.gauge(name).set(v)`,
// `.timer(name).measure().stop()`).
//
// In Forge these go to Atlassian's internal metrics pipeline through the
// runtime. Kiln has no metrics sink, and an app's metric names and values
// are not something to send anywhere the admin did not consent to, so every
// call here is accepted and recorded nowhere: the same shapes, the same
// argument checks, no host call. Apps call these from error handlers, so
// refusing them would turn a handled error into a failed invocation.

function checkName(name) {
  if (typeof name !== 'string' || name.length === 0) {
    throw new TypeError('a metric name must be a non-empty string');
  }
  return name;
}

function checkValue(value) {
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw new TypeError('a metric value must be a finite number');
  }
}

export class TimerNotInitialisedError extends Error {
  constructor() {
    super('Timer was not initialised');
    this.name = 'TimerNotInitialisedError';
  }
}

export class TimerDeadError extends Error {
  constructor() {
    super('Timer has already been stopped');
    this.name = 'TimerDeadError';
  }
}

class Counter {
  constructor(name) {
    this.name = checkName(name);
  }
  incr() {}
  incrBy(value) {
    checkValue(value);
  }
  decr() {}
  decrBy(value) {
    checkValue(value);
  }
}

class Gauge {
  constructor(name) {
    this.name = checkName(name);
  }
  set(value) {
    checkValue(value);
  }
}

class TimerStop {
  #alive = true;
  stop() {
    if (!this.#alive) throw new TimerDeadError();
    this.#alive = false;
  }
}

class Timer {
  constructor(name) {
    this.name = checkName(name);
  }
  measure() {
    return new TimerStop();
  }
}

class Metrics {
  internalMetricName(name) {
    return checkName(name);
  }
  counter(name) {
    return new Counter(name);
  }
  gauge(name) {
    return new Gauge(name);
  }
  timer(name) {
    return new Timer(name);
  }
}

export const internalMetrics = new Metrics();

export default { internalMetrics };
