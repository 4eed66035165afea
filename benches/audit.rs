//! Audit record encoding, the writer thread's per-call work: the `begin`
//! record (request body masked and embedded) and the `call` record (response
//! reassembled from the captured bytes, masked, cut), each sealed into the
//! hash chain. For a small JSON call and for a 200-event SSE stream. And
//! drift's per-call work on the same writer thread (an observation of the
//! reassembled answer, a window update, a score every 50 calls), to compare
//! with the encoding it follows. And sealing one record with each kind of
//! chain key (SHA-256, HMAC-SHA256).
//!
//! cargo bench --bench audit

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use modelgate::audit::chain::{Chain, ChainKey, GENESIS};
use modelgate::audit::record::{Call, Capture, Decision, Encoder, Masks, Outcome};
use modelgate::config::BodyMode;
use modelgate::identity::{Client, Via};
use modelgate::mask::detect::{Detector, BUILTIN};
use modelgate::mask::replace::Style;
use modelgate::mask::stream::MaskRules;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const ANSWER: &str = "Sure, happy to help. Our support contact is jane.doe@example.com, or call +1 415-555-0132 during business hours.";

fn call() -> Call {
    let body = serde_json::json!({
        "model": "llama-3-8b",
        "messages": [{"role": "user", "content": "How do I reach support? My card is 4111 1111 1111 1111."}]
    });
    Call {
        id: "0123456789abcdef00000001".into(),
        started: SystemTime::now(),
        client: Some(Arc::new(Client {
            name: "alice".into(),
            groups: vec!["analysts".into()],
            via: Via::ApiKey,
            label: Arc::from("alice"),
            cert: None,
        })),
        tls: None,
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        route: Some(Arc::from("vllm")),
        pool: Some(Arc::from("vllm")),
        model: Some("llama-3-8b".into()),
        request_body: Bytes::from(serde_json::to_vec(&body).unwrap()),
        stored_request: Default::default(),
        stored_common: Default::default(),
    }
}

fn outcome(content_type: &str, bytes: &[u8]) -> Outcome {
    let mut response = Capture::new(16 * 65536);
    response.push(bytes);
    Outcome {
        host: Some("127.0.0.1:8000".into()),
        status: 200,
        content_type: content_type.into(),
        response,
        ttfb: Some(Duration::from_millis(12)),
        ttft: Some(Duration::from_millis(15)),
        duration: Duration::from_millis(340),
        decision: Decision {
            action: "allow",
            reason: None,
            approval: None,
        },
        error: None,
        request_masks: Masks::default(),
        response_masks: Masks::default(),
        response_fully_masked: false,
    }
}

fn json_response() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1718000000, "model": "llama-3-8b",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 24, "total_tokens": 36}
    }))
    .unwrap()
}

fn sse_response(events: usize) -> Vec<u8> {
    let words: Vec<&str> = ANSWER.split_inclusive(' ').collect();
    let mut out = Vec::new();
    for i in 0..events {
        let chunk = serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1718000000, "model": "llama-3-8b",
            "choices": [{"index": 0, "delta": {"content": words[i % words.len()]}, "finish_reason": null}]
        });
        out.extend_from_slice(format!("data: {chunk}\n\n").as_bytes());
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

/// The encoder of a sink storing masked bodies, masking every built-in entity.
fn encoder() -> Encoder {
    let detector = Arc::new(Detector::new(&BUILTIN, &[]).unwrap());
    Encoder {
        bodies: BodyMode::Masked,
        max_body: 65536,
        rules: Arc::new(MaskRules::uniform(detector, Style::Label, 16 * 1024)),
    }
}

fn encoding(c: &mut Criterion) {
    let encoder = encoder();
    let mut chain = Chain::new(ChainKey::new(None), 0, GENESIS);
    let mut g = c.benchmark_group("audit");
    for (name, ct, bytes) in [
        ("json_call", "application/json", json_response()),
        (
            "sse_200_events_call",
            "text/event-stream",
            sse_response(200),
        ),
    ] {
        let o = outcome(ct, &bytes);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("begin_and_end_records/{name}"), |b| {
            let mut obj = Vec::with_capacity(8192);
            let mut out = Vec::with_capacity(8192);
            b.iter(|| {
                // A fresh call each time: the stored request is made once per call.
                let call = call();
                out.clear();
                obj.clear();
                encoder.begin(&call, &mut obj);
                chain.seal(&obj, &mut out);
                obj.clear();
                encoder.end(&call, &o, &mut obj);
                chain.seal(&obj, &mut out);
                black_box(&out);
            })
        });
        // Steady state: the baseline learned, the window full.
        let metrics = Arc::new(modelgate::metrics::Metrics::new());
        let alerts = modelgate::drift::Alerts::new(metrics, None);
        let cfg: modelgate::drift::DriftConfig = serde_yaml::from_str("{}").unwrap();
        let mut drift =
            modelgate::drift::Drift::build(&cfg, encoder.rules.clone(), alerts, &mut Vec::new())
                .unwrap();
        let call = call();
        let mut obj = Vec::with_capacity(8192);
        let answer = encoder.end(&call, &o, &mut obj);
        for _ in 0..(cfg.baseline_calls + cfg.window) {
            drift.observe(&call, &o, &answer);
        }
        g.bench_function(format!("drift_observe/{name}"), |b| {
            b.iter(|| black_box(drift.observe(&call, &o, &answer)))
        });
    }
    g.finish();
}

/// Sealing one record of a JSON call (its `call` record, 894 bytes, and the
/// `seq` and `prev` the chain puts before it, all hashed) with
/// each kind of chain key: plain SHA-256 and HMAC-SHA256 (`audit.hmac_key`).
fn sealing(c: &mut Criterion) {
    let encoder = encoder();
    let mut record = Vec::new();
    encoder.end(
        &call(),
        &outcome("application/json", &json_response()),
        &mut record,
    );
    let mut g = c.benchmark_group("audit");
    for (name, key) in [
        ("sha256", None),
        ("hmac_sha256", Some(&b"change-me-too"[..])),
    ] {
        let mut chain = Chain::new(ChainKey::new(key), 0, GENESIS);
        let mut out = Vec::with_capacity(4096);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("seal_call_record/{name}"), |b| {
            b.iter(|| {
                out.clear();
                black_box(chain.seal(&record, &mut out));
            })
        });
    }
    g.finish();
}

criterion_group!(benches, encoding, sealing);
criterion_main!(benches);
