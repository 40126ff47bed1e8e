//! The canonical string (spec §3–§7): one simd-json parse of the body into a tape,
//! one walk that flattens it into `path:value` entries in a reused arena (already
//! `;`-joined in PHP order in the common case), else a sort
//! in the chosen SDK order and a `;` join. Pure: no keys, no I/O, nothing global.

use std::cmp::Ordering;
use std::io::Write as _;

use simd_json::{Buffers, Node, StaticNode, Tape};

use super::natural;

/// Which SDK's canonical string to build. `Php` is the platform's; the others exist
/// only as fallbacks for payloads on which the SDKs disagree (spec §6, §10.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Order {
    /// PHP SDK: natural order on the path, every `signature` key removed.
    Php,
    /// Python SDK: byte order on the path.
    Python,
    /// Go and Java SDKs: byte order on the whole `path:value` entry.
    GoEntries,
    /// Java/WooCommerce callback classes: only the signature that was read is removed.
    RootSignatureOnly,
    /// The signers (spec §2): PHP order; only the root and `general` signature fields
    /// are left out, nested `signature` keys are data.
    Signer,
}

impl Order {
    pub const FALLBACKS: [Order; 3] = [Order::Python, Order::GoEntries, Order::RootSignatureOnly];

    pub fn as_str(self) -> &'static str {
        match self {
            Order::Php => "php",
            Order::Python => "python",
            Order::GoEntries => "go_entries",
            Order::RootSignatureOnly => "root_signature_only",
            Order::Signer => "signer",
        }
    }
}

/// Why a body could not be canonicalised. Every variant is the sender's fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("body is nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("body is not a JSON object")]
    NotObject,
    /// Paths repeat in every entry, so a long key over a long array makes a canonical
    /// string thousands of times the body (a 64 KiB body could ask for 512 MiB).
    #[error("body's canonical string would be over {0} bytes")]
    TooLarge(usize),
}

/// The JSON type of a leaf, as far as the canonical text hides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    String,
    /// A number whose canonical text is an exact integer (within i64).
    Integer,
    /// Any other number: a fraction, an exponent, or an integer beyond i64 (which PHP,
    /// and so the canonical string, writes as a float).
    Float,
    Bool,
    Null,
}

/// A canonical string may be this many times its body, plus `CANONICAL_SLACK`; far
/// more than any platform message needs (theirs are shorter than the body).
const CANONICAL_FACTOR: usize = 8;
const CANONICAL_SLACK: usize = 4096;
/// Objects with more keys than this find duplicates with a hash set: the per-object
/// bloom filter fills up, and a linear scan per key would be quadratic.
const SMALL_OBJECT: usize = 32;

/// The leaf sits at or under a key named `signature`.
const UNDER_SIGNATURE: u8 = 1;
/// The leaf is the root `signature` string.
const ROOT_SIGNATURE: u8 = 2;
/// The leaf is the `general.signature` string.
const GENERAL_SIGNATURE: u8 = 4;

#[derive(Clone, Copy)]
struct Entry {
    start: u32,
    path_end: u32,
    end: u32,
    flags: u8,
    scalar: Scalar,
}

/// Reusable per-worker state: every buffer survives between bodies, so a warm
/// canonicaliser allocates nothing per request (the body is copied once into the
/// padded input simd-json parses in place).
pub struct Canonicalizer {
    input: Vec<u8>,
    buffers: Buffers,
    tape: Tape<'static>,
    max_depth: usize,
    path: Vec<u8>,
    /// Signed entries `;`-joined in walk order: the canonical string itself when the
    /// walk's order is PHP's.
    arena: Vec<u8>,
    /// Leaves under a `signature` key, and the signature strings: kept out of `arena`.
    aside: Vec<u8>,
    entries: Vec<Entry>,
    order: Vec<u32>,
    out: Vec<u8>,
    signatures: Signatures,
    siblings: Vec<Sibling>,
    keys: Vec<u8>,
    /// The walk's emission order is not provably the PHP order (see `Walk::collect_keys`).
    needs_sort: bool,
    /// The canonical path of the first key that appeared twice in one object, if any.
    duplicate: Option<Vec<u8>>,
}

