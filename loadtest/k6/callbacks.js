// Callbacks at a steady rate, as the platform sends them: every one distinct and
// accepted, RETRY_SHARE of them sent again, BAD_SHARE with a tampered signature.
//   k6 run -e BASE=http://127.0.0.1:8080 -e SECRET=... -e RATE=1000 -e DURATION=30s loadtest/k6/callbacks.js
import { arrivals, thresholds, RATE } from './traffic.js';

export { setup, callbacks } from './traffic.js';

export const options = {
  scenarios: { callbacks: arrivals(RATE, 'callbacks') },
  thresholds: thresholds(['callback']),
};
