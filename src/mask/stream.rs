//! The streaming masker: one logical text stream (one field of one choice),
//! fed piece by piece as tokens arrive, releasing only text that can no
//! longer become part of a match.
//!
//! Split invariance is the contract: whatever the piece boundaries, the
//! concatenation of everything released (including [`StreamMasker::finish`])
//! equals masking the whole text at once. It holds because a decision is
//! taken only before [`Detector::alive_from`], the first position where a
//! match could still start or grow; later text cannot change it.
//!
//! Held-back text is bounded by `max_holdback` bytes. Beyond it the oldest
//! held text is released as is (counted in `overflows`): only a single
//! candidate longer than the bound (e.g. a huge PEM block) can hit it.

use super::detect::Detector;
use super::replace::{Replacer, Style};
use std::sync::Arc;

/// The detectors and replacement rules of one policy, shared by its streams.
pub struct MaskRules {
    pub detector: Arc<Detector>,
    pub replacer: Replacer,
    pub max_holdback: usize,
}

impl MaskRules {
    /// Rules giving every entity of `detector` the same (unkeyed) style; the
    /// form benches, property tests and fuzz targets use. Policies build
    /// theirs in `MaskEngine`, with per-entity styles and a hash key.
    pub fn uniform(detector: Arc<Detector>, style: Style, max_holdback: usize) -> Self {
        let names = detector.names().to_vec();
        let styles = vec![style; names.len()];
        MaskRules {
            replacer: Replacer::new(names, styles, None),
            detector,
            max_holdback,
        }
    }

    pub fn entity_count(&self) -> usize {
        self.detector.names().len()
    }

    /// Masks a complete text (no streaming): the result of push + finish,
    /// except that the holdback bound never forces text out unmasked.
    pub fn mask_all(&self, text: &str, counts: &mut [u32]) -> String {
        let mut out = String::with_capacity(text.len());
        if text.is_empty() {
            return out;
        }
        // One release at the end: nothing is held back, so the liveness
        // scan a push makes is not needed (split invariance: same result).
        let mut m = StreamMasker {
            buf: text.to_string(),
            ..Default::default()
        };
        m.release(self, true, &mut out, counts);
        out
    }
}

/// One text stream's masking state. Holds no reference to the rules, so a
/// codec can keep many in a map and pass the rules in.
#[derive(Default, Debug)]
pub struct StreamMasker {
    /// `buf[..ctx]` is released look-behind context (at most one char);
    /// `buf[ctx..]` is held back.
    buf: String,
    ctx: usize,
    /// Times the holdback bound forced an early release.
    pub overflows: u32,
}

impl StreamMasker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes currently held back.
    pub fn held(&self) -> usize {
        self.buf.len() - self.ctx
    }

    /// Adds `text` and appends whatever became final (masked) to `out`.
    pub fn push(&mut self, rules: &MaskRules, text: &str, out: &mut String, counts: &mut [u32]) {
        if text.is_empty() {
            return;
        }
        self.buf.push_str(text);
        self.release(rules, false, out, counts);
    }

    /// End of stream: releases everything held (masked).
    pub fn finish(&mut self, rules: &MaskRules, out: &mut String, counts: &mut [u32]) {
        self.release(rules, true, out, counts);
        self.buf.clear();
        self.ctx = 0;
    }

    fn release(&mut self, rules: &MaskRules, last: bool, out: &mut String, counts: &mut [u32]) {
        let det = &*rules.detector;
        let hay = self.buf.as_bytes();
        let len = hay.len();
        let mut pos = self.ctx;
        let mut alive = if last { len } else { det.alive_from(hay, pos) };
        // When nothing before `alive` can be final, skip the search (a long
        // unfinished candidate, e.g. a PEM block, would be rescanned per chunk).
        while alive > pos {
            let Some(c) = det.find_candidate(hay, pos) else {
                break;
            };
            if c.start >= alive {
                break;
            }
            // Final: its automaton died before the end of what we hold.
            out.push_str(&self.buf[pos..c.start]);
            let value = &self.buf[c.start..c.end];
            if det.validate(hay, c) {
                rules.replacer.write(c.entity, value, out);
                if let Some(n) = counts.get_mut(c.entity) {
                    *n += 1;
                }
            } else {
                out.push_str(value);
            }
            pos = c.end;
            if pos > alive {
                alive = if last { len } else { det.alive_from(hay, pos) };
            }
        }
        let mut cut = alive.max(pos);
        if !last && len - cut > rules.max_holdback {
            let mut forced = len - rules.max_holdback;
            while !self.buf.is_char_boundary(forced) {
                forced += 1;
            }
            cut = forced;
            self.overflows += 1;
        }
        out.push_str(&self.buf[pos..cut]);
        // Keep one released char as look-behind context for `\b` and anchors.
        let mut keep = cut;
        if keep > 0 {
            keep -= 1;
            while !self.buf.is_char_boundary(keep) {
                keep -= 1;
            }
        }
        self.buf.drain(..keep);
        self.ctx = cut - keep;
    }
}
