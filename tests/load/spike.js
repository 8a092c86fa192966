// Spike: 10 users, then 300 at once, hold, and back to 10 (short: 50 s in all). Nothing may
// fail while the extra users arrive; latency may rise, within the threshold.
import { infer, thresholds, summary, summaryTrendStats, SHORT } from './lib.js';

const stages = SHORT
  ? [{ duration: '10s', target: 10 }, { duration: '1s', target: 300 }, { duration: '20s', target: 300 }, { duration: '1s', target: 10 }, { duration: '15s', target: 10 }]
  : [{ duration: '1m', target: 10 }, { duration: '5s', target: 300 }, { duration: '3m', target: 300 }, { duration: '5s', target: 10 }, { duration: '2m', target: 10 }];

export const options = {
  scenarios: { spike: { executor: 'ramping-vus', startVUs: 10, stages, gracefulRampDown: '5s' } },
  thresholds: thresholds(500),
  summaryTrendStats,
};

export default infer;
export const handleSummary = summary;
