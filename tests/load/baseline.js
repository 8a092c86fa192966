// Baseline: 50 users for 5 minutes (short: 30 s). What normal traffic costs.
import { infer, thresholds, summary, summaryTrendStats, SHORT } from './lib.js';

export const options = {
  scenarios: {
    baseline: { executor: 'constant-vus', vus: 50, duration: SHORT ? '30s' : '5m' },
  },
  thresholds: thresholds(100),
  summaryTrendStats,
};

export default infer;
export const handleSummary = summary;
