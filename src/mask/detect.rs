//! PII and secret detection for masking LLM output while it streams.
//!
//! Owns: the built-in entity patterns, their compilation together with user-defined ones
//! into one leftmost-first multi-pattern regex (built once at start-up), dispatch to the
//! validators in `validate.rs`, and [`Detector::alive_from`], the liveness query that tells
//! a streaming masker which part of its buffer can no longer change.
//!
//! Not for: buffering, replacing or emitting text (the stream masker owns that), reading
//! configuration (entity names and custom patterns arrive here already parsed), or
//! validation logic itself (`validate.rs`).
//!
//! # Streaming contract
//!
//! With `a = alive_from(buf, from)`, every start position in `from..a` is final: whatever
//! matches there now is exactly what would match there after any amount of further
//! output. So the masker may walk candidates with `find_candidate(buf, pos)`, resuming at
//! each candidate's `end` (validated or not, so a rejected lookalike such as `1.2.3.4.5`
//! is consumed whole), and act on every candidate whose `start < a` — its `end` is final
//! too, even when it lies beyond `a`. Candidates starting at or after `a` must wait.
//!
//! Validators read the candidate and at most the one byte before it (a masker that keeps
//! one released char as look-behind context gives them the same input as whole-text
//! masking), never the bytes after it. Where a lookalike can only be told by what follows
//! (`415-555-0132-99`, `123-45-6789-0`, `1.2.3.4.5`), the pattern consumes a two-byte
//! "probe" (separator + digit) and the validator rejects candidates that end in one; where
//! it needs more context before (`version 1.2.3.4`), a pattern matches the context too and
//! the validator rejects the result.
//!
//! A masker need not call `find_candidate` when `alive_from` returned its `from`: nothing
//! is final yet. (While a long candidate such as a PEM block streams in, that keeps the
//! per-chunk cost to the liveness walk.)
//!
//! # Decisions on ambiguous input
//!
//! * Bare digit runs are never phone numbers (`4155550132`, timestamps `1700000000`,
//!   `Order 123456789`); a leading `+` makes them one (`+14155550132`). Phone numbers need
//!   the separators people write: `(415) 555-0132`, `415-555-0132`, `415.555.0132`,
//!   `020 7946 0958`, `0151 23456789`, `01 23 45 67 89`, `+44 20 7946 0958`.
//! * `version 1.2.3.4`, `ver. 1.2.3.4`, `Version=1.2.3.4`, `v 1.2.3.4` and `v1.2.3.4` are
//!   version strings, not addresses. Any other dotted quad of octets 0–255 without leading
//!   zeros is an address, unless more dotted numbers follow (`1.2.3.4.5`, OIDs).
//! * `127.0.0.1:8080` is an address: the IP is masked, the port is kept.
//! * Bare 9-digit runs are never SSNs; `AAA-GG-SSSS` and `AAA GG SSSS` are.
//! * Card numbers are masked even when more digit groups follow (`4111 1111 1111 1111
//!   2222` masks the first 16 digits): over-masking a card-shaped number is the safe side.
//! * A labelled AWS secret key (`aws_secret_access_key = …`) is one candidate from label
//!   to value: a value-only span would start after its match, and a masker that committed
//!   the label before the value was final would then search past the label and miss it.
//! * Custom patterns: `\b`, `\B`, `\<`, `\>` and `\b{…}` are rewritten to their ASCII
//!   forms (`(?-u:\b)` …) so the liveness automaton never has to give up on non-ASCII
//!   text; everything else (`\d`, `\w`, case folding) keeps its Unicode meaning.
//!
//! # Maximum candidate lengths
//!
//! [`Detector::max_match_len`] is the longest candidate, computed from the compiled
//! patterns. Per built-in entity:
//!
//! | entity        | bytes | bound comes from                                          |
//! |---------------|-------|-----------------------------------------------------------|
//! | `EMAIL`       | 537   | local ≤ 64, ≤ 8 labels of ≤ 63, TLD ≤ 24 (validator: domain ≤ 253) |
//! | `PHONE`       | 40    | `+`, 3-digit country code, `(…)` area, 14 separated digits |
//! | `CREDIT_CARD` | 19    | 13–19 digits, grouped 4-4-4-4, 4-6-5 or 4-6-4             |
//! | `US_SSN`      | 13    | `AAA-GG-SSSS` plus a two-byte probe                       |
//! | `IBAN`        | 43    | 35 characters (registry max is 33) plus 8 group spaces    |
//! | `IP_ADDRESS`  | 58    | IPv6 with embedded IPv4 plus a probe byte                 |
//! | `SECRET`      | 8276  | a PEM private-key block with ≤ 8 KiB between the markers  |

use std::fmt;
use std::panic::{RefUnwindSafe, UnwindSafe};

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_automata::util::{pool::Pool, start, syntax};
use regex_automata::{meta, Anchored, Input, MatchKind};

use super::validate;

/// Built-in entity names, exactly these strings (they appear in config).
pub const BUILTIN: [&str; 7] = [
    "EMAIL",
    "PHONE",
    "CREDIT_CARD",
    "US_SSN",
    "IBAN",
    "IP_ADDRESS",
    "SECRET",
];

/// A candidate match: byte range in the haystack and the entity index (into
/// [`Detector::names`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub start: usize,
    pub end: usize,
    pub entity: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Email,
    Phone,
    CreditCard,
    UsSsn,
    Iban,
    IpAddress,
    Secret,
    Custom,
}

/// Same order as [`BUILTIN`].
const BUILTIN_KINDS: [Kind; 7] = [
    Kind::Email,
    Kind::Phone,
    Kind::CreditCard,
    Kind::UsSsn,
    Kind::Iban,
    Kind::IpAddress,
    Kind::Secret,
];

/// Pattern priority for leftmost-first ties at the same start: most specific first.
/// Custom patterns come after all of these.
const PRIORITY: [Kind; 7] = [
    Kind::Secret,
    Kind::Email,
    Kind::Iban,
    Kind::CreditCard,
    Kind::UsSsn,
    Kind::IpAddress,
    Kind::Phone,
];

