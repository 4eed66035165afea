//! The numbers behind drift detection: what one call contributes
//! ([`Observation`]), the signals, histograms over a set of observations
//! ([`Baseline`], built the same way for the baseline and the recent
//! window) and the population stability index between two of them ([`psi`]).
//!
//! Pure and synchronous: no I/O, no clocks, no metrics.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Numeric signals, in [`Observation::numeric`] order.
pub const NUMERIC: [&str; 4] = [
    "response_chars",
    "completion_tokens",
    "ttft_ms",
    "tokens_per_second",
];

/// Categorical signals, in [`Observation::cats`] order, with their categories.
pub const CATEGORICAL: [(&str, &[&str]); 5] = [
    (
        "finish_reason",
        &[
            "none",
            "stop",
            "length",
            "tool_calls",
            "content_filter",
            "other",
        ],
    ),
    ("refusal", &["no", "yes"]),
    ("error", &["no", "yes"]),
    (
        "script",
        &[
            "none", "latin", "cyrillic", "greek", "arabic", "cjk", "other",
        ],
    ),
    ("code_block", &["no", "yes"]),
];

/// The signal name of PII entity `entity` (e.g. `pii_email`).
pub fn pii_signal(entity: &str) -> String {
    format!("pii_{}", entity.to_ascii_lowercase())
}

/// Quantiles that cut numeric values into bins (deciles).
const BINS: usize = 10;
/// Added to every bin's count before proportions are taken, so that an
/// empty bin on one side gives a large but finite score.
const SMOOTHING: f64 = 0.5;

/// What one call contributes to the statistics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// [`NUMERIC`] values; `None` when the call did not have one (an error
    /// has no answer length, a stream without usage no token count, a
    /// whole-body answer no time to first token or decode speed).
    pub numeric: [Option<f64>; 4],
    /// Index into each [`CATEGORICAL`] signal's categories.
    pub cats: [u8; 5],
    /// Bit `i`: entity `i` (of the audit's entity list) was found in the answer.
    pub pii: u64,
    /// The model the answer names (`model`), and its `system_fingerprint`.
    pub model: Option<String>,
    pub fingerprint: Option<String>,
}

/// The facts of one call an observation is made from (live, or read back
/// from an audit record).
#[derive(Debug, Default)]
pub struct Facts<'a> {
    pub text: &'a str,
    /// The upstream's own refusal field (OpenAI `refusal`).
    pub refusal_field: &'a str,
    pub finish_reason: Option<&'a str>,
    pub completion_tokens: Option<u64>,
    /// Request sent upstream to the first response body byte.
    pub ttft_ms: Option<f64>,
    pub duration_ms: f64,
    /// The body was a stream (SSE or NDJSON). Only streams have a time to
    /// first token and a decode speed: a whole body's first byte comes
    /// after the whole generation.
    pub streamed: bool,
    pub failed: bool,
    pub pii: u64,
    pub model: Option<&'a str>,
    pub fingerprint: Option<&'a str>,
}

impl Observation {
    /// `refused` says whether the text reads as a refusal (see
    /// [`super::Refusals`]).
    pub fn new(f: &Facts, refused: bool) -> Observation {
        let chars = (!f.failed).then(|| f.text.chars().count() as f64);
        let tokens = f.completion_tokens.map(|t| t as f64);
        let ttft = f.ttft_ms.filter(|_| f.streamed && !f.failed);
        let tps = match (f.completion_tokens, ttft) {
            (Some(t), Some(first)) if t > 0 && f.duration_ms - first >= 1.0 => {
                Some(t as f64 * 1000.0 / (f.duration_ms - first))
            }
            _ => None,
        };
        let code_block = f.text.contains("```");
        Observation {
            numeric: [chars, tokens, ttft, tps],
            cats: [
                finish_category(f.finish_reason),
                (refused || !f.refusal_field.trim().is_empty()) as u8,
                f.failed as u8,
                script(f.text),
                code_block as u8,
            ],
            pii: f.pii,
            model: f.model.map(short),
            fingerprint: f.fingerprint.map(short),
        }
    }
}

