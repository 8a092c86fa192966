// Shared by the load scenarios: the text mix, the request and its checks, the thresholds,
// and the summary files. Settings come from the environment (k6 -e NAME=value):
//   BASE_URL       the load balancer (default http://127.0.0.1:8088, the native stack's nginx)
//   DURATION       "short" runs a scenario in at most 60 s (make test), else the full length
//   REPEAT_SHARE   share of requests that repeat one of a few texts (cache hits), default 0.3
//   IDEMPOTENCY    share of requests that send an X-Idempotency-Key, default 0.1
//   API_KEY        sent as Authorization: Bearer <key> when set
//   RESULTS        path prefix for <prefix>.json and <prefix>.html (make load-test sets it)
//   NGINX_RATE     the nginx per-client limit the stack ran with, for the report
//   P95_MS         replaces the scenario's p95 latency threshold
import http from 'k6/http';
import { check } from 'k6';
import { Counter, Rate } from 'k6/metrics';

export const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8088';
export const SHORT = (__ENV.DURATION || '') === 'short';
const REPEAT_SHARE = parseFloat(__ENV.REPEAT_SHARE || '0.3');
const IDEMPOTENCY = parseFloat(__ENV.IDEMPOTENCY || '0.1');
// Idempotency keys are unique to a run: a key reused with another text is rightly a 409,
// and the stack remembers keys across runs (IDEMPOTENCY_TTL_SECONDS).
const RUN_ID = __ENV.RUN_ID || `${Date.now()}`;

const REPEATED = [
  'I love this product, it works perfectly!',
  'This is the worst service I have ever used.',
  'The package arrived on Tuesday.',
  'Absolutely fantastic support team, thank you',
  'meh, it is fine I guess',
];
const WORDS = ['great', 'terrible', 'okay', 'slow', 'fast', 'friendly', 'rude', 'cheap', 'broken', 'lovely',
  'delivery', 'price', 'staff', 'app', 'update', 'refund', 'quality', 'support', 'order', 'screen'];

export const cacheHits = new Counter('falcon_cache_hits');
export const idempotentReplays = new Counter('falcon_idempotent_replays');
export const badBodies = new Rate('falcon_bad_bodies');
// Non-200 answers by status (the verdict lists them). k6 keeps a tagged sub-metric in the
// summary only when a threshold names it: these always hold.
export const errors = new Counter('falcon_errors');
const STATUSES = ['0', '400', '401', '403', '408', '409', '413', '415', '422', '429', '500', '502', '503', '504'];

// The latency figures the summary keeps (k6's default has no p99).
export const summaryTrendStats = ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'];

// Thresholds every scenario fails on (each sets its p95 in ms; P95_MS replaces it, e.g.
// for the short forms on a shared CI machine, where failures still count in full).
export function thresholds(p95ms) {
  if (__ENV.P95_MS) p95ms = parseFloat(__ENV.P95_MS);
  return {
    http_req_failed: ['rate<0.01'],
    [`http_req_duration{expected_response:true}`]: [`p(95)<${p95ms}`],
    checks: ['rate>0.99'],
    falcon_bad_bodies: ['rate<0.01'],
    ...Object.fromEntries(STATUSES.map((s) => [`falcon_errors{status:${s}}`, ['count>=0']])),
  };
}

function uniqueText() {
  const n = 6 + Math.floor(Math.random() * 10);
  const words = [];
  for (let i = 0; i < n; i++) words.push(WORDS[Math.floor(Math.random() * WORDS.length)]);
  return `${words.join(' ')} ${__VU}-${__ITER}-${Math.random().toString(36).slice(2, 8)}`;
}

// One POST /infer from the mix, with its checks.
export function infer() {
  const repeat = Math.random() < REPEAT_SHARE;
  const text = repeat ? REPEATED[Math.floor(Math.random() * REPEATED.length)] : uniqueText();
  const headers = { 'Content-Type': 'application/json' };
  if (__ENV.API_KEY) headers.Authorization = `Bearer ${__ENV.API_KEY}`;
  if (Math.random() < IDEMPOTENCY) headers['X-Idempotency-Key'] = `k6-${RUN_ID}-${__VU}-${__ITER}`;
  const res = http.post(`${BASE_URL}/infer`, JSON.stringify({ text }), { headers, tags: { name: 'POST /infer' } });
  let body = null;
  try {
    body = res.json();
  } catch (e) {
    body = null;
  }
  const ok = check(res, {
    'status is 200': (r) => r.status === 200,
    'body has a prediction': () => body !== null && ['negative', 'neutral', 'positive'].includes(body.prediction),
    'carries X-Request-ID': (r) => !!r.headers['X-Request-Id'],
  });
  badBodies.add(res.status === 200 && !ok);
  if (res.status !== 200) {
    const type = (body && (body.error_type || 'no_error_type')) || 'not_json';
    errors.add(1, { status: String(res.status), error_type: type });
  }
  if (body && body.cache_hit) cacheHits.add(1);
  if (body && body.idempotency_hit) idempotentReplays.add(1);
}

function verdict(data) {
  const failed = Object.entries(data.metrics)
    .flatMap(([name, m]) => Object.entries(m.thresholds || {}).filter(([, t]) => !t.ok).map(([expr]) => `${name} ${expr}`));
  const m = (name, stat) => (data.metrics[name] && data.metrics[name].values[stat]) || 0;
  const lines = [
    `scenario: ${__ENV.SCENARIO || 'unknown'} (${SHORT ? 'short' : 'full'}) against ${BASE_URL}`,
    `nginx per-client limit: ${__ENV.NGINX_RATE || 'as deployed'}`,
    `requests: ${m('http_reqs', 'count')} (${m('http_reqs', 'rate').toFixed(1)}/s), failed: ${(m('http_req_failed', 'rate') * 100).toFixed(2)} %`,
    `latency ms: p50 ${m('http_req_duration', 'med').toFixed(2)}, p95 ${m('http_req_duration', 'p(95)').toFixed(2)}, p99 ${m('http_req_duration', 'p(99)').toFixed(2)}, max ${m('http_req_duration', 'max').toFixed(2)}`,
    `cache hits: ${m('falcon_cache_hits', 'count')}, idempotent replays: ${m('falcon_idempotent_replays', 'count')}`,
    `non-200 answers by status: ${STATUSES.map((s) => [s, m(`falcon_errors{status:${s}}`, 'count')]).filter(([, n]) => n > 0).map(([s, n]) => `${s}: ${n}`).join(', ') || 'none'}`,
    failed.length === 0 ? 'VERDICT: PASS' : `VERDICT: FAIL (${failed.join('; ')})`,
  ];
  return lines.join('\n') + '\n';
}

// k6 calls this at the end: the verdict on stdout, the full summary as JSON next to the
// HTML report (k6's web dashboard export, written by make load-test).
export function summary(data) {
  const out = { stdout: verdict(data) };
  if (__ENV.RESULTS) out[`${__ENV.RESULTS}.json`] = JSON.stringify(data, null, 2);
  return out;
}
