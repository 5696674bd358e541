// Web trigger: GET returns the label counters, POST {"issueId": "10001"} queues a re-triage.
// Web triggers are public URLs, so every request must carry the shared token.
import { Queue } from '@forge/events';
import { kvs } from '@forge/kvs';
import { RULES, counterKey, orDefault } from './lib/triage';
import type { TriageJob } from './lib/triage';

interface WebTriggerRequest {
  method: string;
  headers: Record<string, string[] | undefined>;
  body?: string;
}

interface WebTriggerResponse {
  statusCode: number;
  headers?: Record<string, string[]>;
  body?: string;
}

const json = (statusCode: number, value: unknown): WebTriggerResponse => ({
  statusCode,
  headers: { 'Content-Type': ['application/json'] },
  body: JSON.stringify(value),
});

/** Compares without returning early on the first differing character. */
function sameSecret(given: string, expected: string): boolean {
  let diff = given.length ^ expected.length;
  for (let i = 0; i < expected.length; i++) {
    diff |= (given.charCodeAt(i) || 0) ^ expected.charCodeAt(i);
  }
  return diff === 0;
}

export async function handleRequest(request: WebTriggerRequest): Promise<WebTriggerResponse> {
  const expected = process.env.TRIAGE_WEBHOOK_TOKEN;
  const header = request.headers['authorization']?.[0] ?? '';
  if (!expected || !sameSecret(header.replace(/^Bearer\s+/i, ''), expected)) {
    return json(401, { error: 'missing or wrong bearer token' });
  }

  if (request.method === 'GET') {
    const counts: Record<string, number> = {};
    for (const rule of RULES) {
      counts[rule.label] = await orDefault<number>(kvs.get(counterKey(rule.label)), 0);
    }
    return json(200, { counts });
  }

  if (request.method === 'POST') {
    let issueId: unknown;
    try {
      issueId = (JSON.parse(request.body ?? '{}') as { issueId?: unknown }).issueId;
    } catch {
      return json(400, { error: 'body must be JSON' });
    }
    if (typeof issueId !== 'string' || !/^\d+$/.test(issueId)) {
      return json(400, { error: 'issueId must be a numeric string' });
    }
    const job: TriageJob = { issueId, reason: 'webhook' };
    const { jobId } = await new Queue({ key: 'triage-jobs' }).push({ body: { ...job } });
    return json(202, { jobId });
  }

  return json(405, { error: `method ${request.method} not allowed` });
}