/// Longest `model` / `system_fingerprint` kept (the upstream chooses them).
const MAX_NAME_CHARS: usize = 200;
/// Distinct `model` / `system_fingerprint` values a baseline keeps.
pub const MAX_VALUES: usize = 64;

fn short(s: &str) -> String {
    s.chars().take(MAX_NAME_CHARS).collect()
}

/// The index of a finish reason in `finish_reason`'s categories; the
/// Anthropic and Ollama names map to OpenAI's.
fn finish_category(reason: Option<&str>) -> u8 {
    match reason {
        None | Some("") => 0,
        Some("stop" | "end_turn" | "stop_sequence") => 1,
        Some("length" | "max_tokens") => 2,
        Some("tool_calls" | "function_call" | "tool_use") => 3,
        Some("content_filter" | "refusal") => 4,
        Some(_) => 5,
    }
}

/// The dominant writing system of the letters in the first 2,000
/// characters (an index into `script`'s categories).
fn script(text: &str) -> u8 {
    let mut counts = [0u32; 7];
    for c in text.chars().take(2000).filter(|c| c.is_alphabetic()) {
        let i = match c as u32 {
            0..=0x024F | 0x1E00..=0x1EFF => 1,
            0x0370..=0x03FF => 3,
            0x0400..=0x052F => 2,
            0x0590..=0x06FF | 0x0750..=0x077F => 4,
            0x3040..=0x30FF | 0x3400..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF => 5,
            _ => 6,
        };
        counts[i] += 1;
    }
    let (best, n) = counts
        .iter()
        .enumerate()
        .max_by_key(|(i, n)| (**n, std::cmp::Reverse(*i)))
        .expect("non-empty");
    if *n == 0 {
        0
    } else {
        best as u8
    }
}

/// A numeric signal's distribution: counts per bin between `edges` (bin
/// `i` holds values in `[edges[i-1], edges[i])`, the first everything
/// below `edges[0]`), plus calls without a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericHist {
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
    pub missing: u64,
    /// Median of the values, for people reading an alert.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median: Option<f64>,
}

impl NumericHist {
    /// Decile edges of `values` (deduplicated), and the counts over them.
    pub fn learn(values: impl Iterator<Item = Option<f64>>) -> NumericHist {
        let mut present = Vec::new();
        let mut missing = 0;
        for v in values {
            match v {
                Some(v) if v.is_finite() => present.push(v),
                _ => missing += 1,
            }
        }
        present.sort_by(f64::total_cmp);
        let mut edges: Vec<f64> = Vec::new();
        if !present.is_empty() {
            for q in 1..BINS {
                let e = present[(present.len() * q / BINS).min(present.len() - 1)];
                if edges.last().is_none_or(|l| e > *l) {
                    edges.push(e);
                }
            }
        }
        let mut h = NumericHist::empty(edges);
        h.missing = missing;
        for v in &present {
            let b = h.bin(*v);
            h.counts[b] += 1;
        }
        h.median = median(&present);
        h
    }

    /// `values` counted over `self`'s edges.
    pub fn count(&self, values: impl Iterator<Item = Option<f64>>) -> NumericHist {
        let mut h = NumericHist::empty(self.edges.clone());
        let mut present = Vec::new();
        for v in values {
            match v {
                Some(v) if v.is_finite() => {
                    let b = h.bin(v);
                    h.counts[b] += 1;
                    present.push(v);
                }
                _ => h.missing += 1,
            }
        }
        present.sort_by(f64::total_cmp);
        h.median = median(&present);
        h
    }

    fn empty(edges: Vec<f64>) -> NumericHist {
        NumericHist {
            counts: vec![0; edges.len() + 1],
            edges,
            missing: 0,
            median: None,
        }
    }

    fn bin(&self, v: f64) -> usize {
        self.edges.partition_point(|e| *e <= v)
    }

    /// Counts per bin: what [`psi`] compares. Calls without a value are
    /// left out: whether a value exists depends on the client (streaming,
    /// `include_usage`) as much as on the model.
    fn cells(&self) -> Vec<u64> {
        self.counts.clone()
    }

