// expect: FUNCTION_OUT_OF_MEMORY
export function run() { const parts = []; for (let i = 0; ; i++) parts.push('chunk-' + i + 'x'.repeat(1000)); }