/// Counted repetitions with an upper bound at least this large become unbounded in the
/// liveness automaton: a superset of the real patterns (so liveness stays conservative)
/// whose lazy DFA does not need one state per position inside an 8 KiB PEM body.
const RELAX_AT: u32 = 100;

/// Lazy DFA cache per thread using [`Detector::alive_from`].
const LIVE_CACHE_BYTES: usize = 2 << 20;

macro_rules! pem_label {
    () => {
        "(?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?"
    };
}

/// Built-in patterns, in priority order within an entity. Written with `\b`, which is
/// rewritten to the ASCII word boundary like custom patterns' (see [`ascii_word_boundaries`]).
/// All are ASCII-only.
fn builtin_patterns(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Secret => &[
            // PEM private key block, ≤ 8 KiB body; '.' is not in the body class so prose
            // after a lone BEGIN line ends the block quickly.
            concat!(
                "-----BEGIN ",
                pem_label!(),
                r"-----[A-Za-z0-9+/=\r\n\t :,-]{0,8192}?-----END ",
                pem_label!(),
                "-----"
            ),
            // A block cut off before its END line: the header and the base64 after it.
            concat!(
                "-----BEGIN ",
                pem_label!(),
                r"-----[\r\n]{1,4}[A-Za-z0-9+/=\r\n]{16,8192}"
            ),
            r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b",
            r#"(?i-u:aws)[A-Za-z0-9_. -]{0,20}(?i-u:secret)[A-Za-z0-9_. -]{0,20}["']?[ \t]{0,4}(?::=|=>|[:=])[ \t]{0,4}["']?[A-Za-z0-9/+]{40}"#,
            r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}\b",
            r"\bgithub_pat_[A-Za-z0-9_]{82}\b",
            r"\bxox[abeoprs]-[0-9A-Za-z]{6,40}(?:-[0-9A-Za-z]{1,64}){1,5}\b",
            r"\bxapp-[0-9]-[A-Z0-9]{1,20}-[0-9]{1,20}-[A-Za-z0-9]{16,80}\b",
            r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/+-]{20,200}",
            r"\bsk-ant-(?:api|admin|sid)[0-9]{2}-[A-Za-z0-9_-]{32,200}",
            r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{32,200}",
            r"\bAIza[0-9A-Za-z_-]{35}",
            r"\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{10,99}\b",
            r"\beyJ[A-Za-z0-9_-]{7,1024}\.eyJ[A-Za-z0-9_-]{7,6144}\.[A-Za-z0-9_-]{10,1024}",
        ],
        Kind::Email => &[
            r"\b[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9][A-Za-z0-9-]{0,62}(?:\.[A-Za-z0-9][A-Za-z0-9-]{0,62}){0,6}\.[A-Za-z]{2,24}\b",
        ],
        Kind::Iban => &[r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"],
        Kind::CreditCard => &[
            r"\b[2-6][0-9]{12,18}\b",
            r"\b[2-6][0-9]{3}(?:-[0-9]{4}){3}\b",
            r"\b[2-6][0-9]{3}(?: [0-9]{4}){3}\b",
            r"\b3[0-9]{3}-[0-9]{6}-[0-9]{4,5}\b",
            r"\b3[0-9]{3} [0-9]{6} [0-9]{4,5}\b",
        ],
        Kind::UsSsn => &[
            r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}(?:-[0-9]|\b)",
            r"\b[0-9]{3} [0-9]{2} [0-9]{4}(?: [0-9]|\b)",
        ],
        Kind::IpAddress => &[
            // A version string: matched with its word so the validator can reject it.
            r"(?i-u:\bv(?:er(?:sion)?)?)\.?[ :=]{0,3}(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?:\.[0-9]|\b)",
            r"\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?:\.[0-9]|\b)",
            r"(?:\b[0-9A-Fa-f]{1,4})?(?::[0-9A-Fa-f]{0,4}){2,8}(?:\.[0-9]{1,3}){0,3}(?:\.[0-9]|[0-9A-Za-z_])?",
        ],
        Kind::Phone => &[
            // International: +CC, optional "(0)"/"(415)" area, then 6–14 digits each
            // optionally after one separator (one digit per step keeps the DFA small).
            r"\+[1-9][0-9]{0,2}(?:[ .-]?\(0?[0-9]{1,4}\))?(?:[ .-]?[0-9]){6,14}\b",
            // North American: [1-] (415) 555-0132 | 415-555-0132 | 415.555.0132.
            r"(?:\b1[ .-]?)?(?:\([2-9][0-9]{2}\)[ .-]?|\b[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-][0-9]{4}(?:[.-][0-9]|\b)",
            // Trunk-prefixed national: 020 7946 0958, 0151 234 5678.
            r"\b0[1-9][0-9]{1,3}[ -][0-9]{3,4}[ -][0-9]{3,4}(?:[.-][0-9]|\b)",
            // 030 1234567, 0151 23456789, 089/12345678.
            r"\b0[1-9][0-9]{1,4}[ /-][0-9]{5,8}(?:[.-][0-9]|\b)",
            // French style pairs: 01 23 45 67 89, 01.23.45.67.89.
            r"\b0[1-9](?:[ .-][0-9]{2}){4}(?:[.-][0-9]|\b)",
        ],
        Kind::Custom => &[],
    }
}

type CacheFn = Box<dyn Fn() -> Cache + Send + Sync + UnwindSafe + RefUnwindSafe>;

