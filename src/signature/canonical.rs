//! The canonical string (spec §3–§7): one simd-json parse of the body into a tape,
//! one walk that flattens it into `path:value` entries in a reused arena, then a sort
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
}

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
    arena: Vec<u8>,
    entries: Vec<Entry>,
    order: Vec<u32>,
    out: Vec<u8>,
    signatures: Signatures,
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
            entries: Vec::with_capacity(64),
            order: Vec::with_capacity(64),
            out: Vec::with_capacity(2048),
            signatures: Signatures::default(),
        }
    }

    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    /// Parses `body` once and flattens it. Afterwards `signature`, `get` and
    /// `canonical` read the result until the next `load`.
    pub fn load(&mut self, body: &[u8]) -> Result<(), ParseError> {
        self.arena.clear();
        self.entries.clear();
        self.path.clear();
        self.signatures = Signatures::default();

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
                        entries: &mut self.entries,
                        signatures: &mut self.signatures,
                    };
                    walk.value(&tape.0, 0, 0, 0);
                    Ok(())
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
            .map(|(s, e)| &self.arena[s as usize..e as usize])
    }

    /// The value of the first signed leaf at `path` (keys joined with `:`, as in the
    /// canonical string), e.g. `payment:id`. Null reads as empty.
    pub fn get(&self, path: &[u8]) -> Option<&[u8]> {
        self.entries
            .iter()
            .filter(|e| e.flags == 0)
            .find(|e| &self.arena[e.start as usize..e.path_end as usize] == path)
            .map(|e| &self.arena[e.path_end as usize + 1..e.end as usize])
    }

    /// The canonical string in `order`. Valid until the next call.
    pub fn canonical(&mut self, order: Order) -> &[u8] {
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
        let arena = &self.arena;
        let entries = &self.entries;
        let path = |i: u32| {
            let e = entries[i as usize];
            &arena[e.start as usize..e.path_end as usize]
        };
        let whole = |i: u32| {
            let e = entries[i as usize];
            &arena[e.start as usize..e.end as usize]
        };
        // Unstable sort with the walk index as tie-break is a stable sort that needs
        // no scratch allocation.
        let by = |a: &u32, b: &u32, cmp: &dyn Fn(u32, u32) -> Ordering| cmp(*a, *b).then(a.cmp(b));
        match order {
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
    entries: &'a mut Vec<Entry>,
    signatures: &'a mut Signatures,
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
                let mut k = i + 1;
                for _ in 0..len {
                    let next = k + 1 + span(nodes, k + 1);
                    let Node::String(key) = nodes[k] else {
                        unreachable!("simd-json object keys are strings")
                    };
                    // Duplicate keys: the last one wins, as in every SDK's JSON decoder.
                    if key != "frame_mode" && !Self::repeated_later(nodes, key, next, i) {
                        let mark = self.path.len();
                        self.push_key(key.as_bytes());
                        let mut child = flags;
                        if key == "signature" {
                            child |= UNDER_SIGNATURE;
                            if let Node::String(s) = nodes[k + 1] {
                                if depth == 0 {
                                    child |= ROOT_SIGNATURE;
                                    self.signatures.root = Some(self.stash(s.as_bytes()));
                                } else if depth == 1 && &self.path[..mark] == b"general" {
                                    child |= GENERAL_SIGNATURE;
                                    self.signatures.general = Some(self.stash(s.as_bytes()));
                                }
                            }
                        }
                        self.value(nodes, k + 1, depth + 1, child);
                        self.path.truncate(mark);
                    }
                    k = next;
                }
                k
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
                self.leaf(flags, |out| out.extend_from_slice(s.as_bytes()));
                i + 1
            }
            Node::Static(node) => {
                self.leaf(flags, |out| write_static(node, out));
                i + 1
            }
        }
    }

    /// True when `key` appears again among the remaining pairs of the object at `obj`.
    fn repeated_later(nodes: &[Node<'_>], key: &str, mut k: usize, obj: usize) -> bool {
        let end = obj + span(nodes, obj);
        while k < end {
            if let Node::String(other) = nodes[k]
                && other == key
            {
                return true;
            }
            k += 1 + span(nodes, k + 1);
        }
        false
    }

    fn push_key(&mut self, key: &[u8]) {
        if !self.path.is_empty() {
            self.path.push(b':');
        }
        // A literal ':' in a key is doubled at every depth (PHP/Python/Java since PE-702).
        if memchr::memchr(b':', key).is_none() {
            self.path.extend_from_slice(key);
        } else {
            for &b in key {
                if b == b':' {
                    self.path.push(b':');
                }
                self.path.push(b);
            }
        }
    }

    /// Copies bytes into the arena outside any entry and returns their range.
    fn stash(&mut self, bytes: &[u8]) -> (u32, u32) {
        let start = self.arena.len() as u32;
        self.arena.extend_from_slice(bytes);
        (start, self.arena.len() as u32)
    }

    fn leaf(&mut self, flags: u8, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.arena.len() as u32;
        self.arena.extend_from_slice(self.path);
        let path_end = self.arena.len() as u32;
        self.arena.push(b':');
        write(self.arena);
        self.entries.push(Entry {
            start,
            path_end,
            end: self.arena.len() as u32,
            flags,
        });
    }
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
}