    /// Whether the file's numbers fit together.
    fn is_consistent(&self) -> bool {
        self.counts.len() == self.edges.len() + 1
            && self.edges.windows(2).all(|w| w[0] < w[1])
            && self.edges.iter().all(|e| e.is_finite())
    }
}

fn median(sorted: &[f64]) -> Option<f64> {
    (!sorted.is_empty()).then(|| sorted[sorted.len() / 2])
}

/// The distributions of every signal over a set of calls: a baseline, or
/// the recent window (counted over the baseline's edges).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub calls: u64,
    pub numeric: BTreeMap<String, NumericHist>,
    /// Counts per category; PII entities as `pii_<entity>` with `no`/`yes`.
    pub categorical: BTreeMap<String, BTreeMap<String, u64>>,
    /// Values of the answer's `model` and `system_fingerprint` seen.
    #[serde(default)]
    pub models: BTreeSet<String>,
    #[serde(default)]
    pub fingerprints: BTreeSet<String>,
}

impl Baseline {
    /// Learns a baseline from `obs`; `entities` names the PII bits.
    pub fn learn(obs: &[Observation], entities: &[String]) -> Baseline {
        // A signal no baseline call had (no streams, no usage, or an audit
        // file from before `ttft_ms` was recorded) is not scored.
        let numeric = NUMERIC
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let h = NumericHist::learn(obs.iter().map(|o| o.numeric[i]));
                (name.to_string(), h)
            })
            .filter(|(_, h)| h.counts.iter().sum::<u64>() > 0)
            .collect();
        let mut b = Baseline {
            calls: obs.len() as u64,
            numeric,
            categorical: categorical(obs, entities),
            models: BTreeSet::new(),
            fingerprints: BTreeSet::new(),
        };
        for o in obs {
            for (set, v) in [
                (&mut b.models, &o.model),
                (&mut b.fingerprints, &o.fingerprint),
            ] {
                if let Some(v) = v {
                    if set.len() < MAX_VALUES {
                        set.insert(v.clone());
                    }
                }
            }
        }
        b
    }

    /// `obs` counted the way this baseline was (same numeric edges).
    pub fn window(&self, obs: &[&Observation], entities: &[String]) -> Baseline {
        let numeric = NUMERIC
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                let h = self.numeric.get(*name)?;
                Some((name.to_string(), h.count(obs.iter().map(|o| o.numeric[i]))))
            })
            .collect();
        Baseline {
            calls: obs.len() as u64,
            numeric,
            categorical: categorical_refs(obs, entities),
            models: BTreeSet::new(),
            fingerprints: BTreeSet::new(),
        }
    }

    /// The score of every signal `self` and `current` both have, by name,
    /// with its noise floor (see [`noise_floor`]).
    pub fn scores(&self, current: &Baseline) -> Vec<(String, f64, f64)> {
        let mut out = Vec::new();
        let mut push = |name: &String, b: &[u64], c: &[u64]| {
            let nb: u64 = b.iter().sum();
            let nc: u64 = c.iter().sum();
            let cells = b.iter().zip(c).filter(|(x, y)| **x + **y > 0).count();
            out.push((name.clone(), psi(b, c), noise_floor(cells, nb, nc)));
        };
        for (name, b) in &self.numeric {
            if let Some(c) = current.numeric.get(name) {
                push(name, &b.cells(), &c.cells());
            }
        }
        for (name, b) in &self.categorical {
            let empty = BTreeMap::new();
            let c = current.categorical.get(name).unwrap_or(&empty);
            let keys: BTreeSet<&String> = b.keys().chain(c.keys()).collect();
            let bs: Vec<u64> = keys
                .iter()
                .map(|k| b.get(*k).copied().unwrap_or(0))
                .collect();
            let cs: Vec<u64> = keys
                .iter()
                .map(|k| c.get(*k).copied().unwrap_or(0))
                .collect();
            push(name, &bs, &cs);
        }
        out
    }

    /// A short description of signal `name` for an alert: the median (and
    /// share of calls without a value), or the share of each category.
    pub fn describe(&self, name: &str) -> serde_json::Value {
        if let Some(h) = self.numeric.get(name) {
            let n = self.calls.max(1) as f64;
            return serde_json::json!({
                "median": h.median,
                "missing_share": round3(h.missing as f64 / n),
            });
        }
        let Some(c) = self.categorical.get(name) else {
            return serde_json::Value::Null;
        };
        let n = c.values().sum::<u64>().max(1) as f64;
        let shares: serde_json::Map<String, serde_json::Value> = c
            .iter()
            .map(|(k, v)| (k.clone(), round3(*v as f64 / n).into()))
            .collect();
        serde_json::Value::Object(shares)
    }

    /// Checks a baseline read from a file; `Err` says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        for (name, h) in &self.numeric {
            if !h.is_consistent() {
                return Err(format!(
                    "signal `{name}`: edges must increase and there must be one count more than edges"
                ));
            }
        }
        if self.calls == 0 {
            return Err("a baseline of 0 calls".into());
        }
        Ok(())
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn categorical(
    obs: &[Observation],
    entities: &[String],
) -> BTreeMap<String, BTreeMap<String, u64>> {
    let refs: Vec<&Observation> = obs.iter().collect();
    categorical_refs(&refs, entities)
}

