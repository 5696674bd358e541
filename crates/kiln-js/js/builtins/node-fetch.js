// node-fetch (2.x and 3.x), served by Kiln's fetch: the same host call as
// the global fetch and @forge/api's fetch, so every request goes through the
// egress gateway to the hosts the manifest declares. The package's own code
// is not bundled: it needs node:http, node:https and node:zlib, which the
// sandbox does not offer (it has no sockets).
import { fetch as kilnFetch, Headers, Response } from 'kiln:fetch';

export default function fetch(input, init) {
  return kilnFetch(input, init);
}

fetch.isRedirect = (code) => code === 301 || code === 302 || code === 303 || code === 307 || code === 308;

export class FetchError extends Error {
  constructor(message, type, systemError) {
    super(message);
    this.name = 'FetchError';
    this.type = type;
    if (systemError) {
      this.code = this.errno = systemError.code;
    }
  }
}

export class AbortError extends Error {
  constructor(message) {
    super(message);
    this.name = 'AbortError';
    this.type = 'aborted';
  }
}

export { Headers, Response };
export const isRedirect = fetch.isRedirect;
