//! Validators that separate real identifiers from lookalikes.
//!
//! `detect.rs` finds candidates with one regex automaton; the functions here decide, from
//! the candidate's bytes, whether it is the real thing: Luhn and issuer ranges for cards,
//! mod-97 and the per-country length for IBANs, SSA rules for SSNs, octet and IPv6 parsing
//! for addresses, digit counts for phone numbers, and structural checks for secrets.
//!
//! Streaming contract: a validator reads the candidate's bytes and at most the one byte
//! before it (`prev`; the stream masker keeps one released char as context), never the
//! bytes after it, which may not have arrived yet. Where a lookalike can only be told by
//! what follows (`1.2.3.4.5`, `415-555-0132-99`), the pattern itself consumes a two-byte
//! "probe" and the validator rejects candidates that end in it; where it needs more
//! context before (`version 1.2.3.4`), the pattern consumes that context too.
//!
//! Not for: finding candidates, or anything that allocates — every check here is a pass
//! over at most a few hundred bytes on the stack.

use std::net::Ipv6Addr;
use std::str::FromStr;

/// The candidate text, `m`, ends with a separator followed by one digit: the probe that a
/// pattern consumes when a "number" continues past the entity's shape (`415-555-0132-9`).
fn ends_with_probe(m: &[u8], seps: &[u8]) -> bool {
    matches!(m, [.., s, d] if seps.contains(s) && d.is_ascii_digit())
}

fn count_digits(m: &[u8]) -> usize {
    m.iter().filter(|b| b.is_ascii_digit()).count()
}

/// EMAIL: local part without `..` or a trailing dot, domain ≤ 253 bytes with labels that
/// neither start nor end with `-`, and not a file name such as `icon@2x.png`.
pub(crate) fn email(m: &[u8]) -> bool {
    let Some(at) = m.iter().position(|&b| b == b'@') else {
        return false;
    };
    let (local, domain) = (&m[..at], &m[at + 1..]);
    if local.ends_with(b".") || local.windows(2).any(|w| w == b"..") || domain.len() > 253 {
        return false;
    }
    if domain
        .split(|&b| b == b'.')
        .any(|l| l.starts_with(b"-") || l.ends_with(b"-"))
    {
        return false;
    }
    let tld = domain.rsplit(|&b| b == b'.').next().unwrap_or_default();
    // File extensions that are not delegated TLDs (`logo@2x.png`, `icon@3x.webp`).
    const FILE_EXTS: &[&[u8]] = &[
        b"png", b"jpg", b"jpeg", b"gif", b"svg", b"webp", b"bmp", b"ico", b"tif", b"tiff", b"pdf",
        b"txt", b"json", b"yaml", b"yml", b"toml", b"html", b"htm", b"css", b"js", b"mjs", b"ts",
        b"tsx", b"jsx", b"lock", b"log", b"csv", b"exe", b"dll", b"wasm", b"map", b"heic", b"avif",
    ];
    !FILE_EXTS.iter().any(|e| tld.eq_ignore_ascii_case(e))
}

/// PHONE: E.164 allows at most 15 digits. International numbers (`+…`) need 9–15 digits
/// counting the country code; trunk-prefixed national numbers (`0…`) 9–12; North American
/// ones 10, or 11 with the leading `1`. A `+` glued to a word or number (`x+1…`, `2+2…`)
/// and national numbers that continue with `-digit`/`.digit` (the probe) are rejected.
pub(crate) fn phone(prev: Option<u8>, m: &[u8]) -> bool {
    let digits = count_digits(m);
    match m.first() {
        Some(b'+') => {
            let glued = matches!(prev, Some(b) if b.is_ascii_alphanumeric() || b == b'+');
            !glued && (9..=15).contains(&digits)
        }
        Some(_) if ends_with_probe(m, b".-") => false,
        Some(b'0') => (9..=12).contains(&digits),
        Some(_) => digits == 10 || digits == 11,
        None => false,
    }
}

