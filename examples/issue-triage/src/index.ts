// Product-event trigger: queue every new or changed issue for triage.
// The trigger stays fast; the consumer in queue.ts does the Jira calls.
import { Queue } from '@forge/events';
import type { TriageJob } from './lib/triage';

interface IssueEvent {
  eventType: string;
  issue: { id: string; key: string };
  atlassianId?: string;
}

const jobs = new Queue({ key: 'triage-jobs' });

// Wired to both avi:jira:created:issue and avi:jira:updated:issue.
export async function onIssueCreated(event: IssueEvent, _context: unknown): Promise<void> {
  const reason: TriageJob['reason'] = event.eventType === 'avi:jira:created:issue' ? 'created' : 'updated';
  const job: TriageJob = { issueId: event.issue.id, reason };
  const { jobId } = await jobs.push({ body: { ...job } });
  console.log(`queued triage job ${jobId} for ${event.issue.key} (${reason})`);
}
