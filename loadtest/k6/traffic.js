// What the k6 load scripts share: settings from the environment and the platform's
// messages (a Kassa24 kiosk's verify and check_deposit, its payment callback), signed
// by signer.js exactly as the platform signs them.
import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';
import { signedBody } from './signer.js';

const env = (name, fallback) => __ENV[name] || fallback;
export const BASE = env('BASE', 'http://127.0.0.1:8080');
export const SECRET = env('SECRET', 'dev-secret-change-me');
export const PROJECT = Number(env('PROJECT', 1234));
export const DURATION = env('DURATION', '30s');
export const RATE = Number(env('RATE', 500));
export const P99_MS = Number(env('P99_MS', 50));
export const RETRY_SHARE = Number(env('RETRY_SHARE', 0.2));
export const BAD_SHARE = Number(env('BAD_SHARE', 0.01));

// Steady arrivals for DURATION: k6 starts iterations on schedule whether or not the
// gateway keeps up, so a slow gateway shows as latency and dropped_iterations.
export function arrivals(rate, exec) {
  return {
    executor: 'constant-arrival-rate',
    exec,
    rate,
    timeUnit: '1s',
    duration: DURATION,
    preAllocatedVUs: Math.max(16, Math.ceil(rate / 10)),
    maxVUs: Math.max(64, Math.ceil(rate / 5)),
  };
}

// The thresholds that make k6 exit non-zero: every check passed, nothing failed at the
// HTTP level, every scheduled iteration ran (else the rate was not offered), and p99 of
// each kind of request under P99_MS.
export function thresholds(kinds) {
  const t = { checks: ['rate==1.0'], http_req_failed: ['rate==0'], dropped_iterations: ['count==0'] };
  for (const kind of kinds) t[`http_req_duration{kind:${kind}}`] = [`p(99)<${P99_MS}`];
  return t;
}

// k6's setup: a run id keeps ids unique across runs against the same journal.
export function setup() {
  return { run: `${Date.now().toString(36)}` };
}

// Unique per iteration across VUs and runs.
function iterationId(data) {
  return `${data.run}-${exec.vu.idInTest}-${exec.vu.iterationInScenario}`;
}

// The scenarios' exec functions, re-exported by the scripts that run them.
export function callbacks(data) {
  sendCallback(iterationId(data));
}

export function kiosk(data) {
  kioskVisit(iterationId(data));
}

const json = { headers: { 'Content-Type': 'application/json' } };
const post = (path, body, kind, expected) =>
  http.post(`${BASE}${path}`, body, Object.assign({ tags: { kind } }, json,
    expected ? { responseCallback: http.expectedStatuses(expected) } : {}));

// The platform's payment callback for one kiosk payment (the seed's Kassa24 Terminal shape).
function callback(id, amount) {
  return {
    project_id: PROJECT,
    payment: {
      id: `k6-${id}`, type: 'purchase', status: 'success', date: '2024-12-07T19:08:45+0000',
      method: 'kassa24', sum: { amount, currency: 'KZT' }, description: '',
    },
    account: { number: '71234567890' },
    customer: { id: `customer_${id}` },
    operation: {
      id: 1, type: 'sale', status: 'success', date: '2024-12-07T19:08:45+0000',
      created_date: '2024-12-07T19:08:05+0000', request_id: `k6-${id}-0`,
      sum_initial: { amount, currency: 'KZT' }, sum_converted: { amount, currency: 'KZT' },
      code: '0', message: 'Success',
      provider: { id: 12345, payment_id: `prov-${id}`, auth_code: '' },
    },
  };
}

// Sends one callback as the platform does: the retry (the same bytes again, as after a
// lost answer) must be answered 200 too; a tampered signature must get 400.
function sendCallback(id) {
  const payload = callback(id, 100 * (1 + (id.length % 50)));
  const body = signedBody(payload, SECRET);
  const res = post('/callbacks', body, 'callback');
  check(res, { 'callback accepted (200)': (r) => r.status === 200 });
  if (Math.random() < RETRY_SHARE) {
    const again = post('/callbacks', body, 'callback');
    check(again, { 'retry answered 200': (r) => r.status === 200 });
  }
  if (Math.random() < BAD_SHARE) {
    const bad = body.replace(/"signature":"./, (m) => m.slice(0, -1) + (m.endsWith('A') ? 'B' : 'A'));
    const res = post('/callbacks', bad, 'bad_signature', 400);
    check(res, { 'bad signature refused (400)': (r) => r.status === 400 });
  }
}

// One kiosk visit: verify the account, then check_deposit; the merchant at the project's
// terminal_url must answer code 0 to both, through cbgate, within the budget.
function kioskVisit(id) {
  const customer = `77${String(Math.abs(hash(id)) % 1e8).padStart(8, '0')}`;
  const verify = post('/terminal', signedBody({ type: 'verify', customer_id: customer, project_id: PROJECT }, SECRET), 'terminal');
  check(verify, { 'verify code 0': (r) => r.status === 200 && r.json('code') === 0 });
  const deposit = post('/terminal', signedBody({
    type: 'check_deposit', project_id: PROJECT, customer_id: customer,
    amount: 100 * (1 + (Math.abs(hash(id)) % 5000)), currency: 'KZT', payment_method: 'kassa24',
  }, SECRET), 'terminal');
  check(deposit, { 'check_deposit code 0 with a payment id': (r) => r.status === 200 && r.json('code') === 0 && !!r.json('payment_id') });
}

function hash(s) {
  let h = 0;
  for (let i = 0; i < s.length; i++) h = (Math.imul(h, 31) + s.charCodeAt(i)) | 0;
  return h;
}
