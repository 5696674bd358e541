// expect: FUNCTION_ERROR "too many host calls"
export async function run() {
  const calls = [];
  for (let i = 0; i < 100; i++) calls.push(__kilnModules.hostCall('kvs', {}));
  await Promise.all(calls);
}
