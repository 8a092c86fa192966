// A fixed offered rate (open loop): k6's constant-arrival-rate executor starts RATE requests
// a second whatever the answers do, each a unique text, for SECONDS. make bench runs it
// against the floor and the embedded worker as a second client beside `falcon load --rate`,
// for issue 34's CPU-per-request and p99 figures. Settings (k6 -e NAME=value):
//   BASE_URL  the server (required), RATE (default 2000), SECONDS (default 5),
//   RESULTS   path prefix for <prefix>.json (the summary, with p99).
// make bench passes REPEAT_SHARE=0 and IDEMPOTENCY=0: every request is a new text, no key.
import { infer, summary, summaryTrendStats } from './lib.js';

const RATE = parseInt(__ENV.RATE || '2000', 10);
const SECONDS = parseInt(__ENV.SECONDS || '5', 10);

export const options = {
  scenarios: {
    fixed: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: `${SECONDS}s`,
      // Enough users that none is missing at the rate (a request takes well under 25 ms).
      preAllocatedVUs: Math.max(10, Math.ceil(RATE / 40)),
      maxVUs: Math.max(50, Math.ceil(RATE / 10)),
    },
  },
  thresholds: { http_req_failed: ['rate<0.01'], dropped_iterations: ['count>=0'] },
  summaryTrendStats,
};

export default infer;
export const handleSummary = summary;
