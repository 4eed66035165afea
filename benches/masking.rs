//! Masking hot path: throughput of the masker on realistic LLM output
//! (whole text and streamed token by token, all built-in entities on), and
//! the time the SSE codec adds per event.
//!
//! cargo bench --bench masking

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use modelgate::mask::codec::ResponseMasker;
use modelgate::mask::detect::{Detector, BUILTIN};
use modelgate::mask::replace::Style;
use modelgate::mask::stream::{MaskRules, StreamMasker};
use std::sync::Arc;

/// LLM-style prose, lists and code, with PII sprinkled in (about one value per
/// 700 bytes), repeated to `len` bytes.
fn llm_text(len: usize) -> String {
    const PARAS: &[&str] = &[
        "Sure! Here's a summary of the quarterly report. Revenue grew 12% year over year, driven mostly by the enterprise segment, while operating costs stayed flat at $4.2M. The team expects the new pricing (effective 2024-07-01) to lift margins further.\n\n",
        "To reach the account manager, email jane.doe@example.com or call +1 415-555-0132 between 9am and 5pm PT. For billing questions, the reference on file is order #A-10023-77.\n\n",
        "```python\ndef retry(fn, attempts=3):\n    for i in range(attempts):\n        try:\n            return fn()\n        except TimeoutError:\n            time.sleep(2 ** i)\n    raise RuntimeError(\"gave up\")\n```\n\n",
        "1. Open the settings page.\n2. Select **Integrations** and paste the webhook URL.\n3. Save, then send a test event; the status should turn green within a minute.\n\n",
        "The customer's card ending in 1111 (4111 1111 1111 1111) was charged twice; the refund goes back to IBAN DE89 3704 0044 0532 0130 00 within five business days.\n\n",
        "Version 2.4.1 fixes the memory leak reported in issue 3141 and bumps the minimum supported runtime to 1.70. The staging cluster at 10.20.30.40 has already been upgraded.\n\n",
        "In short: the approach is sound, but measure before optimising. Profiles usually show the time is spent somewhere other than where intuition points, especially in I/O-heavy services.\n\n",
    ];
    let mut s = String::with_capacity(len + 512);
    let mut i = 0;
    while s.len() < len {
        s.push_str(PARAS[i % PARAS.len()]);
        i += 1;
    }
    s
}

fn rules() -> Arc<MaskRules> {
    let detector = Arc::new(Detector::new(&BUILTIN, &[]).unwrap());
    Arc::new(MaskRules::uniform(detector, Style::Label, 16 * 1024))
}

/// Pieces of about `n` bytes (at char boundaries), like model tokens.
fn tokens(text: &str, n: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + n).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        out.push(&text[start..end]);
        start = end;
    }
    out
}

fn masker_throughput(c: &mut Criterion) {
    let r = rules();
    let text = llm_text(64 * 1024);
    let mut g = c.benchmark_group("masker");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("whole_text_64KiB", |b| {
        b.iter(|| {
            let mut counts = vec![0; r.entity_count()];
            black_box(r.mask_all(black_box(&text), &mut counts))
        })
    });
    for n in [4usize, 16, 256] {
        let pieces = tokens(&text, n);
        g.bench_with_input(
            BenchmarkId::new("streamed_64KiB_pieces_of", n),
            &pieces,
            |b, pieces| {
                b.iter(|| {
                    let mut counts = vec![0; r.entity_count()];
                    let mut m = StreamMasker::new();
                    let mut out = String::with_capacity(text.len());
                    for p in pieces {
                        m.push(&r, p, &mut out, &mut counts);
                    }
                    m.finish(&r, &mut out, &mut counts);
                    black_box(out)
                })
            },
        );
    }
    g.finish();
}

fn sse_per_event(c: &mut Criterion) {
    let r = rules();
    let text = llm_text(8 * 1024);
    let events: Vec<Vec<u8>> = tokens(&text, 4)
        .into_iter()
        .map(|t| {
            format!(
                "data: {{\"id\":\"chatcmpl-9x8y7z\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"llama-3-8b\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}]}}\n\n",
                serde_json::to_string(t).unwrap()
            )
            .into_bytes()
        })
        .collect();
    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("openai_chunk_events_masked", |b| {
        b.iter(|| {
            let mut m =
                ResponseMasker::for_content_type("text/event-stream", r.clone(), 1 << 20).unwrap();
            let mut out = Vec::with_capacity(1024);
            for e in &events {
                out.clear();
                m.feed(e, false, &mut out).unwrap();
                black_box(&out);
            }
            m.feed(b"data: [DONE]\n\n", true, &mut out).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, masker_throughput, sse_per_event);
criterion_main!(benches);
