//! Mutations: byte-level (flips, interesting values, insertions, deletions, splices) for binary
//! formats, and structure-aware ones for JSON and TOML (a random node of the parsed document is
//! changed and the document written back), which reach deeper than bytes into validation code.

/// xorshift64*: deterministic from the seed, good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const INTERESTING_BYTES: [u8; 9] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x10, 0x20, 0x40, 0xfe];
const INTERESTING_INTS: [i64; 14] = [
    0,
    -1,
    1,
    7,
    8,
    31,
    32,
    127,
    -128,
    255,
    65536,
    i32::MAX as i64,
    i32::MIN as i64,
    i64::MAX,
];

/// One to four byte-level mutations of `data`; `other` is another corpus entry for splicing.
pub fn bytes(data: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut d = data.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = d.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                d[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                d[i] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
            }
            2 if len >= 4 => {
                // A little-endian 32-bit interesting value (lengths, dims, offsets).
                let i = rng.below(len - 3);
                let v = INTERESTING_INTS[rng.below(INTERESTING_INTS.len())] as u32;
                d[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            3 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let ins: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(i..i, ins);
            }
            4 if len > 1 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                d.drain(i..i + n);
            }
            5 if len > 1 => {
                // Duplicate a range (repeated records, nested structures).
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let chunk = d[i..i + n].to_vec();
                let at = rng.below(d.len() + 1);
                d.splice(at..at, chunk);
            }
            6 if len > 0 => d.truncate(rng.below(len)),
            7 if !other.is_empty() => {
                // Splice: our head, the other's tail.
                let a = rng.below(len + 1);
                let b = rng.below(other.len());
                d.truncate(a);
                d.extend_from_slice(&other[b..]);
            }
            _ if len > 0 => {
                let i = rng.below(len);
                d[i] = d[i].wrapping_add(rng.below(7) as u8).wrapping_sub(3);
            }
            _ => d.push(rng.next() as u8),
        }
    }
    d
}

/// Text mutations on top of bytes: numbers replaced by interesting ones, lines deleted or
/// repeated, tokens swapped (what a hand edit of a prototxt or config gets wrong).
pub fn text(data: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let Ok(s) = std::str::from_utf8(data) else {
        return bytes(data, other, rng);
    };
    match rng.below(4) {
        0 => {
            let mut lines: Vec<&str> = s.lines().collect();
            if lines.is_empty() {
                return bytes(data, other, rng);
            }
            let i = rng.below(lines.len());
            if rng.chance(2) {
                lines.remove(i);
            } else {
                let l = lines[i];
                let at = rng.below(lines.len() + 1);
                lines.insert(at, l);
            }
            lines.join("\n").into_bytes()
        }
        1 | 2 => {
            // Replace the k-th number.
            let spans = number_spans(s);
            if spans.is_empty() {
                return bytes(data, other, rng);
            }
            let (a, b) = spans[rng.below(spans.len())];
            let repl = match rng.below(5) {
                0 => "1e309".to_string(),
                1 => "-0.5".to_string(),
                2 => "NaN".to_string(),
                _ => INTERESTING_INTS[rng.below(INTERESTING_INTS.len())].to_string(),
            };
            format!("{}{}{}", &s[..a], repl, &s[b..]).into_bytes()
        }
        _ => bytes(data, other, rng),
    }
}

/// Byte ranges of decimal numbers in `s`.
fn number_spans(s: &str) -> Vec<(usize, usize)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() || (b[i] == b'-' && i + 1 < b.len() && b[i + 1].is_ascii_digit()) {
            let start = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.' || b[i] == b'e') {
                i += 1;
            }
            out.push((start, i));
        } else {
            i += 1;
        }
    }
    out
}

/// A JSON document with one node changed (falls back to text mutations on invalid JSON).
pub fn json(data: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return text(data, other, rng);
    };
    if rng.chance(8) {
        return text(data, other, rng);
    }
    let n = count_json(&v);
    let target = rng.below(n);
    let mut k = 0;
    mutate_json(&mut v, target, &mut k, rng);
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Long arrays of numbers (weights) count as one node, so mutations mostly hit the structure.
fn is_bulk(v: &serde_json::Value) -> bool {
    matches!(v, serde_json::Value::Array(a) if a.len() > 16 && a.iter().all(serde_json::Value::is_number))
}

fn count_json(v: &serde_json::Value) -> usize {
    1 + match v {
        _ if is_bulk(v) => 0,
        serde_json::Value::Array(a) => a.iter().map(count_json).sum(),
        serde_json::Value::Object(o) => o.values().map(count_json).sum(),
        _ => 0,
    }
}

fn mutate_json(v: &mut serde_json::Value, target: usize, k: &mut usize, rng: &mut Rng) -> bool {
    use serde_json::Value;
    if *k == target {
        *v = match std::mem::take(v) {
            Value::Number(_) | Value::Null | Value::Bool(_) => match rng.below(4) {
                0 => Value::from(INTERESTING_INTS[rng.below(INTERESTING_INTS.len())]),
                1 => Value::from(-0.5),
                2 => Value::from("x"),
                _ => Value::from(rng.below(64) as i64 - 32),
            },
            Value::String(s) => match rng.below(3) {
                0 => Value::from(format!("{s}_")),
                1 => Value::from(""),
                _ => Value::from(7),
            },
            Value::Array(mut a) => {
                if !a.is_empty() {
                    let i = rng.below(a.len());
                    match rng.below(4) {
                        3 => {
                            a[i] = Value::from(INTERESTING_INTS[rng.below(INTERESTING_INTS.len())])
                        }
                        0 => {
                            a.remove(i);
                        }
                        1 => {
                            let e = a[i].clone();
                            a.insert(i, e);
                        }
                        _ => {
                            let j = rng.below(a.len());
                            a.swap(i, j);
                        }
                    }
                }
                Value::Array(a)
            }
            Value::Object(mut o) => {
                if !o.is_empty() {
                    let key = o
                        .keys()
                        .nth(rng.below(o.len()))
                        .cloned()
                        .unwrap_or_default();
                    if rng.chance(2) {
                        o.remove(&key);
                    } else {
                        let val = o.get(&key).cloned().unwrap_or_default();
                        o.insert(format!("{key}_"), val);
                    }
                }
                Value::Object(o)
            }
        };
        return true;
    }
    *k += 1;
    if is_bulk(v) {
        return false;
    }
    match v {
        Value::Array(a) => a.iter_mut().any(|e| mutate_json(e, target, k, rng)),
        Value::Object(o) => o.values_mut().any(|e| mutate_json(e, target, k, rng)),
        _ => false,
    }
}

/// A TOML document with one node changed, through its JSON form.
pub fn toml(data: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let parsed = std::str::from_utf8(data)
        .ok()
        .and_then(|s| s.parse::<toml::Table>().ok());
    let Some(t) = parsed.filter(|_| !rng.chance(8)) else {
        return text(data, other, rng);
    };
    let Ok(j) = serde_json::to_vec(&t) else {
        return text(data, other, rng);
    };
    let mutated = json(&j, other, rng);
    serde_json::from_slice::<toml::Table>(&mutated)
        .ok()
        .and_then(|t| toml::to_string(&t).ok())
        .map(String::into_bytes)
        .unwrap_or_else(|| text(data, other, rng))
}
