// node:timers/promises
import { promises } from 'builtin:node:timers';

export const setTimeout = promises.setTimeout;
export const setImmediate = promises.setImmediate;
export const scheduler = promises.scheduler;
export default promises;
