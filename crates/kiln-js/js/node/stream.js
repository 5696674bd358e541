// node:stream — only the legacy `Stream` base (an EventEmitter with pipe),
// which libraries such as jws inherit from at load time. Readable, Writable,
// Duplex, Transform and PassThrough exist so that modules defining
// subclasses load; constructing one throws until Kiln implements streams.
import EventEmitter from 'builtin:node:events';

export function Stream(opts) {
  EventEmitter.call(this, opts);
}
Object.setPrototypeOf(Stream.prototype, EventEmitter.prototype);
Object.setPrototypeOf(Stream, EventEmitter);

// Node's legacy Stream.prototype.pipe.
Stream.prototype.pipe = function pipe(dest, options) {
  const source = this;
  function ondata(chunk) {
    if (dest.writable && dest.write(chunk) === false && source.pause) source.pause();
  }
  source.on('data', ondata);
  function ondrain() {
    if (source.readable && source.resume) source.resume();
  }
  dest.on('drain', ondrain);
  let didOnEnd = false;
  function onend() {
    if (didOnEnd) return;
    didOnEnd = true;
    dest.end();
  }
  function onclose() {
    if (didOnEnd) return;
    didOnEnd = true;
    if (typeof dest.destroy === 'function') dest.destroy();
  }
  if (!dest._isStdio && (!options || options.end !== false)) {
    source.on('end', onend);
    source.on('close', onclose);
  }
  function onerror(er) {
    cleanup();
    if (EventEmitter.listenerCount(this, 'error') === 0) this.emit('error', er);
  }
  source.prependListener('error', onerror);
  dest.prependListener('error', onerror);
  function cleanup() {
    source.removeListener('data', ondata);
    dest.removeListener('drain', ondrain);
    source.removeListener('end', onend);
    source.removeListener('close', onclose);
    source.removeListener('error', onerror);
    dest.removeListener('error', onerror);
    source.removeListener('end', cleanup);
    source.removeListener('close', cleanup);
    dest.removeListener('close', cleanup);
  }
  source.on('end', cleanup);
  source.on('close', cleanup);
  dest.on('close', cleanup);
  dest.emit('pipe', source);
  return dest;
};

function notYet(name) {
  const ctor = function () {
    const e = new Error(`stream.${name} is not supported by Kiln yet`);
    e.name = 'NotSupportedError';
    e.code = 'NOT_SUPPORTED';
    throw e;
  };
  Object.defineProperty(ctor, 'name', { value: name });
  Object.setPrototypeOf(ctor.prototype, Stream.prototype);
  Object.setPrototypeOf(ctor, Stream);
  return ctor;
}

export const Readable = notYet('Readable');
export const Writable = notYet('Writable');
export const Duplex = notYet('Duplex');
export const Transform = notYet('Transform');
export const PassThrough = notYet('PassThrough');

function unsupportedFn(name) {
  return function () {
    const e = new Error(`stream.${name} is not supported by Kiln yet`);
    e.name = 'NotSupportedError';
    e.code = 'NOT_SUPPORTED';
    throw e;
  };
}
export const pipeline = unsupportedFn('pipeline');
export const finished = unsupportedFn('finished');
export const addAbortSignal = unsupportedFn('addAbortSignal');

Object.assign(Stream, { Stream, Readable, Writable, Duplex, Transform, PassThrough, pipeline, finished, addAbortSignal });

export default Stream;
