// Both at once, as in production: kiosk visits (a customer waiting) beside the callback
// stream, each with its own p99 threshold, so callbacks cannot hide slow terminal answers.
//   k6 run -e BASE=... -e SECRET=... -e RATE=1000 -e TERMINAL_RATE=200 loadtest/k6/mixed.js
import { arrivals, thresholds, setupRun, iterationId, kioskVisit, sendCallback, RATE } from './traffic.js';

const TERMINAL_RATE = Number(__ENV.TERMINAL_RATE || Math.ceil(RATE / 5));

export const options = {
  scenarios: {
    callbacks: arrivals(RATE, 'callbacks'),
    kiosk: arrivals(TERMINAL_RATE, 'kiosk'),
  },
  thresholds: thresholds(['callback', 'terminal']),
};

export const setup = setupRun;

export function callbacks(data) {
  sendCallback(iterationId(data));
}

export function kiosk(data) {
  kioskVisit(iterationId(data));
}
