// Kiosk visits at a steady rate: verify then check_deposit through cbgate to the
// merchant at the project's terminal_url; every answer must be code 0 within P99_MS.
//   k6 run -e BASE=http://127.0.0.1:8080 -e SECRET=... -e RATE=500 -e P99_MS=20 loadtest/k6/terminal.js
import { arrivals, thresholds, RATE } from './traffic.js';

export { setup, kiosk } from './traffic.js';

export const options = {
  scenarios: { kiosk: arrivals(RATE, 'kiosk') },
  thresholds: thresholds(['terminal']),
};
