//! Writing JSON by hand where the profile says serde_json's writer costs:
//! strings escaped eight bytes at a time, and objects whose keys are
//! written as they stand. The bytes are exactly serde_json's (compact
//! form, the same escapes): the tests hold every ASCII character and random
//! strings against `serde_json::to_string`.

/// Bytes at or above this need no escape, apart from `"` and `\`.
const FIRST_PLAIN: u64 = 0x20;
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of `w` is below 0x20, `"` or `\` (no false negatives;
/// a false positive only sends that word through the byte loop).
#[inline]
fn needs_escape(w: u64) -> bool {
    let below = w.wrapping_sub(ONES * FIRST_PLAIN) & !w;
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    let zero = |x: u64| x.wrapping_sub(ONES) & !x;
    (below | zero(quote) | zero(backslash)) & HIGHS != 0
}

/// Appends `s` as a JSON string, quotes included, escaped as serde_json
/// escapes it: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other control
/// characters as `\u00xx`; everything else (non-ASCII too) as it is.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(word) = bytes.get(i..i + 8) {
            let w = u64::from_le_bytes(word.try_into().expect("eight bytes"));
            if !needs_escape(w) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        i += 1;
        let unicode: [u8; 6];
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let (hi, lo) = (HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]);
                unicode = [b'\\', b'u', b'0', b'0', hi, lo];
                &unicode
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i - 1]);
        out.extend_from_slice(escape);
        run = i;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// A JSON object being written: `{`, then `"key":value` pairs separated by
/// commas, then `}` from [`Object::end`]. Keys are written as they stand,
/// so they must need no escape: the callers' are literals, or entity names,
/// which configuration checks limit to `[A-Z][A-Z0-9_]*`.
pub struct Object<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> Object<'a> {
    pub fn start(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Object { out, empty: true }
    }

    /// Goes on with an object whose `{` and first pairs `out` already holds.
    pub fn resume(out: &'a mut Vec<u8>) -> Self {
        Object { out, empty: false }
    }

    /// Starts the pair `"key":` and returns the buffer for its value.
    pub fn key(&mut self, key: &str) -> &mut Vec<u8> {
        debug_assert!(key.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\'));
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    pub fn str(&mut self, key: &str, value: &str) {
        write_str(self.key(key), value);
    }

    /// `null` for `None`.
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(v) => self.str(key, v),
            None => self.key(key).extend_from_slice(b"null"),
        }
    }

    /// Nothing for `None`: the key is left out.
    pub fn some_str(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.str(key, v);
        }
    }

    pub fn uint(&mut self, key: &str, value: u64) {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(value);
        self.key(key).extend_from_slice(digits.as_bytes());
    }

    pub fn bool(&mut self, key: &str, value: bool) {
        let v: &[u8] = if value { b"true" } else { b"false" };
        self.key(key).extend_from_slice(v);
    }

    /// Any other value, through serde_json.
    pub fn serde(&mut self, key: &str, value: &impl serde::Serialize) {
        serde_json::to_writer(self.key(key), value).expect("records serialise");
    }

    /// Writes the closing `}`.
    pub fn end(self) {
        self.out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ours(s: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_char_below_0x80_and_some_above_escape_as_serde_json_does() {
        for c in (0u32..0x80).chain([0xa0, 0x7ff, 0x800, 0xffff, 0x10000, 0x10ffff]) {
            let c = char::from_u32(c).unwrap();
            // Alone, inside a long plain run, and at each place in a word.
            for s in [
                c.to_string(),
                format!("abcdefgh{c}ijklmnopqrstuvwx"),
                format!("{c}{c}{c}{c}{c}{c}{c}{c}{c}"),
                format!("0123456{c}"),
                format!("01234567{c}"),
            ] {
                assert_eq!(ours(&s), serde_json::to_string(&s).unwrap(), "{s:?}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        #[test]
        fn strings_escape_as_serde_json_does(s in "(?s).{0,80}", t in "[\\x00-\\x7f]{0,40}") {
            prop_assert_eq!(ours(&s), serde_json::to_string(&s).unwrap());
            prop_assert_eq!(ours(&t), serde_json::to_string(&t).unwrap());
        }
    }

    #[test]
    fn objects_write_compact_json() {
        let mut out = Vec::new();
        let mut o = Object::start(&mut out);
        o.str("a", "x\"y");
        o.opt_str("b", None);
        o.some_str("skipped", None);
        o.some_str("f", Some("g"));
        o.uint("c", 18_446_744_073_709_551_615);
        o.bool("d", false);
        o.serde("e", &[1.5, 0.001]);
        o.end();
        let want = serde_json::json!({"a": "x\"y", "b": null, "f": "g", "c": u64::MAX, "d": false, "e": [1.5, 0.001]});
        assert_eq!(out, serde_json::to_vec(&want).unwrap());
        let mut empty = Vec::new();
        Object::start(&mut empty).end();
        assert_eq!(empty, b"{}");
    }
}
