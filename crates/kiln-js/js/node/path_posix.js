// node:path/posix — the same object as node:path.
import path from 'builtin:node:path';

export * from 'builtin:node:path';
export default path;
