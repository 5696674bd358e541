// Consumer for the `triage-jobs` queue: read the issue, add labels, bump counters.
import api, { route } from '@forge/api';
import { kvs } from '@forge/kvs';
import type { AsyncEvent } from '@forge/events';
import classify, { adfToText, counterKey, orDefault, type TriageJob } from './lib/triage';

interface IssueFields {
  summary?: string;
  description?: unknown;
  labels?: string[];
}

export async function processJob(event: AsyncEvent, _context: unknown): Promise<void> {
  const job = event.body as unknown as TriageJob;
  const response = await api
    .asApp()
    .requestJira(route`/rest/api/3/issue/${job.issueId}?fields=summary,description,labels`);
  if (response.status === 404) {
    console.warn(`issue ${job.issueId} no longer exists; dropping job`);
    return;
  }
  if (!response.ok) {
    // Throwing makes the platform retry the job with backoff.
    throw new Error(`reading issue ${job.issueId} failed with ${response.status}`);
  }
  const { fields } = (await response.json()) as { fields: IssueFields };
  const result = classify(`${fields.summary ?? ''} ${adfToText(fields.description)}`);
  const existing = new Set(fields.labels ?? []);
  const added = result.labels.filter((label) => !existing.has(label));
  if (added.length === 0) {
    return;
  }

  const update = await api.asApp().requestJira(route`/rest/api/3/issue/${job.issueId}`, {
    method: 'PUT',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ update: { labels: added.map((label) => ({ add: label })) } }),
  });
  if (!update.ok) {
    throw new Error(`labelling issue ${job.issueId} failed with ${update.status}`);
  }

  for (const label of added) {
    const count = await orDefault<number>(kvs.get(counterKey(label)), 0);
    await kvs.set(counterKey(label), count + 1);
  }
}