/// A key of the object being walked: its tape indexes, its sort text (the escaped
/// key, plus `:` when its value has entries) in `keys`, and whether a later duplicate
/// overrides it.
#[derive(Clone, Copy)]
struct Sibling {
    key: u32,
    value: u32,
    text: (u32, u32),
    skip: bool,
}

/// Arena ranges of the root and `general` signature strings.
#[derive(Default, Clone, Copy)]
struct Signatures {
    root: Option<(u32, u32)>,
    general: Option<(u32, u32)>,
}

impl Default for Canonicalizer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_DEPTH)
    }
}

/// Deeper than any platform message (they nest 4 levels) but far from stack trouble.
pub const DEFAULT_MAX_DEPTH: usize = 32;

impl Canonicalizer {
    pub fn new(max_depth: usize) -> Self {
        Self {
            input: Vec::with_capacity(4096),
            buffers: Buffers::with_max_depth(4096, max_depth),
            tape: Tape(Vec::with_capacity(256)),
            max_depth,
            path: Vec::with_capacity(128),
            arena: Vec::with_capacity(4096),
            aside: Vec::with_capacity(256),
            entries: Vec::with_capacity(64),
            order: Vec::with_capacity(64),
            out: Vec::with_capacity(2048),
            signatures: Signatures::default(),
            siblings: Vec::with_capacity(64),
            keys: Vec::with_capacity(512),
            needs_sort: false,
            duplicate: None,
        }
    }

    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    /// Parses `body` once and flattens it. Afterwards `signature`, `get` and
    /// `canonical` read the result until the next `load`.
    pub fn load(&mut self, body: &[u8]) -> Result<(), ParseError> {
        self.arena.clear();
        self.aside.clear();
        self.entries.clear();
        self.path.clear();
        self.signatures = Signatures::default();
        self.siblings.clear();
        self.keys.clear();
        self.needs_sort = false;
        self.duplicate = None;

        let len = body.len();
        self.input.clear();
        self.input.extend_from_slice(body);
        self.input.resize(len + simd_json::INPUT_PADDING, 0);

        let mut tape: Tape<'_> = std::mem::replace(&mut self.tape, Tape(Vec::new())).reset();
        let parsed =
            simd_json::fill_tape_padded(&mut self.input, len, &mut self.buffers, &mut tape);
        let result = match parsed {
            Err(e) => Err(match e.error() {
                simd_json::ErrorType::DepthLimitExceeded => ParseError::TooDeep(self.max_depth),
                _ => ParseError::NotJson(e.to_string()),
            }),
            Ok(()) => match tape.0.first() {
                Some(Node::Object { .. }) => {
                    let mut walk = Walk {
                        path: &mut self.path,
                        arena: &mut self.arena,
                        aside: &mut self.aside,
                        entries: &mut self.entries,
                        signatures: &mut self.signatures,
                        siblings: &mut self.siblings,
                        keys: &mut self.keys,
                        needs_sort: &mut self.needs_sort,
                        duplicate: &mut self.duplicate,
                        limit: len.saturating_mul(CANONICAL_FACTOR) + CANONICAL_SLACK,
                        over: false,
                    };
                    walk.value(&tape.0, 0, 0, 0);
                    if walk.over {
                        Err(ParseError::TooLarge(walk.limit))
                    } else {
                        Ok(())
                    }
                }
                _ => Err(ParseError::NotObject),
            },
        };
        self.tape = tape.reset();
        result
    }

    /// The signature the body carries: root `signature`, else `general.signature`.
    pub fn signature(&self) -> Option<&[u8]> {
        self.signatures
            .root
            .or(self.signatures.general)
            .map(|(s, e)| &self.aside[s as usize..e as usize])
    }

    /// The value of the first signed leaf at `path` (keys joined with `:`, as in the
    /// canonical string), e.g. `payment:id`. Null reads as empty.
    pub fn get(&self, path: &[u8]) -> Option<&[u8]> {
        self.get_typed(path).map(|(_, v)| v)
    }

