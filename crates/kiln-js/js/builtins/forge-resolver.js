// @forge/resolver: defines the functions a UI module's bridge calls. Pure
// JavaScript; the platform passes `{ call: { functionKey, payload }, context }`.
export default class Resolver {
  #functions = Object.create(null);

  define(key, fn) {
    if (typeof key !== 'string' || key === '') throw new TypeError('Resolver.define needs a function key');
    if (typeof fn !== 'function') throw new TypeError(`Resolver.define('${key}') needs a function`);
    if (key in this.#functions) throw new Error(`A resolver function with the key '${key}' is already defined`);
    this.#functions[key] = fn;
    return this;
  }

  getFunction(key) {
    return this.#functions[key];
  }

  getDefinitions() {
    const functions = this.#functions;
    return async (request, backendContext) => {
      const call = (request && request.call) || {};
      const fn = functions[call.functionKey];
      if (!fn) throw new Error(`Resolver has no definition for '${call.functionKey}'`);
      const base = (request && request.context) || {};
      const context = {
        ...base,
        installContext: backendContext && backendContext.installContext,
        accountId: backendContext && backendContext.principal ? backendContext.principal.accountId : base.accountId,
        license: backendContext && backendContext.license,
        installation: backendContext && backendContext.installation,
        jobId: call.jobId,
      };
      const result = await fn({ payload: call.payload, context });
      return result !== null && typeof result === 'object' ? JSON.parse(JSON.stringify(result)) : result;
    };
  }
}

export const makeResolver = (handlers) => {
  const resolver = new Resolver();
  for (const key of Object.keys(handlers)) resolver.define(key, handlers[key]);
  return resolver.getDefinitions();
};
