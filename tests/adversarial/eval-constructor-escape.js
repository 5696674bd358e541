// expect: FUNCTION_ERROR "process is not defined"
export function run() { return (0, eval)("this.constructor.constructor('return process')()").pid; }