    /// As `get`, with the leaf's JSON type.
    pub fn get_typed(&self, path: &[u8]) -> Option<(Scalar, &[u8])> {
        self.entries
            .iter()
            .filter(|e| e.flags & UNDER_SIGNATURE == 0)
            .find(|e| &self.arena[e.start as usize..e.path_end as usize] == path)
            .map(|e| {
                (
                    e.scalar,
                    &self.arena[e.path_end as usize + 1..e.end as usize],
                )
            })
    }

    /// Whether some entry lies under `path` (an object or array there).
    pub fn has_children(&self, path: &[u8]) -> bool {
        self.entries.iter().any(|e| {
            // Leaves under a `signature` key live in `aside`, not in `arena`.
            if e.flags & UNDER_SIGNATURE != 0 {
                return false;
            }
            let p = &self.arena[e.start as usize..e.path_end as usize];
            p.len() > path.len() && p.starts_with(path) && p[path.len()] == b':'
        })
    }

    /// The canonical path of the first key that appeared twice in one object (the last
    /// copy is the one signed, as every SDK's decoder keeps the last).
    pub fn duplicate_key(&self) -> Option<&[u8]> {
        self.duplicate.as_deref()
    }

    /// The canonical string in `order`. Valid until the next call.
    pub fn canonical(&mut self, order: Order) -> &[u8] {
        if order == Order::Php && !self.needs_sort {
            return &self.arena;
        }
        let used = if self.signatures.root.is_some() {
            ROOT_SIGNATURE
        } else {
            GENERAL_SIGNATURE
        };
        let keep = |e: &Entry| match order {
            Order::RootSignatureOnly => e.flags & used == 0,
            Order::Signer => e.flags & (ROOT_SIGNATURE | GENERAL_SIGNATURE) == 0,
            Order::Php | Order::Python | Order::GoEntries => e.flags & UNDER_SIGNATURE == 0,
        };
        self.order.clear();
        self.order.extend(
            self.entries
                .iter()
                .enumerate()
                .filter(|(_, e)| keep(e))
                .map(|(i, _)| i as u32),
        );
        let (arena, aside) = (&self.arena, &self.aside);
        let entries = &self.entries;
        let buffer = |e: &Entry| {
            if e.flags & UNDER_SIGNATURE == 0 {
                arena
            } else {
                aside
            }
        };
        let path = |i: u32| {
            let e = &entries[i as usize];
            &buffer(e)[e.start as usize..e.path_end as usize]
        };
        let whole = |i: u32| {
            let e = &entries[i as usize];
            &buffer(e)[e.start as usize..e.end as usize]
        };
        // The walk emitted entries in per-object natural order, which is PHP's order
        // of whole paths unless the walk said otherwise.
        let in_order =
            !self.needs_sort && matches!(order, Order::RootSignatureOnly | Order::Signer);
        // Unstable sort with the walk index as tie-break is a stable sort that needs
        // no scratch allocation.
        let by = |a: &u32, b: &u32, cmp: &dyn Fn(u32, u32) -> Ordering| cmp(*a, *b).then(a.cmp(b));
        match order {
            _ if in_order => {}
            Order::Php | Order::RootSignatureOnly | Order::Signer => self
                .order
                .sort_unstable_by(|a, b| by(a, b, &|x, y| natural::compare(path(x), path(y)))),
            Order::Python => self
                .order
                .sort_unstable_by(|a, b| by(a, b, &|x, y| path(x).cmp(path(y)))),
            Order::GoEntries => self
                .order
                .sort_unstable_by(|a, b| by(a, b, &|x, y| whole(x).cmp(whole(y)))),
        }
        self.out.clear();
        for (n, &i) in self.order.iter().enumerate() {
            if n > 0 {
                self.out.push(b';');
            }
            self.out.extend_from_slice(whole(i));
        }
        &self.out
    }
}

struct Walk<'a> {
    path: &'a mut Vec<u8>,
    arena: &'a mut Vec<u8>,
    aside: &'a mut Vec<u8>,
    entries: &'a mut Vec<Entry>,
    signatures: &'a mut Signatures,
    siblings: &'a mut Vec<Sibling>,
    keys: &'a mut Vec<u8>,
    needs_sort: &'a mut bool,
    duplicate: &'a mut Option<Vec<u8>>,
    /// Bytes `arena` and `aside` may hold together; past it `over` is set and no more
    /// is written.
    limit: usize,
    over: bool,
}

