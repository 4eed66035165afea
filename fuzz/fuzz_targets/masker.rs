//! Fuzzes the streaming masker: for arbitrary text and arbitrary split
//! points, streaming gives exactly what masking the whole text gives, and
//! held-back text stays within the bound.
#![no_main]
use libfuzzer_sys::fuzz_target;
use modelgate::mask::stream::StreamMasker;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let rules = common::rules();
    let mut counts = vec![0; rules.entity_count()];
    let whole = rules.mask_all(text, &mut counts);
    let mut m = StreamMasker::new();
    let mut out = String::new();
    let step = 1 + seed as usize % 13;
    let mut last = 0;
    for c in (step..text.len()).step_by(step) {
        if text.is_char_boundary(c) {
            m.push(&rules, &text[last..c], &mut out, &mut counts);
            assert!(m.held() <= rules.max_holdback);
            last = c;
        }
    }
    m.push(&rules, &text[last..], &mut out, &mut counts);
    m.finish(&rules, &mut out, &mut counts);
    assert_eq!(out, whole);
});
