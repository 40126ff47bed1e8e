// The platform's signature in k6's JavaScript: the canonical string of
// ../shared/spec/signature.md (PHP natural order on the path) and HMAC-SHA512 by k6/crypto.
// vectors.js checks it against tests/data/signature.json on every test run.
import crypto from 'k6/crypto';

const IGNORED = 'frame_mode';

// UTF-8 bytes of a string: PHP compares paths byte by byte.
function utf8(s) {
  const out = [];
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return out;
}

const isDigit = (s, i) => i < s.length && s[i] >= 48 && s[i] <= 57;
const isSpace = (c) => c === 32 || (c >= 9 && c <= 13);
const at = (s, i) => (i < s.length ? s[i] : 0);

// PHP 8 strnatcmp_ex(a, b, fold_case = false) over byte arrays; see src/signature/natural.rs.
export function naturalCompare(a, b) {
  if (a.length === 0 || b.length === 0) return a.length - b.length;
  let ai = 0;
  let bi = 0;
  let leading = true;
  for (;;) {
    let ca = at(a, ai);
    let cb = at(b, bi);
    if (leading) {
      while (ca === 48 && isDigit(a, ai + 1)) ca = a[++ai];
      while (cb === 48 && isDigit(b, bi + 1)) cb = b[++bi];
      leading = false;
    }
    while (isSpace(ca)) ca = at(a, ++ai);
    while (isSpace(cb)) cb = at(b, ++bi);
    if (isDigit(a, ai) && isDigit(b, bi)) {
      let r = 0;
      if (ca === 48 || cb === 48) {
        // Left-aligned runs: the first difference wins, a shorter run is smaller.
        for (;;) {
          const da = isDigit(a, ai);
          const db = isDigit(b, bi);
          if (!da || !db) { r = da === db ? 0 : (da ? 1 : -1); break; }
          if (a[ai] !== b[bi]) { r = a[ai] - b[bi]; break; }
          ai++; bi++;
        }
      } else {
        // Right-aligned runs: the longer run wins, else the first difference.
        let bias = 0;
        for (;;) {
          const da = isDigit(a, ai);
          const db = isDigit(b, bi);
          if (!da && !db) { r = bias; break; }
          if (!da) { r = -1; break; }
          if (!db) { r = 1; break; }
          if (bias === 0) bias = a[ai] - b[bi];
          ai++; bi++;
        }
      }
      if (r !== 0) return r;
      const ea = ai === a.length;
      const eb = bi === b.length;
      if (ea || eb) return ea === eb ? 0 : (ea ? -1 : 1);
      ca = a[ai];
      cb = b[bi];
    }
    if (ca !== cb) return ca - cb;
    ai++; bi++;
    const ea = ai >= a.length;
    const eb = bi >= b.length;
    if (ea || eb) return ea === eb ? 0 : (ea ? -1 : 1);
  }
}

// PHP (string)$float with precision 14 (zend_gcvt): 1.5, 100, 1.0E-7, 0.3, 1.0E+21.
export function phpFloat(v) {
  if (Number.isNaN(v)) return 'NAN';
  if (!Number.isFinite(v)) return v < 0 ? '-INF' : 'INF';
  if (v === 0) return '0';
  const sign = v < 0 ? '-' : '';
  const [mant, expText] = Math.abs(v).toExponential(13).split('e');
  const digits = mant.replace('.', '').replace(/0+$/, '') || '0';
  const decpt = parseInt(expText, 10) + 1;
  if (decpt < -3 || decpt > 14) {
    const e = decpt - 1;
    const frac = digits.length === 1 ? '0' : digits.slice(1);
    return `${sign}${digits[0]}.${frac}E${e < 0 ? '-' : '+'}${Math.abs(e)}`;
  }
  if (decpt <= 0) return `${sign}0.${'0'.repeat(-decpt)}${digits}`;
  if (digits.length <= decpt) return sign + digits + '0'.repeat(decpt - digits.length);
  return `${sign}${digits.slice(0, decpt)}.${digits.slice(decpt)}`;
}

function scalar(v) {
  if (v === null) return '';
  if (v === true) return '1';
  if (v === false) return '0';
  if (typeof v === 'number') return Number.isSafeInteger(v) ? String(v) : phpFloat(v);
  return String(v);
}

function flatten(value, prefix, out) {
  const keys = Array.isArray(value) ? value.map((_, i) => String(i)) : Object.keys(value);
  for (const key of keys) {
    if (key === IGNORED) continue;
    const child = value[key];
    const path = (prefix === null ? '' : `${prefix}:`) + key.split(':').join('::');
    if (child !== null && typeof child === 'object') flatten(child, path, out);
    else out.push({ path: utf8(path), entry: `${path}:${scalar(child)}` });
  }
}

// The string that is signed: every leaf except frame_mode, the root `signature` and
// `general.signature`, in PHP natural order of the path, joined with ';'.
export function canonical(payload) {
  const data = Object.assign({}, payload);
  delete data.signature;
  if (data.general && typeof data.general === 'object' && !Array.isArray(data.general)) {
    data.general = Object.assign({}, data.general);
    delete data.general.signature;
  }
  const entries = [];
  flatten(data, null, entries);
  // Array.prototype.sort is stable, as PHP 8's ksort is.
  entries.sort((x, y) => naturalCompare(x.path, y.path));
  return entries.map((e) => e.entry).join(';');
}

export function sign(payload, secret) {
  return crypto.hmac('sha512', secret, canonical(payload), 'base64');
}

// The payload as JSON text with its signature at the root, as the platform sends it.
export function signedBody(payload, secret) {
  return JSON.stringify(Object.assign({}, payload, { signature: sign(payload, secret) }));
}