/// Number of tape nodes the value at `i` spans, itself included.
fn span(nodes: &[Node<'_>], i: usize) -> usize {
    match nodes[i] {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

impl Walk<'_> {
    /// Walks the value at tape index `i` at `depth`; returns the index after it.
    fn value(&mut self, nodes: &[Node<'_>], i: usize, depth: usize, flags: u8) -> usize {
        match nodes[i] {
            Node::Object { len, .. } => {
                let base = self.siblings.len();
                let end = self.collect_keys(nodes, i, len);
                // Walk the keys in natural order of their sort text, so the entries come
                // out in (almost always exactly) the platform's order; `canonical`
                // checks that and sorts only when it is not.
                let keys = &self.keys;
                let tie = std::cell::Cell::new(false);
                self.siblings[base..].sort_by(|a, b| {
                    let o = natural::compare(
                        &keys[a.text.0 as usize..a.text.1 as usize],
                        &keys[b.text.0 as usize..b.text.1 as usize],
                    );
                    if o == Ordering::Equal && !a.skip && !b.skip {
                        tie.set(true);
                    }
                    o
                });
                if tie.get() {
                    *self.needs_sort = true;
                }
                for n in base..self.siblings.len() {
                    let sib = self.siblings[n];
                    if sib.skip {
                        continue;
                    }
                    let Node::String(key) = nodes[sib.key as usize] else {
                        unreachable!("simd-json object keys are strings")
                    };
                    let mark = self.path.len();
                    if mark > 0 {
                        self.path.push(b':');
                    }
                    let text = &self.keys[sib.text.0 as usize..sib.text.1 as usize];
                    let escaped = text
                        .strip_suffix(b":")
                        .filter(|_| is_container(nodes[sib.value as usize]));
                    self.path.extend_from_slice(escaped.unwrap_or(text));
                    let mut child = flags;
                    if key == "signature" {
                        child |= UNDER_SIGNATURE;
                        let string = match nodes[sib.value as usize] {
                            Node::String(s) => Some(s.as_bytes()),
                            _ => None,
                        };
                        if depth == 0 {
                            child |= ROOT_SIGNATURE;
                            self.signatures.root = string.map(|s| self.stash(s));
                        } else if depth == 1 && &self.path[..mark] == b"general" {
                            child |= GENERAL_SIGNATURE;
                            self.signatures.general = string.map(|s| self.stash(s));
                        }
                    }
                    self.value(nodes, sib.value as usize, depth + 1, child);
                    self.path.truncate(mark);
                }
                self.siblings.truncate(base);
                end
            }
            Node::Array { len, .. } => {
                let mut k = i + 1;
                for index in 0..len {
                    let mark = self.path.len();
                    if !self.path.is_empty() {
                        self.path.push(b':');
                    }
                    self.path
                        .extend_from_slice(itoa::Buffer::new().format(index).as_bytes());
                    k = self.value(nodes, k, depth + 1, flags);
                    self.path.truncate(mark);
                }
                k
            }
            Node::String(s) => {
                self.leaf(flags, Scalar::String, |out| {
                    out.extend_from_slice(s.as_bytes())
                });
                i + 1
            }
            Node::Static(node) => {
                let scalar = match node {
                    StaticNode::Null => Scalar::Null,
                    StaticNode::Bool(_) => Scalar::Bool,
                    StaticNode::I64(_) => Scalar::Integer,
                    StaticNode::U64(v) if i64::try_from(v).is_ok() => Scalar::Integer,
                    StaticNode::U64(_) | StaticNode::F64(_) => Scalar::Float,
                };
                self.leaf(flags, scalar, |out| write_static(node, out));
                i + 1
            }
        }
    }

    /// Pushes a `Sibling` for every key of the object at `obj` except `frame_mode`
    /// (dropped at every depth); returns the tape index after the object. Duplicate
    /// keys: the last one wins, as in every SDK's JSON decoder.
    ///
    /// Why sorting each object's keys gives PHP's order of whole paths: two paths in
    /// sibling subtrees share `parent:` and PHP's comparison then reads both key texts
    /// (key, plus `:` for a container) in lockstep, deciding inside them, unless a
    /// key holds whitespace, NUL or `:` (skipping and escapes break the lockstep),
    /// starts with `0` and a digit (leading zeros are skipped only at a string's
    /// start), or two keys compare equal. Any of these sets `needs_sort`.
    #[inline(never)]
    fn collect_keys(&mut self, nodes: &[Node<'_>], obj: usize, len: usize) -> usize {
        let base = self.siblings.len();
        // Bloom of (length, first byte): most objects have no duplicate, so the exact
        // comparison rarely runs. Large objects use a set instead (see SMALL_OBJECT).
        let mut seen = 0u64;
        let mut large: Option<std::collections::HashMap<&str, usize>> =
            (len > SMALL_OBJECT).then(|| std::collections::HashMap::with_capacity(len));
        let mut k = obj + 1;
        for _ in 0..len {
            let value = k + 1;
            let next = value + span(nodes, value);
            let Node::String(key) = nodes[k] else {
                unreachable!("simd-json object keys are strings")
            };
            if key != "frame_mode" {
                let repeated = match &mut large {
                    Some(set) => match set.insert(key, self.siblings.len()) {
                        Some(earlier) => {
                            self.siblings[earlier].skip = true;
                            true
                        }
                        None => false,
                    },
                    None => {
                        let bit = 1u64
                            << ((key.len() * 31 + key.bytes().next().unwrap_or(0) as usize) & 63);
                        let mut repeated = false;
                        if seen & bit != 0 {
                            for s in &mut self.siblings[base..] {
                                if nodes[s.key as usize] == Node::String(key) {
                                    s.skip = true;
                                    repeated = true;
                                }
                            }
                        }
                        seen |= bit;
                        repeated
                    }
                };
                if repeated && self.duplicate.is_none() {
                    let mut at = self.path.clone();
                    if !at.is_empty() {
                        at.push(b':');
                    }
                    escape_key(key.as_bytes(), &mut at);
                    *self.duplicate = Some(at);
                }
                let start = self.keys.len() as u32;
                if !escape_key(key.as_bytes(), self.keys) {
                    *self.needs_sort = true;
                }
                if is_container(nodes[value]) {
                    self.keys.push(b':');
                }
                self.siblings.push(Sibling {
                    key: k as u32,
                    value: value as u32,
                    text: (start, self.keys.len() as u32),
                    skip: false,
                });
            }
            k = next;
        }
        k
    }

    /// Copies bytes aside, outside any entry, and returns their range.
    fn stash(&mut self, bytes: &[u8]) -> (u32, u32) {
        let start = self.aside.len() as u32;
        self.aside.extend_from_slice(bytes);
        (start, self.aside.len() as u32)
    }

    #[inline(never)]
    fn leaf(&mut self, flags: u8, scalar: Scalar, write: impl FnOnce(&mut Vec<u8>)) {
        if self.over || self.arena.len() + self.aside.len() + self.path.len() > self.limit {
            self.over = true;
            return;
        }
        let out = if flags & UNDER_SIGNATURE == 0 {
            if !self.arena.is_empty() {
                self.arena.push(b';');
            }
            &mut *self.arena
        } else {
            &mut *self.aside
        };
        let start = out.len() as u32;
        out.extend_from_slice(self.path);
        let path_end = out.len() as u32;
        out.push(b':');
        write(out);
        let end = out.len() as u32;
        self.entries.push(Entry {
            start,
            path_end,
            end,
            flags,
            scalar,
        });
    }
}

/// A non-empty object or array: its key is followed by `:` in every path under it.
fn is_container(node: Node<'_>) -> bool {
    matches!(node, Node::Object { len, .. } | Node::Array { len, .. } if len > 0)
}

/// Appends `key` with every literal ':' doubled (PHP/Python/Java since PE-702).
/// Returns whether the key is plain: no ':', whitespace or control byte, and no
/// leading zero before a digit (see `Walk::collect_keys`).
fn escape_key(key: &[u8], out: &mut Vec<u8>) -> bool {
    if key.iter().all(|&b| b > b' ' && b != b':') {
        out.extend_from_slice(key);
        return !(key.len() > 1 && key[0] == b'0' && key[1].is_ascii_digit());
    }
    for &b in key {
        if b == b':' {
            out.push(b':');
        }
        out.push(b);
    }
    false
}

/// Scalars as PHP's `(string)` cast writes them (spec §4): booleans `1`/`0`, null
/// empty, integers within i64 exact, anything else PHP float text.
fn write_static(node: StaticNode, out: &mut Vec<u8>) {
    match node {
        StaticNode::Null => {}
        StaticNode::Bool(b) => out.push(if b { b'1' } else { b'0' }),
        StaticNode::I64(v) => out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
        StaticNode::U64(v) => match i64::try_from(v) {
            Ok(v) => out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
            Err(_) => php_float(v as f64, out),
        },
        StaticNode::F64(v) => php_float(v, out),
    }
}

/// PHP `(string)$float` with `precision = 14`: `zend_gcvt(value, 14, '.', 'E')`.
pub fn php_float(v: f64, out: &mut Vec<u8>) {
    if v.is_nan() {
        out.extend_from_slice(b"NAN");
        return;
    }
    if v.is_sign_negative() {
        out.push(b'-');
    }
    if v.is_infinite() {
        out.extend_from_slice(b"INF");
        return;
    }
    if v == 0.0 {
        out.push(b'0');
        return;
    }
    // 14 significant digits, correctly rounded, as dtoa mode 2 gives them.
    let mut sci = [0u8; 32];
    let mut cursor = std::io::Cursor::new(&mut sci[..]);
    write!(cursor, "{:.13e}", v.abs()).expect("32 bytes hold any f64 in {:.13e}");
    let n = cursor.position() as usize;
    let text = &sci[..n];
    let e_at = text.iter().position(|&c| c == b'e').expect("exponent");
    let exp: i32 = std::str::from_utf8(&text[e_at + 1..])
        .expect("ascii")
        .parse()
        .expect("exponent digits");
    let mut digits = [0u8; 14];
    let mut nd = 0;
    for &c in &text[..e_at] {
        if c.is_ascii_digit() {
            digits[nd] = c;
            nd += 1;
        }
    }
    while nd > 1 && digits[nd - 1] == b'0' {
        nd -= 1;
    }
    let digits = &digits[..nd];
    // dtoa's decpt: value = 0.DIGITS x 10^decpt
    let decpt = exp + 1;
    if if decpt < 0 { decpt < -3 } else { decpt > 14 } {
        out.push(digits[0]);
        out.push(b'.');
        if digits.len() == 1 {
            out.push(b'0');
        } else {
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'E');
        let e = decpt - 1;
        out.push(if e < 0 { b'-' } else { b'+' });
        out.extend_from_slice(itoa::Buffer::new().format(e.unsigned_abs()).as_bytes());
    } else if decpt < 0 {
        out.extend_from_slice(b"0.");
        for _ in decpt..0 {
            out.push(b'0');
        }
        out.extend_from_slice(digits);
    } else {
        let decpt = decpt as usize;
        for i in 0..decpt {
            out.push(digits.get(i).copied().unwrap_or(b'0'));
        }
        if digits.len() > decpt {
            if decpt == 0 {
                out.push(b'0');
            }
            out.push(b'.');
            out.extend_from_slice(&digits[decpt..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn php(v: f64) -> String {
        let mut out = Vec::new();
        php_float(v, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn php_float_text() {
        assert_eq!(php(1.5), "1.5");
        assert_eq!(php(100.0), "100");
        assert_eq!(php(1e-7), "1.0E-7");
        assert_eq!(php(0.30000000000000004), "0.3");
        assert_eq!(php(1e21), "1.0E+21");
        assert_eq!(php(123456789.123), "123456789.123");
        assert_eq!(php(18446744073709551616.0), "1.844674407371E+19");
        assert_eq!(php(0.001), "0.001");
        assert_eq!(php(1e14), "1.0E+14");
        assert_eq!(php(1e13), "10000000000000");
        assert_eq!(php(-2.5), "-2.5");
    }

    #[test]
    fn rejects_non_objects_and_depth() {
        let mut c = Canonicalizer::new(4);
        assert_eq!(c.load(b"[1,2]"), Err(ParseError::NotObject));
        assert!(matches!(c.load(b"{\"a\":"), Err(ParseError::NotJson(_))));
        assert_eq!(
            c.load(br#"{"a":{"b":{"c":{"d":{"e":1}}}}}"#),
            Err(ParseError::TooDeep(4))
        );
        c.load(br#"{"a":1}"#).unwrap();
        assert_eq!(c.canonical(Order::Php), b"a:1");
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let mut c = Canonicalizer::default();
        c.load(br#"{"a":{"b":1},"c":2,"a":3}"#).unwrap();
        assert_eq!(c.canonical(Order::Php), b"a:3;c:2");
        c.load(br#"{"x":{"k":1,"k":{"m":2},"j":0,"k":3},"y":[{"a":1,"a":2}]}"#)
            .unwrap();
        assert_eq!(c.canonical(Order::Php), b"x:j:0;x:k:3;y:0:a:2");
        c.load(br#"{"signature":"s","a":1,"signature":7}"#).unwrap();
        assert_eq!(c.signature(), None);
        c.load(br#"{"signature":7,"a":1,"signature":"t"}"#).unwrap();
        assert_eq!(c.signature(), Some(&b"t"[..]));
    }

    #[test]
    fn duplicate_keys_are_reported_with_their_path() {
        let mut c = Canonicalizer::default();
        c.load(br#"{"a":1,"b":{"c":1}}"#).unwrap();
        assert_eq!(c.duplicate_key(), None);
        c.load(br#"{"a":1,"b":{"c":1,"x:y":2,"x:y":3}}"#).unwrap();
        assert_eq!(c.duplicate_key(), Some(&b"b:x::y"[..]));
        assert_eq!(c.canonical(Order::Php), b"a:1;b:c:1;b:x::y:3");
        // An escaped spelling of the same key is the same key.
        c.load(br#"{"amount":1,"\u0061mount":2}"#).unwrap();
        assert_eq!(c.duplicate_key(), Some(&b"amount"[..]));
        assert_eq!(c.get(b"amount"), Some(&b"2"[..]));
        // Large objects take the hash set: the same answer, in linear time.
        let mut big = String::from("{");
        for i in 0..5000 {
            big.push_str(&format!("\"k{i:05}\":{i},"));
        }
        big.push_str("\"k00007\":\"last\"}");
        c.load(big.as_bytes()).unwrap();
        assert_eq!(c.duplicate_key(), Some(&b"k00007"[..]));
        assert_eq!(c.get(b"k00007"), Some(&b"last"[..]));
        assert_eq!(c.get_typed(b"k00008"), Some((Scalar::Integer, &b"8"[..])));
    }

    /// A long key over a long array repeats the key in every entry: the canonical
    /// string is bounded by a multiple of the body instead.
    #[test]
    fn the_canonical_string_is_bounded() {
        let key = "k".repeat(30_000);
        let body = format!("{{\"{key}\":[{}1]}}", "1,".repeat(15_000));
        let mut c = Canonicalizer::default();
        let limit = body.len() * CANONICAL_FACTOR + CANONICAL_SLACK;
        assert_eq!(c.load(body.as_bytes()), Err(ParseError::TooLarge(limit)));
        // The same shape at platform size is fine.
        c.load(br#"{"items":[1,2,3],"payment":{"id":"p"}}"#)
            .unwrap();
        assert_eq!(
            c.canonical(Order::Php),
            b"items:0:1;items:1:2;items:2:3;payment:id:p"
        );
    }

    #[test]
    fn leaves_carry_their_json_type() {
        let mut c = Canonicalizer::default();
        c.load(br#"{"s":"1","i":-5,"u":18446744073709551615,"f":1.0,"e":1e3,"b":true,"n":null,"o":{"x":1}}"#)
            .unwrap();
        let t = |p: &[u8]| c.get_typed(p).map(|(s, _)| s);
        assert_eq!(t(b"s"), Some(Scalar::String));
        assert_eq!(t(b"i"), Some(Scalar::Integer));
        assert_eq!(
            t(b"u"),
            Some(Scalar::Float),
            "beyond i64 PHP writes a float"
        );
        assert_eq!(t(b"f"), Some(Scalar::Float));
        assert_eq!(t(b"e"), Some(Scalar::Float));
        assert_eq!(t(b"b"), Some(Scalar::Bool));
        assert_eq!(t(b"n"), Some(Scalar::Null));
        assert_eq!(t(b"o"), None);
        assert!(c.has_children(b"o") && !c.has_children(b"s") && !c.has_children(b"x"));
        // Leaves under `signature` are kept aside: never read as the body's fields.
        c.load(br#"{"signature":{"a":"long value kept aside"},"o":{"x":1}}"#)
            .unwrap();
        assert!(!c.has_children(b"signature") && c.has_children(b"o"));
    }

    #[test]
    fn signatures_are_found_and_removed() {
        let mut c = Canonicalizer::default();
        c.load(br#"{"general":{"project_id":1,"signature":"g"},"x":{"signature":"n"}}"#)
            .unwrap();
        assert_eq!(c.signature(), Some(&b"g"[..]));
        assert_eq!(c.canonical(Order::Php), b"general:project_id:1");
        assert_eq!(
            c.canonical(Order::RootSignatureOnly),
            b"general:project_id:1;x:signature:n"
        );
        c.load(br#"{"signature":"r","general":{"signature":"g"}}"#)
            .unwrap();
        assert_eq!(c.signature(), Some(&b"r"[..]));
        assert_eq!(
            c.canonical(Order::RootSignatureOnly),
            b"general:signature:g"
        );
    }

    #[test]
    fn get_reads_signed_leaves() {
        let mut c = Canonicalizer::default();
        c.load(br#"{"project_id":12,"payment":{"id":"p1","x":null}}"#)
            .unwrap();
        assert_eq!(c.get(b"project_id"), Some(&b"12"[..]));
        assert_eq!(c.get(b"payment:id"), Some(&b"p1"[..]));
        assert_eq!(c.get(b"payment:x"), Some(&b""[..]));
        assert_eq!(c.get(b"payment"), None);
    }

    /// The walk's order, when it claims to be PHP's, equals the global natural sort,
    /// on keys built to hit digits, leading zeros, whitespace, ':' and prefixes.
    #[test]
    fn walk_order_equals_the_global_sort() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        fn value(depth: u32, next: &mut dyn FnMut(u64) -> u64, out: &mut String) {
            const KEYS: [&str; 16] = [
                "a", "a0", "a1", "a10", "a2", "0", "01", "1", "10", "2", "b", "a:x", "a b", "a_",
                "A", "ab",
            ];
            match if depth > 2 { 3 } else { next(5) } {
                0 | 1 => {
                    out.push('{');
                    for i in 0..next(5) {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(&format!("{:?}:", KEYS[next(16) as usize]));
                        value(depth + 1, next, out);
                    }
                    out.push('}');
                }
                2 => {
                    out.push('[');
                    for i in 0..next(13) {
                        if i > 0 {
                            out.push(',');
                        }
                        value(depth + 1, next, out);
                    }
                    out.push(']');
                }
                _ => out.push_str(&next(100).to_string()),
            }
        }
        let mut c = Canonicalizer::default();
        let (mut fast, mut total) = (0, 0);
        while total < 3000 {
            let mut body = String::new();
            value(0, &mut next, &mut body);
            if !body.starts_with('{') {
                continue;
            }
            total += 1;
            c.load(body.as_bytes()).unwrap();
            if c.needs_sort {
                continue;
            }
            fast += 1;
            let walked = c.canonical(Order::Php).to_vec();
            c.needs_sort = true;
            let sorted = c.canonical(Order::Php).to_vec();
            assert_eq!(
                String::from_utf8_lossy(&walked),
                String::from_utf8_lossy(&sorted),
                "{body}"
            );
        }
        assert!(
            fast > 500,
            "only {fast} of {total} bodies took the walk's order"
        );
    }
}