/// Compiled PII/secret detectors: one leftmost-first regex over all enabled patterns, and a
/// lazy DFA over (a superset of) the same patterns for the liveness query. Built once;
/// `Send + Sync`, cheap to share in an `Arc`.
///
/// ```
/// use modelgate::mask::detect::Detector;
///
/// let det = Detector::new(&["EMAIL", "SECRET"], &[])?;
/// let hay = b"mail jane.doe@example.com now!";
/// let c = det.find_candidate(hay, 0).unwrap();
/// assert_eq!(det.names()[c.entity], "EMAIL");
/// assert_eq!(&hay[c.start..c.end], b"jane.doe@example.com");
/// assert!(det.validate(hay, c));
/// // Nothing here can still grow into a match: all of it is final.
/// assert_eq!(det.alive_from(hay, 0), hay.len());
/// assert_eq!(det.alive_from(b"mail jane.doe@exam", 0), 5);
/// # Ok::<(), String>(())
/// ```
pub struct Detector {
    names: Vec<String>,
    kinds: Vec<Kind>,
    /// Indexed by pattern id: the entity it belongs to.
    pattern_entity: Vec<usize>,
    regex: meta::Regex,
    live: DFA,
    live_caches: Pool<Cache, CacheFn>,
    /// Longest possible match; `None` if some custom pattern is unbounded.
    max_len: Option<usize>,
}

impl fmt::Debug for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Detector")
            .field("names", &self.names)
            .field("patterns", &self.pattern_entity.len())
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl Detector {
    /// `entities`: which built-in names to detect (subset of [`BUILTIN`], any order).
    /// `custom`: `(NAME, regex)` pairs; NAME must be `[A-Z][A-Z0-9_]*` and not a built-in;
    /// the regex must compile, must not match the empty string, and is matched by the same
    /// engine (word boundaries are ASCII, see the module docs). Custom entities have no
    /// validator. Names are indexed built-ins first (in the given order), then custom.
    pub fn new(entities: &[&str], custom: &[(String, String)]) -> Result<Detector, String> {
        let mut names: Vec<String> = Vec::with_capacity(entities.len() + custom.len());
        let mut kinds = Vec::with_capacity(names.capacity());
        for &e in entities {
            let Some(i) = BUILTIN.iter().position(|b| *b == e) else {
                return Err(format!(
                    "unknown entity {e:?}; expected one of {}",
                    BUILTIN.join(", ")
                ));
            };
            if names.iter().any(|n| n == e) {
                return Err(format!("entity {e} is listed twice"));
            }
            names.push(e.to_string());
            kinds.push(BUILTIN_KINDS[i]);
        }

        // (entity, pattern for the regex, pattern for the liveness DFA)
        let mut all: Vec<(usize, String, String)> = Vec::new();
        for kind in PRIORITY {
            let Some(entity) = kinds.iter().position(|k| *k == kind) else {
                continue;
            };
            for p in builtin_patterns(kind) {
                let exact = ascii_word_boundaries(p);
                let relaxed = relax_long_repetitions(&exact);
                all.push((entity, exact, relaxed));
            }
        }
        for (name, pattern) in custom {
            let pattern = check_custom(name, pattern, &names)?;
            names.push(name.clone());
            kinds.push(Kind::Custom);
            all.push((names.len() - 1, pattern.clone(), pattern));
        }

        let mut max_len = Some(0);
        for (_, p, _) in &all {
            let hir = syntax::parse(p).map_err(|e| format!("built-in pattern {p:?}: {e}"))?;
            max_len = max_len
                .zip(hir.properties().maximum_len())
                .map(|(a, b)| a.max(b));
        }
        let exact: Vec<&str> = all.iter().map(|(_, p, _)| p.as_str()).collect();
        let relaxed: Vec<&str> = all.iter().map(|(_, _, p)| p.as_str()).collect();
        let regex = build_regex(&exact).map_err(|e| format!("compiling entity patterns: {e}"))?;
        let live = build_live(&relaxed)
            .map_err(|e| format!("compiling entity liveness automaton: {e}"))?;
        let for_pool = live.clone();
        let create: CacheFn = Box::new(move || for_pool.create_cache());
        Ok(Detector {
            names,
            kinds,
            pattern_entity: all.iter().map(|&(entity, _, _)| entity).collect(),
            regex,
            live,
            live_caches: Pool::new(create),
            max_len,
        })
    }

    /// Entity names, index = [`Candidate::entity`].
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Leftmost-first candidate whose start is `>= from`, searching `hay[from..]` with
    /// `hay[..from]` as look-behind context only (so `\b` at `from` sees the previous byte)
    /// and `hay.len()` as end of input. Not validated.
    pub fn find_candidate(&self, hay: &[u8], from: usize) -> Option<Candidate> {
        if from > hay.len() {
            return None;
        }
        let m = self.regex.search(&Input::new(hay).range(from..))?;
        Some(Candidate {
            start: m.start(),
            end: m.end(),
            entity: self.pattern_entity[m.pattern().as_usize()],
        })
    }

    /// Whether the candidate's bytes pass the entity's validator (see `validate.rs`).
    /// Custom entities: always true. Reads `hay[c.start - 1..c.end]` only.
    pub fn validate(&self, hay: &[u8], c: Candidate) -> bool {
        let (Some(m), Some(kind)) = (hay.get(c.start..c.end), self.kinds.get(c.entity)) else {
            return false;
        };
        let prev = c.start.checked_sub(1).map(|i| hay[i]);
        match kind {
            Kind::Email => validate::email(m),
            Kind::Phone => validate::phone(prev, m),
            Kind::CreditCard => validate::credit_card(m),
            Kind::UsSsn => validate::us_ssn(m),
            Kind::Iban => validate::iban(m),
            Kind::IpAddress => validate::ip_address(prev, m),
            Kind::Secret => validate::secret(m),
            Kind::Custom => true,
        }
    }

    /// The smallest char-boundary position `p >= from` at which a match anchored at `p`
    /// could still appear, grow or change if bytes were appended to `hay`: the anchored
    /// liveness automaton started at `p` (look-behind `hay[p-1]`) is not dead after
    /// consuming `hay[p..]` (no end-of-input transition is applied). A pending match counts
    /// as alive. Starts more than [`Detector::max_match_len`] bytes from the end are final
    /// whatever the automaton says. Returns `hay.len()` when everything before the end is
    /// final.
    pub fn alive_from(&self, hay: &[u8], from: usize) -> usize {
        let mut cache = self.live_caches.get();
        let mut p = from;
        while p < hay.len() {
            // Matches never start inside a UTF-8 sequence.
            if !matches!(hay[p], 0x80..=0xBF) && self.alive_at(&mut cache, hay, p) {
                return p;
            }
            p += 1;
        }
        hay.len().max(from)
    }

    fn alive_at(&self, cache: &mut Cache, hay: &[u8], p: usize) -> bool {
        let rest = &hay[p..];
        // Every match anchored at p, and the byte after it, is already in `hay`.
        if self.max_len.is_some_and(|max| rest.len() > max) {
            return false;
        }
        let config = start::Config::new()
            .anchored(Anchored::Yes)
            .look_behind(p.checked_sub(1).map(|i| hay[i]));
        // Errors and quit states mean "cannot tell": alive, the conservative answer.
        let Ok(mut sid) = self.live.start_state(cache, &config) else {
            return true;
        };
        if sid.is_dead() {
            return false;
        }
        for &b in rest {
            match self.live.next_state(cache, sid, b) {
                Ok(next) if next.is_dead() => return false,
                Ok(next) if next.is_quit() => return true,
                Ok(next) => sid = next,
                Err(_) => return true,
            }
        }
        true
    }

    /// Upper bound in bytes of a single match (see the module docs for the per-entity
    /// table); `None` if a custom pattern has an unbounded repetition.
    pub fn max_match_len(&self) -> Option<usize> {
        self.max_len
    }
}

