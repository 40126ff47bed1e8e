// Both at once, as in production: kiosk visits (a customer waiting) beside the callback
// stream, each with its own p99 threshold, so callbacks cannot hide slow terminal answers.
//   k6 run -e BASE=... -e SECRET=... -e RATE=1000 -e TERMINAL_RATE=200 loadtest/k6/mixed.js
import { arrivals, thresholds, RATE } from './traffic.js';

export { setup, callbacks, kiosk } from './traffic.js';

const TERMINAL_RATE = Number(__ENV.TERMINAL_RATE || Math.ceil(RATE / 5));

export const options = {
  scenarios: {
    callbacks: arrivals(RATE, 'callbacks'),
    kiosk: arrivals(TERMINAL_RATE, 'kiosk'),
  },
  thresholds: thresholds(['callback', 'terminal']),
};
