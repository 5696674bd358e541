// expect: OK {"a":1}
export function run() { return { [Symbol.toPrimitive]() { for (;;) {} }, a: 1 }; }
