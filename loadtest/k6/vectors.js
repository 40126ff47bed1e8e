// Checks the k6 signer against every shared signature vector (no network):
//   k6 run --quiet loadtest/k6/vectors.js
// Fails (exit 99) if any vector that JavaScript numbers can hold differs. Vectors with an
// integer token above 2^53 are skipped and counted: JSON.parse rounds them, so no
// JavaScript signer can reproduce them (spec §4, the JS column).
import { check } from 'k6';
import { canonical, sign } from './signer.js';

const vectors = JSON.parse(open('../../tests/data/signature.json')).vectors;

export const options = {
  iterations: 1,
  vus: 1,
  thresholds: { checks: ['rate==1.0'] },
};

const unsafeInteger = (text) => (text.match(/-?\d{16,}(?![.\deE])/g) || []).some((t) => !Number.isSafeInteger(Number(t)));

export default function () {
  let skipped = 0;
  for (const v of vectors) {
    if (unsafeInteger(v.payload_json)) {
      skipped++;
      continue;
    }
    const payload = JSON.parse(v.payload_json);
    const got = canonical(payload);
    const ok = check(got, { 'canonical string': (g) => g === v.canonical })
      && check(sign(payload, v.secret), { signature: (s) => s === v.signature });
    if (!ok) console.error(`${v.name}\n  want ${v.canonical}\n  got  ${got}`);
  }
  console.log(`vectors: ${vectors.length - skipped} checked, ${skipped} skipped (integers above 2^53)`);
}