fn build_regex(patterns: &[&str]) -> Result<meta::Regex, String> {
    meta::Regex::builder()
        .configure(
            meta::Config::new()
                .match_kind(MatchKind::LeftmostFirst)
                .which_captures(WhichCaptures::Implicit),
        )
        .build_many(patterns)
        .map_err(|e| e.to_string())
}

/// MatchKind::All: liveness asks whether *any* pattern can still match, so the DFA must not
/// prune threads that leftmost-first priority would discard.
fn build_live(patterns: &[&str]) -> Result<DFA, String> {
    DFA::builder()
        .configure(
            DFA::config()
                .match_kind(MatchKind::All)
                .cache_capacity(LIVE_CACHE_BYTES)
                .skip_cache_capacity_check(true),
        )
        .thompson(thompson::Config::new().which_captures(WhichCaptures::None))
        .build_many(patterns)
        .map_err(|e| e.to_string())
}

/// Checks a custom entity and returns its pattern with ASCII word boundaries.
fn check_custom(name: &str, pattern: &str, taken: &[String]) -> Result<String, String> {
    let mut bytes = name.bytes();
    let well_formed = matches!(bytes.next(), Some(b'A'..=b'Z'))
        && bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !well_formed {
        return Err(format!(
            "custom entity {name:?}: name must match [A-Z][A-Z0-9_]*"
        ));
    }
    if BUILTIN.contains(&name) {
        return Err(format!("custom entity {name}: name is a built-in entity"));
    }
    if taken.iter().any(|t| t == name) {
        return Err(format!("custom entity {name}: defined twice"));
    }
    let rewritten = ascii_word_boundaries(pattern);
    let hir = syntax::parse(&rewritten)
        .map_err(|e| format!("custom entity {name}: invalid regex {pattern:?}: {e}"))?;
    if hir.properties().minimum_len() == Some(0) {
        return Err(format!(
            "custom entity {name}: regex {pattern:?} can match the empty string"
        ));
    }
    build_regex(&[&rewritten])
        .map_err(|e| format!("custom entity {name}: regex {pattern:?}: {e}"))?;
    build_live(&[&rewritten])
        .map_err(|e| format!("custom entity {name}: regex {pattern:?}: {e}"))?;
    Ok(rewritten)
}

/// Rewrites the word-boundary escapes `\b`, `\B`, `\<`, `\>` and `\b{start|end|start-half|end-half}`
/// to their ASCII forms. These escapes are invalid inside character classes, so in a valid
/// pattern every occurrence is an assertion (or sits in an `(?x)` comment, where the
/// rewrite is harmless).
fn ascii_word_boundaries(pattern: &str) -> String {
    const SPECIAL: [&str; 4] = [r"\b{start}", r"\b{end}", r"\b{start-half}", r"\b{end-half}"];
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut rest = pattern;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let esc = &rest[i..];
        let len = match esc[1..].chars().next() {
            Some('b' | 'B' | '<' | '>') => {
                let len = SPECIAL
                    .iter()
                    .find(|s| esc.starts_with(*s))
                    .map_or(2, |s| s.len());
                out.push_str("(?-u:");
                out.push_str(&esc[..len]);
                out.push(')');
                rest = &esc[len..];
                continue;
            }
            // Any other escape is copied untouched (its second char may be multi-byte).
            Some(c) => 1 + c.len_utf8(),
            None => 1,
        };
        out.push_str(&esc[..len]);
        rest = &esc[len..];
    }
    out.push_str(rest);
    out
}

