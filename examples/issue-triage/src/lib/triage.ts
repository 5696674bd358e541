// Shared triage logic: keyword rules, classification and storage keys.
// Pure functions only, so every handler can import it.

export type Priority = 'high' | 'medium' | 'low';

export interface TriageRule {
  /** Label added to the issue when any keyword matches. */
  label: string;
  keywords: readonly string[];
  priority: Priority;
}

export interface TriageResult {
  labels: string[];
  priority: Priority;
}

/** The body of a job pushed to the `triage-jobs` queue. */
export interface TriageJob {
  issueId: string;
  reason: 'created' | 'updated' | 'webhook' | 'panel';
}

export const RULES = [
  { label: 'triage-outage', keywords: ['outage', 'down', 'unavailable', '500'], priority: 'high' },
  { label: 'triage-security', keywords: ['security', 'vulnerability', 'leak', 'xss'], priority: 'high' },
  { label: 'triage-performance', keywords: ['slow', 'timeout', 'latency'], priority: 'medium' },
  { label: 'triage-docs', keywords: ['typo', 'documentation', 'docs'], priority: 'low' },
] as const satisfies readonly TriageRule[];

const RANK: Record<Priority, number> = { high: 3, medium: 2, low: 1 };

/** Classifies free text (summary plus description) against the rules. */
export default function classify(text: string, rules: readonly TriageRule[] = RULES): TriageResult {
  const words = new Set(text.toLowerCase().split(/[^a-z0-9]+/).filter(Boolean));
  const matched = rules.filter((rule) => rule.keywords.some((k) => words.has(k)));
  const priority = matched.reduce<Priority>(
    (best, rule) => (RANK[rule.priority] > RANK[best] ? rule.priority : best),
    'low',
  );
  return { labels: matched.map((rule) => rule.label), priority };
}

/** KVS key holding how many issues received `label`. */
export function counterKey(label: string): string {
  return `triage:count:${label}`;
}

/** KVS key holding the digest for one UTC day (YYYY-MM-DD). */
export function digestKey(day: string): string {
  return `triage:digest:${day}`;
}

/** Awaits an optional value and substitutes `fallback` when it is missing. */
export async function orDefault<T>(value: Promise<T | undefined>, fallback: T): Promise<T> {
  const resolved = await value;
  return resolved === undefined ? fallback : resolved;
}

/** Flattens Atlassian Document Format (API v3 descriptions) into plain text. */
export function adfToText(node: unknown): string {
  if (node === null || typeof node !== 'object') {
    return '';
  }
  const { text, content } = node as { text?: unknown; content?: unknown };
  const own = typeof text === 'string' ? text : '';
  const children = Array.isArray(content) ? content.map(adfToText).join(' ') : '';
  return `${own} ${children}`.trim();
}
