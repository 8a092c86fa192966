// Soak: 100 users for 15 minutes (short: 45 s), for leaks and slow drift: latency at the end
// should be what it was at the start, and memory flat (watch process_resident_memory_bytes).
import { infer, thresholds, summary, summaryTrendStats, SHORT } from './lib.js';

export const options = {
  scenarios: { soak: { executor: 'constant-vus', vus: 100, duration: SHORT ? '45s' : '15m' } },
  thresholds: thresholds(200),
  summaryTrendStats,
};

export default infer;
export const handleSummary = summary;
