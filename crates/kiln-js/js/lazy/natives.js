// The native object with the natives that only modules loaded on demand use
// (crypto, URL, host calls, Buffer, process, Forge's API), which a fresh
// runtime does not make until the first such module loads.

import { native } from 'kiln:prelude';

native.extras();

export { native };
