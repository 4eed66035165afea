//! Fuzzes the response codecs with arbitrary bodies and arbitrary chunking:
//! no panic, and the output does not depend on where the body was split.
#![no_main]
use libfuzzer_sys::fuzz_target;
use modelgate::mask::codec::ResponseMasker;

#[path = "common.rs"]
mod common;

const TYPES: [&str; 5] = ["text/event-stream", "application/x-ndjson", "application/json", "text/plain", "application/vnd.api+json"];

fn run(ct: &str, body: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut m = ResponseMasker::for_content_type(ct, common::rules(), 1 << 20).unwrap();
    let mut out = Vec::new();
    let mut last = 0;
    for &c in cuts {
        let _ = m.feed(&body[last..c], false, &mut out);
        last = c;
    }
    let _ = m.feed(&body[last..], true, &mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let ct = TYPES[data[0] as usize % TYPES.len()];
    let step = 1 + data[1] as usize % 17;
    let body = &data[2..];
    let cuts: Vec<usize> = (step..body.len()).step_by(step).collect();
    let whole = run(ct, body, &[]);
    let split = run(ct, body, &cuts);
    assert_eq!(whole, split, "output depends on chunking for {ct}");
});
