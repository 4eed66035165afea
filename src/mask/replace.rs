//! What a detected value is replaced with: `label` (`[EMAIL]`), `partial`
//! (`[CREDIT_CARD …1111]`, the last four letters or digits) or `hash`
//! (`[EMAIL:3fa94c1be0d2]`, a keyed HMAC-SHA256 of the normalised value, so
//! the same value always maps to the same token and audit records can be
//! joined without storing the value).

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::fmt::Write;

/// A replacement style, per policy and optionally per entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    #[default]
    Label,
    Partial,
    Hash,
}

/// Writes replacements. `styles[i]` is the style of entity `i`.
#[derive(Clone)]
pub struct Replacer {
    names: Vec<String>,
    styles: Vec<Style>,
    hmac: Option<Hmac<Sha256>>,
}

impl Replacer {
    /// `hash_key` is required when any style is `Hash` (checked at config load).
    pub fn new(names: Vec<String>, styles: Vec<Style>, hash_key: Option<&[u8]>) -> Self {
        debug_assert_eq!(names.len(), styles.len());
        let hmac =
            hash_key.map(|k| Hmac::<Sha256>::new_from_slice(k).expect("HMAC takes any key length"));
        Replacer {
            names,
            styles,
            hmac,
        }
    }

    /// Appends the replacement for `value`, an instance of entity `entity`.
    pub fn write(&self, entity: usize, value: &str, out: &mut String) {
        let name = &self.names[entity];
        match (self.styles[entity], &self.hmac) {
            (Style::Label, _) => {
                out.push('[');
                out.push_str(name);
                out.push(']');
            }
            (Style::Partial, _) => {
                let tail: Vec<char> = value
                    .chars()
                    .rev()
                    .filter(char::is_ascii_alphanumeric)
                    .take(4)
                    .collect();
                out.push('[');
                out.push_str(name);
                out.push_str(" …");
                out.extend(tail.iter().rev());
                out.push(']');
            }
            (Style::Hash, Some(mac)) => {
                let mut mac = mac.clone();
                mac.update(name.as_bytes());
                mac.update(b"\0");
                for c in normalise(name, value) {
                    let mut b = [0u8; 4];
                    mac.update(c.encode_utf8(&mut b).as_bytes());
                }
                let digest = mac.finalize().into_bytes();
                out.push('[');
                out.push_str(name);
                out.push(':');
                for b in &digest[..6] {
                    let _ = write!(out, "{b:02x}");
                }
                out.push(']');
            }
            // Unreachable with a validated config; never fall back to the value.
            (Style::Hash, None) => {
                out.push('[');
                out.push_str(name);
                out.push(']');
            }
        }
    }
}

/// The form hashed: separators dropped from numbers, emails lower-cased.
fn normalise<'a>(name: &str, value: &'a str) -> Box<dyn Iterator<Item = char> + 'a> {
    match name {
        "CREDIT_CARD" | "PHONE" | "IBAN" | "US_SSN" => Box::new(
            value
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '+')
                .map(|c| c.to_ascii_uppercase()),
        ),
        "EMAIL" => Box::new(value.chars().map(|c| c.to_ascii_lowercase())),
        _ => Box::new(value.chars()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replacer(style: Style) -> Replacer {
        Replacer::new(
            vec!["EMAIL".into(), "CREDIT_CARD".into()],
            vec![style, style],
            Some(b"k"),
        )
    }

    fn one(r: &Replacer, entity: usize, v: &str) -> String {
        let mut s = String::new();
        r.write(entity, v, &mut s);
        s
    }

    #[test]
    fn styles() {
        assert_eq!(one(&replacer(Style::Label), 0, "a@b.co"), "[EMAIL]");
        assert_eq!(
            one(&replacer(Style::Partial), 1, "4111 1111 1111 1111"),
            "[CREDIT_CARD …1111]"
        );
        let h = replacer(Style::Hash);
        let a = one(&h, 1, "4111 1111 1111 1111");
        assert_eq!(
            a,
            one(&h, 1, "4111-1111-1111-1111"),
            "separators do not change the token"
        );
        assert_ne!(a, one(&h, 1, "5500 0000 0000 0004"));
        assert_eq!(
            one(&h, 0, "Jane@Example.com"),
            one(&h, 0, "jane@example.com")
        );
        assert!(
            a.starts_with("[CREDIT_CARD:") && a.len() == "[CREDIT_CARD:]".len() + 12,
            "{a}"
        );
        let other_key = Replacer::new(
            vec!["EMAIL".into(), "CREDIT_CARD".into()],
            vec![Style::Hash; 2],
            Some(b"k2"),
        );
        assert_ne!(a, one(&other_key, 1, "4111 1111 1111 1111"), "keyed");
    }
}