/// CREDIT_CARD: 13–19 digits, Luhn checksum, and a length that fits the issuer range
/// (Visa 4: 13/16/19; Mastercard 51–55 and 2221–2720: 16; Amex 34/37: 15; Diners
/// 30/36/38/39: 14–19; JCB 3528–3589: 16–19; Maestro 50/56–58 and all 6-series
/// (Discover, UnionPay, RuPay, Maestro): 13–19).
pub(crate) fn credit_card(m: &[u8]) -> bool {
    let mut d = [0u8; 19];
    let mut n = 0;
    for &b in m {
        if b.is_ascii_digit() {
            if n == d.len() {
                return false;
            }
            d[n] = b - b'0';
            n += 1;
        }
    }
    if !(13..=19).contains(&n) || !luhn(&d[..n]) {
        return false;
    }
    let p2 = u32::from(d[0]) * 10 + u32::from(d[1]);
    let p4 = p2 * 100 + u32::from(d[2]) * 10 + u32::from(d[3]);
    match d[0] {
        4 => matches!(n, 13 | 16 | 19),
        2 => (2221..=2720).contains(&p4) && n == 16,
        5 if (51..=55).contains(&p2) => n == 16,
        5 => matches!(p2, 50 | 56..=58),
        3 => match p2 {
            34 | 37 => n == 15,
            35 => (3528..=3589).contains(&p4) && n >= 16,
            30 | 36 | 38 | 39 => n >= 14,
            _ => false,
        },
        6 => true,
        _ => false,
    }
}

/// The Luhn (mod 10) checksum over decimal digit values (0–9), rightmost digit is the
/// check digit.
fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// US_SSN `AAA-GG-SSSS` (or space separated): area not 000, 666 or 900–999, group not 00,
/// serial not 0000, exactly nine digits (the pattern's probe makes `123-45-6789-0` longer),
/// and not the tail of a longer dashed number.
pub(crate) fn us_ssn(m: &[u8]) -> bool {
    if m.len() != 11 {
        return false;
    }
    let num = |r: std::ops::Range<usize>| {
        m[r].iter().try_fold(0u32, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
        })
    };
    let (Some(area), Some(group), Some(serial)) = (num(0..3), num(4..6), num(7..11)) else {
        return false;
    };
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// Registered IBAN lengths per country (SWIFT IBAN registry).
const IBAN_LENGTHS: &[(&[u8; 2], u8)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BI", 27),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DJ", 27),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FK", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"LY", 25),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MN", 20),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NI", 28),
    (b"NL", 18),
    (b"NO", 15),
    (b"OM", 23),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"RU", 33),
    (b"SA", 24),
    (b"SC", 31),
    (b"SD", 18),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"SO", 23),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
    (b"YE", 30),
];

/// IBAN: known country, the registered length for it, and ISO 7064 mod 97-10 check
/// (rearranged number mod 97 == 1). Spaces are ignored.
pub(crate) fn iban(m: &[u8]) -> bool {
    let compact = || m.iter().copied().filter(|&b| b != b' ');
    let len = compact().count();
    let Some(&(_, want)) = IBAN_LENGTHS.iter().find(|(cc, _)| m.starts_with(&cc[..])) else {
        return false;
    };
    if len != usize::from(want) {
        return false;
    }
    // Move the country code and check digits to the end, then fold mod 97.
    let rem = compact()
        .skip(4)
        .chain(compact().take(4))
        .try_fold(0u32, |rem, b| match b {
            b'0'..=b'9' => Some((rem * 10 + u32::from(b - b'0')) % 97),
            b'A'..=b'Z' => Some((rem * 100 + u32::from(b - b'A') + 10) % 97),
            _ => None,
        });
    rem == Some(1)
}

/// IP_ADDRESS. IPv4: exactly four decimal octets 0–255 without leading zeros; a longer
/// dotted number (`1.2.3.4.5`, caught by the probe) and a version string (`version 1.2.3.4`,
/// `ver. 1.2.3.4`, `v 1.2.3.4`, matched by a pattern that includes the word, so the
/// candidate starts with a letter) are rejected. IPv6: parses as `Ipv6Addr`, has at least
/// two colons and one hex digit, and is not `a::b`-shaped code (a letters-only address
/// needs ≥ 3 colons); a `::`-led form glued to a word (`std::io`) is rejected.
pub(crate) fn ip_address(prev: Option<u8>, m: &[u8]) -> bool {
    if m.contains(&b':') {
        return ipv6(prev, m);
    }
    let mut parts = 0;
    for octet in m.split(|&b| b == b'.') {
        parts += 1;
        let ok = matches!(octet.len(), 1..=3)
            && octet.iter().all(u8::is_ascii_digit)
            && !(octet.len() > 1 && octet[0] == b'0')
            && octet
                .iter()
                .fold(0u32, |a, &b| a * 10 + u32::from(b - b'0'))
                <= 255;
        if !ok {
            return false;
        }
    }
    parts == 4
}

fn ipv6(prev: Option<u8>, m: &[u8]) -> bool {
    let colons = m.iter().filter(|&&b| b == b':').count();
    let has_hex = m.iter().any(u8::is_ascii_hexdigit);
    let has_digit = m.iter().any(u8::is_ascii_digit);
    let glued = m[0] == b':' && matches!(prev, Some(b) if b.is_ascii_alphanumeric() || b == b'_');
    if colons < 2 || !has_hex || (!has_digit && colons < 3) || glued {
        return false;
    }
    std::str::from_utf8(m).is_ok_and(|s| Ipv6Addr::from_str(s).is_ok())
}