fn categorical_refs(
    obs: &[&Observation],
    entities: &[String],
) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for (i, (name, cats)) in CATEGORICAL.iter().enumerate() {
        let mut counts = BTreeMap::new();
        for o in obs {
            let cat = cats.get(o.cats[i] as usize).copied().unwrap_or("other");
            *counts.entry(cat.to_string()).or_insert(0) += 1;
        }
        out.insert(name.to_string(), counts);
    }
    for (i, entity) in entities.iter().enumerate().take(64) {
        let yes = obs.iter().filter(|o| o.pii & (1 << i) != 0).count() as u64;
        let counts = BTreeMap::from([
            ("no".to_string(), obs.len() as u64 - yes),
            ("yes".to_string(), yes),
        ]);
        out.insert(pii_signal(entity), counts);
    }
    out
}

/// Population stability index of `current` against `baseline` (counts per
/// cell, same cells): Σ (q − p) · ln(q / p) over the cells' shares, each
/// count smoothed by 0.5. 0 for identical shares; by convention under 0.1
/// is stable, 0.1–0.25 a moderate shift, over 0.25 a large one.
pub fn psi(baseline: &[u64], current: &[u64]) -> f64 {
    debug_assert_eq!(baseline.len(), current.len());
    let k = baseline.len() as f64;
    let nb = baseline.iter().sum::<u64>() as f64 + SMOOTHING * k;
    let nc = current.iter().sum::<u64>() as f64 + SMOOTHING * k;
    baseline
        .iter()
        .zip(current)
        .map(|(b, c)| {
            let p = (*b as f64 + SMOOTHING) / nb;
            let q = (*c as f64 + SMOOTHING) / nc;
            (q - p) * (q / p).ln()
        })
        .sum()
}

