// Resolver behind the `triage-panel` issue panel.
import Resolver from '@forge/resolver';
import api, { route } from '@forge/api';
import { Queue } from '@forge/events';
import { kvs } from '@forge/kvs';
import classify, { adfToText, counterKey, orDefault } from '../lib/triage';
import type { TriageJob, TriageResult } from '../lib/triage';

interface PanelContext {
  extension: { issue: { id: string; key: string } };
}

const resolver = new Resolver();

resolver.define('getTriage', async ({ context }) => {
  const { issue } = (context as unknown as PanelContext).extension;
  // asUser: the panel shows only what the viewing user may read.
  const response = await api
    .asUser()
    .requestJira(route`/rest/api/3/issue/${issue.id}?fields=summary,description`);
  if (!response.ok) {
    return { error: `could not read ${issue.key} (${response.status})` };
  }
  const { fields } = (await response.json()) as { fields: { summary?: string; description?: unknown } };
  const result: TriageResult = classify(`${fields.summary ?? ''} ${adfToText(fields.description)}`);
  const counts = await Promise.all(
    result.labels.map(async (label) => [label, await orDefault<number>(kvs.get(counterKey(label)), 0)] as const),
  );
  return { issueKey: issue.key, ...result, counts: Object.fromEntries(counts) };
});

resolver.define('retriage', async ({ context }) => {
  const { issue } = (context as unknown as PanelContext).extension;
  const job: TriageJob = { issueId: issue.id, reason: 'panel' };
  const { jobId } = await new Queue({ key: 'triage-jobs' }).push({ body: { ...job } });
  return { jobId };
});

export const handler = resolver.getDefinitions();