/// SECRET: the prefix-specific patterns are precise; only the free-form ones get a check.
/// JWTs need a header that decodes to JSON with an `"alg"` member; OpenAI/Anthropic style
/// `sk-` keys need a lowercase letter and a digit or uppercase letter in the body (so
/// `sk-this-is-not-a-real-key-at-all` survives); Slack tokens need a digit.
pub(crate) fn secret(m: &[u8]) -> bool {
    if m.starts_with(b"eyJ") {
        return jwt_header_has_alg(m);
    }
    if let Some(body) = m.strip_prefix(b"sk-") {
        return body.iter().any(u8::is_ascii_lowercase)
            && body
                .iter()
                .any(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
    }
    if m.starts_with(b"xox") {
        return m[4..].iter().any(u8::is_ascii_digit);
    }
    true
}

/// Decodes the first (base64url) segment of a JWT on the fly and looks for `"alg"`.
fn jwt_header_has_alg(m: &[u8]) -> bool {
    let header = m.split(|&b| b == b'.').next().unwrap_or_default();
    let (mut bits, mut nbits, mut window) = (0u32, 0u32, [0u8; 5]);
    for &c in header {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return false,
        };
        bits = (bits << 6) | u32::from(v);
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            window.rotate_left(1);
            window[4] = (bits >> nbits) as u8;
            if &window == b"\"alg\"" {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_known_values() {
        let digits = |s: &str| s.bytes().map(|b| b - b'0').collect::<Vec<_>>();
        assert!(luhn(&digits("4111111111111111")));
        assert!(luhn(&digits("79927398713")));
        assert!(!luhn(&digits("4111111111111112")));
        assert!(!luhn(&digits("79927398710")));
    }

    #[test]
    fn iban_check_digits_and_lengths() {
        assert!(iban(b"DE89370400440532013000"));
        assert!(iban(b"DE89 3704 0044 0532 0130 00"));
        assert!(iban(b"GB82WEST12345698765432"));
        assert!(!iban(b"DE88370400440532013000"), "wrong check digits");
        assert!(!iban(b"DE8937040044053201300"), "wrong length for DE");
        assert!(!iban(b"US89370400440532013000"), "not an IBAN country");
    }

    #[test]
    fn ssn_rules() {
        assert!(us_ssn(b"536-90-4399"));
        assert!(us_ssn(b"536 90 4399"));
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "999-12-3456",
            "123-00-4567",
            "123-45-0000",
        ] {
            assert!(!us_ssn(bad.as_bytes()), "{bad}");
        }
        assert!(!us_ssn(b"123-45-6789-0"));
    }

    #[test]
    fn ip_rules() {
        assert!(ip_address(None, b"192.168.1.20"));
        assert!(!ip_address(None, b"256.1.1.1"));
        assert!(!ip_address(None, b"01.02.03.04"));
        assert!(!ip_address(None, b"1.2.3.4.5"));
        assert!(!ip_address(None, b"version 1.2.3.4"));
        assert!(!ip_address(None, b"Ver: 1.2.3.4"));
        assert!(ip_address(Some(b' '), b"1.2.3.4"));
        assert!(ip_address(None, b"2001:db8::1"));
        assert!(ip_address(None, b"::ffff:192.0.2.128"));
        assert!(!ip_address(None, b"::"));
        assert!(!ip_address(None, b"a::b"));
        assert!(!ip_address(None, b"12:30:45"));
        assert!(!ip_address(Some(b'd'), b"::io"));
        assert!(ip_address(Some(b' '), b"::1"));
    }

    #[test]
    fn phone_rules() {
        assert!(phone(Some(b' '), b"+1 415-555-0132"));
        assert!(!phone(Some(b'x'), b"+1 415-555-0132"), "glued to a word");
        assert!(!phone(None, b"+15"), "too few digits");
        assert!(!phone(None, b"415-555-0132-9"), "probe");
        assert!(phone(None, b"020 7946 0958"));
        assert!(!phone(None, b"01 02 20 24"));
    }

    #[test]
    fn jwt_header() {
        assert!(jwt_header_has_alg(
            b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.x.y"
        ));
        // {"typ":"JWT"} has no alg.
        assert!(!jwt_header_has_alg(b"eyJ0eXAiOiJKV1QifQ.x.y"));
    }

    #[test]
    fn email_rules() {
        assert!(email(b"jane.doe@example.com"));
        assert!(!email(b"logo@2x.png"));
        assert!(!email(b"jane..doe@example.com"));
        assert!(!email(b"jane@-example.com"));
    }
}