/// The score that sampling noise alone stays under 999 times in 1,000.
/// Between two samples of one distribution, PSI · n·m/(n+m) is close to
/// χ² with (cells − 1) degrees of freedom, so small windows score higher by
/// chance alone: 100 calls against 100 over 11 cells reach 0.2 on average.
/// An alert needs its score above this floor as well as the threshold.
pub fn noise_floor(cells: usize, n: u64, m: u64) -> f64 {
    if cells < 2 || n == 0 || m == 0 {
        return f64::INFINITY;
    }
    let df = (cells - 1) as f64;
    // Wilson–Hilferty: the 0.999 quantile of χ²(df); z(0.999) = 3.09.
    let a = 2.0 / (9.0 * df);
    let q = df * (1.0 - a + 3.09 * a.sqrt()).powi(3);
    q * (1.0 / n as f64 + 1.0 / m as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_noise_floor_follows_the_chi_square_quantile() {
        // χ²(1) 0.999 = 10.83, χ²(10) 0.999 = 29.59 (tables).
        assert!((noise_floor(2, 1, u64::MAX) - 10.83).abs() < 0.6);
        assert!((noise_floor(11, 1, u64::MAX) - 29.59).abs() < 0.6);
        let small = noise_floor(11, 100, 100);
        let large = noise_floor(11, 500, 500);
        assert!(small > 0.5 && large < 0.13, "{small} {large}");
        assert_eq!(noise_floor(1, 100, 100), f64::INFINITY);
    }

    #[test]
    fn psi_is_zero_for_equal_shares_and_grows_with_the_shift() {
        assert!(psi(&[50, 50], &[100, 100]).abs() < 1e-12);
        let small = psi(&[90, 10], &[85, 15]);
        let large = psi(&[90, 10], &[50, 50]);
        assert!(small > 0.0 && small < 0.1, "{small}");
        assert!(large > 0.25, "{large}");
        // An empty cell on one side is finite.
        assert!(psi(&[100, 0], &[0, 100]).is_finite());
    }

    #[test]
    fn numeric_bins_are_deciles_and_count_missing_values() {
        let values: Vec<Option<f64>> = (0..100).map(|i| Some(i as f64)).chain([None]).collect();
        let h = NumericHist::learn(values.iter().copied());
        assert_eq!(
            h.edges,
            (1..10).map(|i| (i * 10) as f64).collect::<Vec<_>>()
        );
        assert_eq!(h.counts, vec![10; 10]);
        assert_eq!(h.missing, 1);
        // Constant values: one edge, everything in the upper bin.
        let h = NumericHist::learn([Some(3.0); 5].into_iter());
        assert_eq!((h.edges.clone(), h.counts.clone()), (vec![3.0], vec![0, 5]));
        let c = h.count([Some(1.0), Some(3.0), Some(9.0), None].into_iter());
        assert_eq!((c.counts, c.missing), (vec![1, 2], 1));
    }

    #[test]
    fn observations_read_the_call() {
        let f = Facts {
            text: "Привет, мир! ```code```",
            finish_reason: Some("max_tokens"),
            completion_tokens: Some(50),
            ttft_ms: Some(100.0),
            duration_ms: 600.0,
            streamed: true,
            pii: 0b10,
            ..Default::default()
        };
        let o = Observation::new(&f, false);
        assert_eq!(o.numeric[0], Some(23.0));
        assert_eq!(o.numeric[3], Some(100.0)); // 50 tokens in 500 ms
                                               // A whole body has no time to first token or decode speed.
        let whole = Observation::new(
            &Facts {
                streamed: false,
                ..f
            },
            false,
        );
        assert_eq!((whole.numeric[2], whole.numeric[3]), (None, None));
        assert_eq!(o.cats, [2, 0, 0, 2, 1]);
        let failed = Observation::new(
            &Facts {
                failed: true,
                ..Default::default()
            },
            false,
        );
        assert_eq!(failed.numeric[0], None);
        assert_eq!(failed.cats[2], 1);
        assert_eq!(script("東京は晴れ"), 5);
        assert_eq!(script("1234 !!"), 0);
    }

    #[test]
    fn baselines_round_trip_and_windows_use_their_edges() {
        let obs: Vec<Observation> = (0..200)
            .map(|i| Observation {
                numeric: [Some(i as f64), None, Some(5.0), None],
                pii: (i % 4 == 0) as u64,
                ..Default::default()
            })
            .collect();
        let entities = vec!["EMAIL".to_string()];
        let b = Baseline::learn(&obs, &entities);
        assert_eq!(b.categorical["pii_email"]["yes"], 50);
        let json = serde_json::to_string(&b).unwrap();
        let back: Baseline = serde_json::from_str(&json).unwrap();
        assert_eq!(back, b);
        back.check().unwrap();
        let same: Vec<&Observation> = obs.iter().collect();
        let w = b.window(&same, &entities);
        assert!(b.scores(&w).iter().all(|(_, s, _)| s.abs() < 1e-9));
        let longer: Vec<Observation> = obs
            .iter()
            .map(|o| Observation {
                numeric: [o.numeric[0].map(|v| v + 150.0), None, Some(5.0), None],
                ..o.clone()
            })
            .collect();
        let refs: Vec<&Observation> = longer.iter().collect();
        let scores = b.scores(&b.window(&refs, &entities));
        let chars = scores
            .iter()
            .find(|(n, _, _)| n == "response_chars")
            .unwrap();
        assert!(chars.1 > 1.0, "{scores:?}");
    }
}
