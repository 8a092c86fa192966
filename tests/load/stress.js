// Stress: ramp to 500 users and hold, to find where latency bends (short: 50 s to 200).
import { infer, thresholds, summary, summaryTrendStats, SHORT } from './lib.js';

const stages = SHORT
  ? [{ duration: '15s', target: 100 }, { duration: '15s', target: 200 }, { duration: '10s', target: 200 }, { duration: '10s', target: 0 }]
  : [
      { duration: '2m', target: 100 },
      { duration: '2m', target: 250 },
      { duration: '2m', target: 500 },
      { duration: '3m', target: 500 },
      { duration: '1m', target: 0 },
    ];

export const options = {
  scenarios: { stress: { executor: 'ramping-vus', startVUs: 0, stages, gracefulRampDown: '10s' } },
  thresholds: thresholds(500),
  summaryTrendStats,
};

export default infer;
export const handleSummary = summary;
