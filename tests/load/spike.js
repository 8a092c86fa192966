// Spike: 10 users, then 300 at once, hold, and back to 10 (short: 50 s in all). Nothing may
// fail while the extra users arrive; latency may rise, within the threshold.
import { infer, thresholds, summary, summaryTrendStats, SHORT } from './lib.js';

// STAGE_SCALE (default 1) stretches or shrinks every stage (make bench's smoke run: 0.25).
const SCALE = parseFloat(__ENV.STAGE_SCALE || '1');
const stage = (seconds, target) => ({ duration: `${Math.max(1, Math.round(seconds * SCALE * 1000))}ms`, target });
const stages = SHORT
  ? [stage(10, 10), stage(1, 300), stage(20, 300), stage(1, 10), stage(15, 10)]
  : [stage(60, 10), stage(5, 300), stage(180, 300), stage(5, 10), stage(120, 10)];

export const options = {
  scenarios: { spike: { executor: 'ramping-vus', startVUs: 10, stages, gracefulRampDown: '5s' } },
  thresholds: thresholds(500),
  summaryTrendStats,
};

export default infer;
export const handleSummary = summary;
