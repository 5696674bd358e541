// expect: OK {"code":"CAPABILITY_NOT_AVAILABLE"}
export async function run() { try { await __kilnModules.hostCall('fetch', { url: 'http://169.254.169.254/' }); return { code: null }; } catch (e) { return { code: e.code }; } }
