// @forge/resolver: defines the functions a UI module's bridge (or a queue
// consumer) calls. Pure JavaScript, following @forge/resolver 1.x/2.x: the
// function gets `{ call: { functionKey, payload, jobId }, context }` and
// the platform's own context as its second argument.
//
// What identifies the caller — `accountId`, `installContext`, `license`,
// `installation` — comes only from that second argument, never from the
// request's `context`, which a browser can write: as in Forge, a value
// there is overwritten, and absent when the platform has none.
export default class Resolver {
  #functions = Object.create(null);

  define(key, fn) {
    if (!fn || typeof fn !== 'function') {
      throw new Error(`Resolver definition '${key}' callback must be a 'function'. Received '${typeof fn}'.`);
    }
    if (key in this.#functions) throw new Error(`Resolver definition '${key}' already exists.`);
    this.#functions[key] = fn;
    return this;
  }

  getFunction(key) {
    if (key in this.#functions) return this.#functions[key];
    throw new Error(`Resolver has no definition for '${key}'.`);
  }

  getDefinitions() {
    return async (request, backendContext) => {
      const call = (request && request.call) || {};
      const fn = this.getFunction(call.functionKey);
      const backend = backendContext || {};
      const context = {
        ...((request && request.context) || {}),
        installContext: backend.installContext,
        accountId: accountIdOf(backend),
        license: backend.license,
        jobId: call.jobId,
        installation: backend.installation,
      };
      const result = await fn({ payload: call.payload || {}, context });
      return typeof result === 'object' ? JSON.parse(JSON.stringify(result)) : result;
    };
  }
}

// Forge names the user in `principal`; `kiln invoke --account-id` puts it
// at the top of the context it passes.
function accountIdOf(backend) {
  if (backend.principal && backend.principal.accountId !== undefined) return backend.principal.accountId;
  return backend.accountId;
}

export const makeResolver = (handlers) => {
  const resolver = new Resolver();
  for (const key of Object.keys(handlers)) resolver.define(key, handlers[key]);
  return resolver.getDefinitions();
};
