// expect: OK {}
// The global reached through Function's constructor is the sandbox's own:
// its `process` is Kiln's, with an empty environment, nothing of the host's.
export function run() { return (0, eval)("this.constructor.constructor('return process')()").env; }
