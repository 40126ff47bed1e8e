//! PHP's `strnatcmp_ex(a, b, fold_case = false)` (php-src `ext/standard/strnatcmp.c`),
//! the order `ksort($entries, SORT_NATURAL)` gives the platform's reference PHP SDK.
//! Ported branch for branch: the canonical string depends on every quirk of it.

use std::cmp::Ordering;

/// Bytes past the end read as NUL, as the C code reads a `zend_string`'s terminator.
fn at(s: &[u8], i: usize) -> u8 {
    s.get(i).copied().unwrap_or(0)
}

fn is_digit(s: &[u8], i: usize) -> bool {
    at(s, i).is_ascii_digit()
}

/// C `isspace` in the "C" locale: space, \t, \n, \v, \f, \r.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Compares natural order of `a` and `b` exactly as PHP 8 does.
pub fn compare(a: &[u8], b: &[u8]) -> Ordering {
    // Fast path: up to the first differing byte both strings step through the same
    // characters (equal digit runs compare equal, equal whitespace is skipped alike),
    // so natural order is byte order unless the difference itself is a digit,
    // whitespace or NUL, where runs, skipping or the C terminator can decide it.
    let i = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let special = |c: Option<&u8>| c.is_some_and(|&c| c.is_ascii_digit() || is_space(c) || c == 0);
    if !special(a.get(i)) && !special(b.get(i)) {
        return a.get(i).cmp(&b.get(i));
    }
    full(a, b)
}

/// The C algorithm, step by step.
fn full(a: &[u8], b: &[u8]) -> Ordering {
    if a.is_empty() || b.is_empty() {
        return a.len().cmp(&b.len());
    }
    let (mut ai, mut bi) = (0usize, 0usize);
    let mut leading = true;
    loop {
        let mut ca = at(a, ai);
        let mut cb = at(b, bi);
        if leading {
            while ca == b'0' && ai + 1 < a.len() && a[ai + 1].is_ascii_digit() {
                ai += 1;
                ca = a[ai];
            }
            while cb == b'0' && bi + 1 < b.len() && b[bi + 1].is_ascii_digit() {
                bi += 1;
                cb = b[bi];
            }
            leading = false;
        }
        while is_space(ca) {
            ai += 1;
            ca = at(a, ai);
        }
        while is_space(cb) {
            bi += 1;
            cb = at(b, bi);
        }
        if ca.is_ascii_digit() && cb.is_ascii_digit() {
            let result = if ca == b'0' || cb == b'0' {
                compare_left(a, &mut ai, b, &mut bi)
            } else {
                compare_right(a, &mut ai, b, &mut bi)
            };
            if result != Ordering::Equal {
                return result;
            }
            match (ai == a.len(), bi == b.len()) {
                (true, true) => return Ordering::Equal,
                (true, false) => return Ordering::Less,
                (false, true) => return Ordering::Greater,
                (false, false) => {
                    ca = a[ai];
                    cb = b[bi];
                }
            }
        }
        match ca.cmp(&cb) {
            Ordering::Equal => {}
            other => return other,
        }
        ai += 1;
        bi += 1;
        match (ai >= a.len(), bi >= b.len()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            (false, false) => {}
        }
    }
}

/// Right-aligned digit runs: the longer run wins, else the first difference.
fn compare_right(a: &[u8], ai: &mut usize, b: &[u8], bi: &mut usize) -> Ordering {
    let mut bias = Ordering::Equal;
    loop {
        match (is_digit(a, *ai), is_digit(b, *bi)) {
            (false, false) => return bias,
            (false, true) => return Ordering::Less,
            (true, false) => return Ordering::Greater,
            (true, true) => {
                if bias == Ordering::Equal {
                    bias = a[*ai].cmp(&b[*bi]);
                }
            }
        }
        *ai += 1;
        *bi += 1;
    }
}

/// Left-aligned digit runs (either starts with `0`): the first difference wins.
fn compare_left(a: &[u8], ai: &mut usize, b: &[u8], bi: &mut usize) -> Ordering {
    loop {
        match (is_digit(a, *ai), is_digit(b, *bi)) {
            (false, false) => return Ordering::Equal,
            (false, true) => return Ordering::Less,
            (true, false) => return Ordering::Greater,
            (true, true) => match a[*ai].cmp(&b[*bi]) {
                Ordering::Equal => {}
                other => return other,
            },
        }
        *ai += 1;
        *bi += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::compare;
    use std::cmp::Ordering::*;

    #[test]
    fn digit_runs_compare_as_numbers() {
        assert_eq!(compare(b"items:2", b"items:10"), Less);
        assert_eq!(compare(b"item10", b"item2"), Greater);
        assert_eq!(compare(b"a:9:x", b"a:10:x"), Less);
    }

    #[test]
    fn leading_zero_runs_compare_left_aligned() {
        // "01" vs "2": leading zero at the very start is skipped, so 1 < 2.
        assert_eq!(compare(b"01", b"2"), Less);
        // inside the string "n:01" vs "n:2" compares left-aligned: '0' < '2'.
        assert_eq!(compare(b"n:01", b"n:2"), Less);
        assert_eq!(compare(b"n:01", b"n:10"), Less);
    }

    #[test]
    fn prefix_and_case() {
        assert_eq!(compare(b"a", b"a:x"), Less);
        assert_eq!(compare(b"A", b"_"), Less);
        assert_eq!(compare(b"_", b"a"), Less);
        assert_eq!(compare(b"", b"a"), Less);
        assert_eq!(compare(b"abc", b"abc"), Equal);
    }

    #[test]
    fn whitespace_is_skipped() {
        assert_eq!(compare(b"a 1", b"a1"), Equal);
    }

    /// The fast path agrees with the C algorithm on strings built to hit its edges.
    #[test]
    fn fast_path_agrees_with_the_full_algorithm() {
        let alphabet: &[u8] = b"0119a :_ A\tz";
        let mut rng = 0x2545F4914F6CDD1Du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..200_000 {
            let mut make = || {
                let n = (next() % 7) as usize;
                (0..n)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect::<Vec<u8>>()
            };
            let (a, mut b) = (make(), make());
            if next() % 2 == 0 {
                // Share a prefix, the common case in paths.
                let mut p = a.clone();
                p.truncate((next() % 5) as usize);
                p.extend_from_slice(&b);
                b = p;
            }
            assert_eq!(compare(&a, &b), super::full(&a, &b), "{:?} vs {:?}", a, b);
        }
    }
}
