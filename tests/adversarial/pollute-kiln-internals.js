// expect: OK "tampered"
export function run() { try { __kilnModules.hostCall = null; } catch {} globalThis.__kilnModules = { evil: true }; return 'tampered'; }