/// Replaces `{m,n}` with `{m,}` when `n >= RELAX_AT`. Only for built-in patterns, which
/// contain no literal braces.
fn relax_long_repetitions(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        let close = tail.find('}').unwrap_or(tail.len() - 1);
        let body = &tail[1..close];
        match body.split_once(',') {
            Some((lo, hi)) if hi.parse::<u32>().is_ok_and(|hi| hi >= RELAX_AT) => {
                out.push('{');
                out.push_str(lo);
                out.push_str(",}");
            }
            _ => out.push_str(&tail[..=close]),
        }
        rest = &tail[close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn det() -> &'static Detector {
        static DET: OnceLock<Detector> = OnceLock::new();
        DET.get_or_init(|| {
            let custom = [("EMPLOYEE_ID".to_string(), r"\bEMP-\d{6}\b".to_string())];
            Detector::new(&BUILTIN, &custom).expect("built-in detector compiles")
        })
    }

    /// All candidates, resuming at each candidate's end.
    fn candidates(d: &Detector, hay: &[u8]) -> Vec<Candidate> {
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(c) = d.find_candidate(hay, pos) {
            out.push(c);
            pos = c.end;
        }
        out
    }

    fn validated(d: &Detector, hay: &str) -> Vec<(String, String)> {
        candidates(d, hay.as_bytes())
            .into_iter()
            .filter(|&c| d.validate(hay.as_bytes(), c))
            .map(|c| (d.names()[c.entity].clone(), hay[c.start..c.end].to_string()))
            .collect()
    }

    fn jwt() -> String {
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c".to_string()
    }

    fn pem() -> String {
        let body = "MIIEowIBAAKCAQEAx4UbaDzY6jEjzMOX5yRGfGTAq2Zmx0FCrXumDbKjmQ5N0uBe\nZ8nR1fP0p4yJ3qVxk2mB7sT9wLcH6dA1eF0gH2iJ3kL4mN5oP6qR7sT8uV9wX0yZ\n";
        format!("-----BEGIN RSA PRIVATE KEY-----\n{body}-----END RSA PRIVATE KEY-----")
    }

    /// (sentence, entity, exact span text)
    fn positives() -> Vec<(String, &'static str, String)> {
        let mut v: Vec<(String, &'static str, String)> = Vec::new();
        let mut add = |text: &str, entity: &'static str, span: &str| {
            v.push((text.to_string(), entity, span.to_string()))
        };
        // EMAIL
        add(
            "Contact jane.doe@example.com for details.",
            "EMAIL",
            "jane.doe@example.com",
        );
        add(
            "cc: first.last+billing@mail.eng.example.co.uk, thanks",
            "EMAIL",
            "first.last+billing@mail.eng.example.co.uk",
        );
        add(
            "<ops_team@my-company.io>",
            "EMAIL",
            "ops_team@my-company.io",
        );
        add(
            "Send it to John.Smith@Example.COM.",
            "EMAIL",
            "John.Smith@Example.COM",
        );
        add("mailto:x@y.org?subject=hi", "EMAIL", "x@y.org");
        add(
            "Email: support%desk@helpdesk.example.travel today",
            "EMAIL",
            "support%desk@helpdesk.example.travel",
        );
        // PHONE
        add("Call +1 415-555-0132 tomorrow.", "PHONE", "+1 415-555-0132");
        add(
            "Our London office: +44 20 7946 0958.",
            "PHONE",
            "+44 20 7946 0958",
        );
        add(
            "Berlin +49 30 1234567, ask for Max",
            "PHONE",
            "+49 30 1234567",
        );
        add("Paris: +33 1 23 45 67 89", "PHONE", "+33 1 23 45 67 89");
        add(
            "US line +1 (415) 555-0132 (24/7)",
            "PHONE",
            "+1 (415) 555-0132",
        );
        add(
            "Reach me at (415) 555-0132 after 5.",
            "PHONE",
            "(415) 555-0132",
        );
        add(
            "cell 415-555-0132, home 415.555.0133",
            "PHONE",
            "415-555-0132",
        );
        add("home 415.555.0133.", "PHONE", "415.555.0133");
        add("Tel. 020 7946 0958 (UK)", "PHONE", "020 7946 0958");
        add("Handy: 0151 23456789", "PHONE", "0151 23456789");
        add("text +14155550132 now", "PHONE", "+14155550132");
        add("toll free 1-800-555-0199.", "PHONE", "1-800-555-0199");
        add("Bureau 01 23 45 67 89 le matin", "PHONE", "01 23 45 67 89");
        // CREDIT_CARD
        add(
            "Card: 4111 1111 1111 1111, exp 12/27",
            "CREDIT_CARD",
            "4111 1111 1111 1111",
        );
        add(
            "charged 5555-5555-5555-4444 yesterday",
            "CREDIT_CARD",
            "5555-5555-5555-4444",
        );
        add(
            "Amex 378282246310005 on file",
            "CREDIT_CARD",
            "378282246310005",
        );
        add(
            "Amex 3782 822463 10005 on file",
            "CREDIT_CARD",
            "3782 822463 10005",
        );
        add(
            "Discover 6011111111111117.",
            "CREDIT_CARD",
            "6011111111111117",
        );
        add(
            "new MC 2223003122003222 works",
            "CREDIT_CARD",
            "2223003122003222",
        );
        add(
            "old visa 4222222222222 expired",
            "CREDIT_CARD",
            "4222222222222",
        );
        add("JCB 3530111333300000", "CREDIT_CARD", "3530111333300000");
        add(
            "Diners 3056 930902 5904!",
            "CREDIT_CARD",
            "3056 930902 5904",
        );
        // US_SSN
        add("SSN: 536-90-4399.", "US_SSN", "536-90-4399");
        add("her social is 401-23-4567 I think", "US_SSN", "401-23-4567");
        add("(772-01-2345)", "US_SSN", "772-01-2345");
        add("ssn=001-01-0001;", "US_SSN", "001-01-0001");
        add("SSN 536 90 4399 on the form", "US_SSN", "536 90 4399");
        add("numbers 899-99-9999 and more", "US_SSN", "899-99-9999");
        // IBAN
        add(
            "IBAN DE89 3704 0044 0532 0130 00 (Commerzbank)",
            "IBAN",
            "DE89 3704 0044 0532 0130 00",
        );
        add(
            "pay GB82WEST12345698765432 by Friday",
            "IBAN",
            "GB82WEST12345698765432",
        );
        add(
            "FR14 2004 1010 0505 0001 3M02 606 is the account",
            "IBAN",
            "FR14 2004 1010 0505 0001 3M02 606",
        );
        add("Dutch: NL91ABNA0417164300.", "IBAN", "NL91ABNA0417164300");
        add(
            "ES91 2100 0418 4502 0005 1332, BIC CAIXESBBXXX",
            "IBAN",
            "ES91 2100 0418 4502 0005 1332",
        );
        add(
            "Konto CH93 0076 2011 6238 5295 7",
            "IBAN",
            "CH93 0076 2011 6238 5295 7",
        );
        add("Norway NO93 8601 1117 947 ok", "IBAN", "NO93 8601 1117 947");
        // IP_ADDRESS
        add(
            "The server is at 192.168.1.20.",
            "IP_ADDRESS",
            "192.168.1.20",
        );
        add("ssh root@10.0.0.1 -p 22", "IP_ADDRESS", "10.0.0.1");
        add("listening on 127.0.0.1:8080", "IP_ADDRESS", "127.0.0.1");
        add(
            "v6 2001:db8::8a2e:370:7334 assigned",
            "IP_ADDRESS",
            "2001:db8::8a2e:370:7334",
        );
        add("link-local fe80::1%eth0", "IP_ADDRESS", "fe80::1");
        add("loopback ::1 only", "IP_ADDRESS", "::1");
        add(
            "mapped ::ffff:192.0.2.128 here",
            "IP_ADDRESS",
            "::ffff:192.0.2.128",
        );
        add(
            "full 2001:0db8:85a3:0000:0000:8a2e:0370:7334.",
            "IP_ADDRESS",
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        );
        add(
            "curl https://[2001:db8::1]:443/",
            "IP_ADDRESS",
            "2001:db8::1",
        );
        // SECRET
        add(
            "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
            "SECRET",
            "AKIAIOSFODNN7EXAMPLE",
        );
        add(
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
            "SECRET",
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        );
        add(
            "export AWS_SECRET_ACCESS_KEY=\"je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY\"",
            "SECRET",
            "AWS_SECRET_ACCESS_KEY=\"je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY",
        );
        let ghp = format!("ghp_{}", "aB3dE5fG7h".repeat(4).get(..36).unwrap());
        add(&format!("token: {ghp} (revoked)"), "SECRET", &ghp);
        let pat = format!("github_pat_11ABCDEFG0{}", "x1Y2z3".repeat(12));
        add(&format!("GH_TOKEN={pat}"), "SECRET", &pat);
        add(
            "SLACK_BOT_TOKEN=xoxb-1234567890123-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx ok",
            "SECRET",
            "xoxb-1234567890123-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        );
        add(
            "webhook https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX now",
            "SECRET",
            "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        );
        let openai = "sk-proj-Ab3dEf6hIj9kLmN0pQrS1tUvW2xYz3AbCdEfGh4IjKl5MnOp";
        add(&format!("OPENAI_API_KEY={openai}"), "SECRET", openai);
        let anthropic = format!("sk-ant-api03-{}AA", "Xy7_Kp2-Qm9z".repeat(8));
        add(&format!("key '{anthropic}' rotated"), "SECRET", &anthropic);
        add(
            "GOOGLE_API_KEY=AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q end",
            "SECRET",
            "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
        );
        add(
            "stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc done",
            "SECRET",
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        );
        add(
            "restricted: rk_live_51H8xYzAbCdEfGhIjKlMnOp",
            "SECRET",
            "rk_live_51H8xYzAbCdEfGhIjKlMnOp",
        );
        let j = jwt();
        add(&format!("Authorization: Bearer {j}\r\n"), "SECRET", &j);
        let k = pem();
        add(
            &format!("Here is the key:\n{k}\nKeep it safe."),
            "SECRET",
            &k,
        );
        // Custom
        add("employee EMP-004217 joined", "EMPLOYEE_ID", "EMP-004217");
        add("café EMP-123456—welcome", "EMPLOYEE_ID", "EMP-123456");
        v
    }

    #[test]
    fn positives_are_found_with_exact_span_and_validate() {
        let d = det();
        let mut per_entity = std::collections::HashMap::new();
        for (text, entity, span) in positives() {
            let start = text.find(&span).unwrap();
            let want = (entity.to_string(), start, start + span.len());
            let got: Vec<_> = candidates(d, text.as_bytes())
                .into_iter()
                .filter(|&c| d.validate(text.as_bytes(), c))
                .map(|c| (d.names()[c.entity].clone(), c.start, c.end))
                .collect();
            assert!(
                got.contains(&want),
                "{text:?}: want {entity} {span:?}, got {:?}",
                validated(d, &text)
            );
            *per_entity.entry(entity).or_insert(0) += 1;
        }
        for name in BUILTIN {
            assert!(
                per_entity.get(name).copied().unwrap_or(0) >= 5,
                "{name} needs ≥ 5 positives"
            );
        }
    }

    #[test]
    fn lookalikes_survive() {
        let d = det();
        let lookalikes = [
            "Card 4111 1111 1111 1112 fails Luhn",
            "number 4111111111111112 fails Luhn too",
            "random 5555-5555-5555-4445",
            "IBAN DE88 3704 0044 0532 0130 00 has a wrong check digit",
            "GB82WEST12345698765433",
            "date 2024-01-15 and 15.01.2024 and 01/15/2024",
            "today is 01.02.2024 at 12:30",
            "meeting 12:30:45, lunch 13:00",
            "timestamp 2024-01-15T12:30:45Z",
            "uuid 550e8400-e29b-41d4-a716-446655440000",
            "md5 d41d8cd98f00b204e9800998ecf8427e",
            "sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709",
            "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "git commit 4b825dc642cb6eb9a060e54bf8d69288fbee4904 and short 4b825dc",
            "semver 1.2.3 and 10.15.7-beta.1",
            "version 1.2.3.4 released",
            "ver. 10.0.0.1 and Version=192.168.0.1",
            "bump to v1.2.3.4 today",
            "ISBN 978-3-16-148410-0",
            "ISBN 0-306-40615-2 (paperback)",
            "order #A-10023-77 shipped",
            "Order 123456789 confirmed",
            "price $1,234.56 or € 12.000,00",
            "unix time 1700000000 and ms 1700000000000",
            "bare digits 4155550132 are not a phone",
            "short 555-0132 number",
            "ext +5 points and +15% growth and +1.5 degrees",
            "fake area 123-456-7890",
            "SSN 000-12-3456 or 666-12-3456 or 912-12-3456",
            "SSN 123-00-4567 or 123-45-0000",
            "part number 123-45-6789-01",
            "zip 94103 and 94103-1234",
            "OID 1.3.6.1.4.1.311 and 1.2.3.4.5",
            "256.1.1.1 is not an address, nor is 01.02.03.04",
            "Rust std::io::Result and a::b",
            "Haskell x :: Int",
            "MAC 00:1A:2B:3C:4D:5E",
            "retina icon@2x.png and logo@3x.webp",
            "npm lodash@4.17.21 and user@localhost",
            "sk-this-is-not-a-real-key-just-words-here",
            "eyJmb28iOiJiYXIifQ.eyJmb28iOiJiYXIifQ.abcdefghijklmno is not a JWT",
            "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A\n-----END PUBLIC KEY-----",
            "base64 SGVsbG8gd29ybGQsIHRoaXMgaXMgYmFzZTY0IGRhdGE=",
            "AB12 CDEF GHIJ product code and US12 3456 7890 1234",
            "pi 3.14159265358979 and e 2.718281828",
            "phone-like 12 34 too short",
            "score 3-1 and 2+2=4",
        ];
        assert!(lookalikes.len() >= 30);
        for text in lookalikes {
            assert_eq!(
                validated(d, text),
                Vec::<(String, String)>::new(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn alive_from_cases() {
        let d = det();
        let at = |hay: &str, needle: &str| hay.find(needle).unwrap();
        let hay = "contact jane.doe@exa";
        assert_eq!(d.alive_from(hay.as_bytes(), 0), at(hay, "jane"));
        let hay = "call +1 415-55";
        assert_eq!(d.alive_from(hay.as_bytes(), 0), at(hay, "+1"));
        let hay = "hello world. ";
        assert_eq!(d.alive_from(hay.as_bytes(), 0), hay.len());
        // A complete email followed by a non-email byte is final.
        let hay = "mail jane.doe@example.com now";
        let a = d.alive_from(hay.as_bytes(), 0);
        assert!(a > at(hay, ".com"), "alive at {a} in {hay:?}");
        // A card number may still grow into a 19-digit one.
        let hay = "card 4111111111111111";
        assert_eq!(d.alive_from(hay.as_bytes(), 0), at(hay, "4111"));
        // A private key block without its END line.
        let hay = "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx4UbaDzY6jEjzMOX5yRG\n";
        assert_eq!(d.alive_from(hay.as_bytes(), 0), at(hay, "-----BEGIN"));
        // `from` is respected, and continuation bytes are skipped.
        let hay = "Grüße an jane@ex";
        assert_eq!(d.alive_from(hay.as_bytes(), 0), at(hay, "jane"));
        let hay = "badge EMP-12";
        assert_eq!(d.alive_from(hay.as_bytes(), 3), at(hay, "EMP"));
        assert_eq!(d.alive_from("é".as_bytes(), 1), 2);
        assert_eq!(d.alive_from(b"abc", 7), 7);
        // Starts glued to a word are dead (the look-behind byte counts).
        let secrets = Detector::new(&["SECRET"], &[]).unwrap();
        assert_eq!(secrets.alive_from(b"Xghp_abc", 0), 8);
        assert_eq!(secrets.alive_from(b"X ghp_abc", 0), 2);
        // A match that ends at the end of the buffer may still change (`\b`).
        let ab = [("AB".to_string(), r"\bab\b".to_string())];
        let small = Detector::new(&[], &ab).unwrap();
        assert_eq!(small.alive_from(b"x ab", 0), 2);
        assert_eq!(small.alive_from(b"x ab ", 0), 5);
    }

    #[test]
    fn errors_name_the_entity() {
        let err = |e: &[&str], c: &[(&str, &str)]| {
            let c: Vec<(String, String)> = c
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            Detector::new(e, &c).unwrap_err()
        };
        assert!(err(&["EMAIL", "PASSPORT"], &[]).contains("PASSPORT"));
        assert!(err(&["EMAIL", "EMAIL"], &[]).contains("EMAIL"));
        assert!(err(&[], &[("employee_id", "x")]).contains("employee_id"));
        assert!(err(&[], &[("EMAIL", "x")]).contains("EMAIL"));
        assert!(err(&[], &[("EMPTY", "a*")]).contains("EMPTY"));
        assert!(err(&[], &[("BROKEN", "(")]).contains("BROKEN"));
        assert!(err(&[], &[("LOOK", r"(?<=a)b")]).contains("LOOK"));
        assert!(err(&[], &[("TWICE", "a"), ("TWICE", "b")]).contains("TWICE"));
    }

    #[test]
    fn names_order_and_custom_semantics() {
        let custom = vec![("TICKET".to_string(), r"\bT-\d{4,}\b".to_string())];
        let d = Detector::new(&["SECRET", "EMAIL"], &custom).unwrap();
        assert_eq!(d.names(), ["SECRET", "EMAIL", "TICKET"]);
        assert_eq!(d.max_match_len(), None, "T-\\d{{4,}} is unbounded");
        let hay = b"see T-12345, mail a@b.io";
        let c = d.find_candidate(hay, 0).unwrap();
        assert_eq!((c.entity, &hay[c.start..c.end]), (2, &b"T-12345"[..]));
        assert!(d.validate(hay, c));
        // Unicode classes keep working; \b is ASCII.
        let word = |p: &str| Detector::new(&[], &[("WORD".to_string(), p.to_string())]).unwrap();
        let d = word(r"\b\w+ß");
        let found = d.find_candidate("x straß y".as_bytes(), 0);
        assert_eq!(found.map(|c| (c.start, c.end)), Some((2, 8)));
        assert_eq!(d.alive_from("x straß".as_bytes(), 0), 2);
        assert_eq!(
            d.alive_from("x straß y".as_bytes(), 0),
            9,
            "only `y` may grow"
        );
        // ...which is why `ß\b` cannot match: ß is not an ASCII word character.
        assert_eq!(
            word(r"\w+ß\b").find_candidate("x straß y".as_bytes(), 0),
            None
        );
        // Nothing enabled: never matches, nothing alive.
        let d = Detector::new(&[], &[]).unwrap();
        assert_eq!(d.find_candidate(b"a@b.io", 0), None);
        assert_eq!(d.alive_from(b"a@b.io", 0), 6);
        assert_eq!(d.max_match_len(), Some(0));
    }

    #[test]
    fn max_match_len_per_entity() {
        let want = [
            ("EMAIL", 537),
            ("PHONE", 40),
            ("CREDIT_CARD", 19),
            ("US_SSN", 13),
            ("IBAN", 43),
            ("IP_ADDRESS", 58),
            ("SECRET", 8276),
        ];
        for (name, len) in want {
            let d = Detector::new(&[name], &[]).unwrap();
            assert_eq!(d.max_match_len(), Some(len), "{name}");
        }
        assert_eq!(det().max_match_len(), Some(8276));
    }

    #[test]
    fn word_boundary_rewrite() {
        assert_eq!(
            ascii_word_boundaries(r"\bx\B\<y\>"),
            r"(?-u:\b)x(?-u:\B)(?-u:\<)y(?-u:\>)"
        );
        assert_eq!(
            ascii_word_boundaries(r"\b{start}a\b{end-half}"),
            r"(?-u:\b{start})a(?-u:\b{end-half})"
        );
        assert_eq!(ascii_word_boundaries(r"\\b\d\é"), r"\\b\d\é");
        assert_eq!(
            relax_long_repetitions("a{0,8192}?b{2,5}c{7}"),
            "a{0,}?b{2,5}c{7}"
        );
    }

    /// xorshift64*: deterministic, no extra crates.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[(self.next() % xs.len() as u64) as usize]
        }
    }

    /// The masker's invariant: decisions before `alive_from(prefix)` never change when more
    /// text arrives — for every prefix of random text, the candidates (and their validation)
    /// starting before `a` are exactly those of the full text.
    #[test]
    fn decisions_before_alive_point_are_final() {
        // A detector with short patterns exercises the max-length cutoff in `alive_from`.
        let custom = [
            ("AB".to_string(), r"\bab\b".to_string()),
            ("NUM".to_string(), r"\b[0-9]{3}-[0-9]{2}\b".to_string()),
        ];
        let small = Detector::new(&[], &custom).unwrap();
        assert_eq!(small.max_match_len(), Some(6));
        // Short secrets keep the O(len²) prefix walk fast in debug builds.
        let vocab: Vec<&str> = vec![
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.c2lnbmF0dXJlMTIz",
            "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yByxZpY\n-----END EC PRIVATE KEY-----",
            // PII
            "jane.doe@example.com",
            "x@y.org",
            "+1 415-555-0132",
            "+44 20 7946 0958",
            "(415) 555-0132",
            "415.555.0132",
            "020 7946 0958",
            "4111 1111 1111 1111",
            "378282246310005",
            "536-90-4399",
            "DE89 3704 0044 0532 0130 00",
            "GB82WEST12345698765432",
            "192.168.1.20",
            "fe80::1",
            "::1",
            "AKIAIOSFODNN7EXAMPLE",
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            "EMP-004217",
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            // lookalikes
            "4111 1111 1111 1112",
            "2024-01-15",
            "12:30:45",
            "1.2.3.4.5",
            "version 1.2.3.4",
            "v1.2.3",
            "d41d8cd98f00b204e9800998ecf8427e",
            "978-3-16-148410-0",
            "1700000000",
            "$1,234.56",
            "123-45-6789-01",
            "std::io",
            "icon@2x.png",
            "-----BEGIN RSA PRIVATE KEY-----",
            // filler
            "the",
            "and",
            "call",
            "at",
            "café",
            "—",
            "🙂",
            "42",
            "7",
            "+",
            "-",
            ":",
            ".",
            "@",
            "(",
            ")",
            "EMP-",
            "ab",
            "sk-",
            "eyJ",
            "AKIA",
            "2001",
            "\n",
        ];
        let seps = [" ", " ", " ", "", "\n", ", ", ". ", "-", ":", ".", "@"];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for case in 0..2000 {
            let d = if case % 4 == 3 { &small } else { det() };
            let mut text = String::new();
            for _ in 0..(2 + rng.next() % 7) {
                text.push_str(rng.pick(&vocab));
                text.push_str(rng.pick(&seps));
            }
            let full = text.as_bytes();
            let full_cands = candidates(d, full);
            for n in 0..=full.len() {
                let prefix = &full[..n];
                let a = d.alive_from(prefix, 0);
                assert!(a <= n);
                let (mut pos, mut got) = (0, Vec::new());
                while pos < a {
                    match d.find_candidate(prefix, pos) {
                        Some(c) if c.start < a => got.push((c, d.validate(prefix, c))),
                        _ => break,
                    }
                    pos = got.last().unwrap().0.end;
                }
                let want: Vec<_> = full_cands
                    .iter()
                    .filter(|c| c.start < a)
                    .map(|&c| (c, d.validate(full, c)))
                    .collect();
                // Validation needs no more look-behind than one char (what the masker keeps).
                for &(c, ok) in &got {
                    let keep = text[..c.start]
                        .chars()
                        .next_back()
                        .map_or(0, char::len_utf8);
                    let cut = c.start - keep;
                    let shifted = Candidate {
                        start: keep,
                        end: c.end - cut,
                        ..c
                    };
                    assert_eq!(d.validate(&prefix[cut..], shifted), ok, "{c:?} in {text:?}");
                }
                assert_eq!(
                    got, want,
                    "case {case}, prefix {n} of {text:?}, alive at {a}"
                );
                // A later `from` gives the first alive start at or after it.
                let from = (rng.next() % (n as u64 + 1)) as usize;
                let b = d.alive_from(prefix, from);
                assert!(
                    b >= from && (a < from || b == a),
                    "from {from}: {b} vs {a} in {text:?}[..{n}]"
                );
            }
        }
    }
}
