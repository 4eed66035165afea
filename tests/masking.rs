//! Integration tests of response (and prompt) masking through the real gateway:
//! every codec (OpenAI / Anthropic SSE, Ollama NDJSON, JSON, plain text) with PII
//! split across events, chunks and UTF-8 characters, early upstream ends, the
//! policy knobs (`response: none`, `request: all`, `style`, `styles`), streaming
//! latency with masking on, the masking metrics, and tool inputs whose keys look
//! like structure (`name`, `id`, `content`) but hold model-written values.
//!
//! Exact upstream bytes come from the demo model's `POST /__raw`; the realistic
//! shapes from its OpenAI, Anthropic and Ollama endpoints. Every test asserts the
//! masked text itself, so each fails if masking is switched off.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The demo model's canned answer, masked with the default `label` style.
const MASKED_ANSWER: &str = "Sure, happy to help. Our support contact is [EMAIL], \
or call [PHONE] during business hours. The card on file is [CREDIT_CARD] \
and the staging server is at [IP_ADDRESS]. Let me know if you need anything else.";

/// Pieces of the demo answer's PII: none may reach a client of a masked route.
const ANSWER_PII: [&str; 6] = [
    "jane.doe",
    "@example.com",
    "415-555",
    "0132",
    "4111",
    "10.20.30.40",
];

/// Pieces of the PII the `/__raw` tests send.
const RAW_PII: [&str; 8] = [
    "john",
    "hn@",
    "example.com",
    "ple.com",
    "4111",
    "1111",
    "415-",
    "555-0132",
];

/// A gateway in front of `up` for every path, with `policies` (YAML, may be empty)
/// appended to its configuration.
fn gateway(up: &Upstream, policies: &str) -> Gateway {
    let body = format!(
        "upstreams:\n  models:\n    hosts: [\"{}\"]\n    health_check: {{interval: 1s}}\nroutes:\n  - {{path_prefix: /, upstream: models}}\n{policies}",
        up.addr
    );
    Gateway::start(&body, &[], true)
}

/// Has the upstream answer, through the gateway, with exactly these body chunks
/// (strings, or arrays of byte values), 10 ms apart.
fn raw(gw: &Gateway, content_type: &str, chunks: &[Value]) -> reqwest::blocking::Response {
    raw_with(
        gw,
        json!({"status": 200, "headers": {"content-type": content_type}, "chunks": chunks, "delay_ms": 10}),
    )
}

fn raw_with(gw: &Gateway, body: Value) -> reqwest::blocking::Response {
    let r = http()
        .post(gw.url("/__raw"))
        .bearer_auth(ALICE_KEY)
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r
}

/// Asserts the response headers of a masked body and returns the body text.
fn masked_body(r: reqwest::blocking::Response, content_type: &str) -> String {
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with(content_type), "content-type {ct}");
    assert!(
        r.headers().get("content-length").is_none(),
        "a masked body has no Content-Length: {:?}",
        r.headers()
    );
    r.text().unwrap()
}

/// Waits until `modelgate_masked_total{direction, entity}` reads `expected`
/// (calls are counted when they are logged, just after the client has the body).
fn wait_for_masked_count(gw: &Gateway, direction: &str, entity: &str, expected: f64) {
    let series = format!("modelgate_masked_total{{direction=\"{direction}\",entity=\"{entity}\"}}");
    let value = |m: &str| -> Option<f64> {
        let line = m.lines().find(|l| l.starts_with(&series))?;
        line[series.len()..].trim().parse().ok()
    };
    let mut last = String::new();
    let start = Instant::now();
    while value(&last) != Some(expected) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{series} is not {expected} in:\n{last}"
        );
        std::thread::sleep(Duration::from_millis(50));
        last = gw.metrics();
    }
}

fn assert_no_pii(text: &str, pii: &[&str]) {
    for p in pii {
        assert!(!text.contains(p), "`{p}` leaked in: {text}");
    }
}

/// One SSE event: its `event:` name and its (joined) `data:` lines.
#[derive(Debug)]
struct Event {
    name: Option<String>,
    data: String,
}

fn sse_events(body: &str) -> Vec<Event> {
    let body = body.replace("\r\n", "\n");
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = Vec::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = Some(n.trim().to_string());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            Event {
                name,
                data: data.join("\n"),
            }
        })
        .collect()
}

/// The JSON of every event but `[DONE]`; each must parse.
fn json_data(events: &[Event]) -> Vec<Value> {
    (events.iter())
        .filter(|e| e.data != "[DONE]")
        .map(|e| serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("{err}: {e:?}")))
        .collect()
}

/// The concatenation of the string at `pointer` over `values` (absent: nothing).
fn joined(values: &[Value], pointer: &str) -> String {
    (values.iter())
        .filter_map(|v| v.pointer(pointer).and_then(Value::as_str))
        .collect()
}

/// Asserts that `out` is `upstream` (event names) with, at most, one extra
/// `content_block_delta` right before a `content_block_stop`: held-back text
/// released at the end of its block.
fn assert_same_events_plus_flushes(out: &[&str], upstream: &[&str]) {
    let mut j = 0;
    let mut extras = 0;
    for (i, name) in out.iter().enumerate() {
        if upstream.get(j) == Some(name) {
            j += 1;
        } else if *name == "content_block_delta" && out.get(i + 1) == Some(&"content_block_stop") {
            extras += 1;
        } else {
            panic!("unexpected `{name}` at {i}: {out:?} vs upstream {upstream:?}");
        }
    }
    assert_eq!(
        j,
        upstream.len(),
        "events lost: {out:?} vs upstream {upstream:?}"
    );
    // Each extra sits right before a stop, so there is at most one per block.
    let blocks = upstream
        .iter()
        .filter(|n| **n == "content_block_stop")
        .count();
    assert!(extras <= blocks, "{out:?} vs upstream {upstream:?}");
}

/// OpenAI chunks as SSE `data:` events, ended by `[DONE]`.
fn openai_sse_chunks(upstream: &[Value]) -> Vec<Value> {
    let mut chunks: Vec<Value> = upstream.iter().map(sse).collect();
    chunks.push(json!("data: [DONE]\n\n"));
    chunks
}

/// Streams `upstream` chunks through the gateway; checks that no raw PII
/// reaches the client and that each upstream event gave one event (plus
/// `[DONE]`), and returns the events' JSON data.
fn masked_openai_stream(gw: &Gateway, upstream: &[Value]) -> Vec<Value> {
    let chunks = openai_sse_chunks(upstream);
    let body = masked_body(raw(gw, "text/event-stream", &chunks), "text/event-stream");
    assert_no_pii(&body, &RAW_PII);
    let events = sse_events(&body);
    assert_eq!(events.len(), upstream.len() + 1, "{body}");
    json_data(&events)
}

fn sse(v: &Value) -> Value {
    Value::String(format!("data: {v}\n\n"))
}

fn named_sse(v: &Value) -> Value {
    Value::String(format!(
        "event: {}\ndata: {v}\n\n",
        v["type"].as_str().unwrap()
    ))
}

fn ndjson(v: &Value) -> Value {
    Value::String(format!("{v}\n"))
}

/// A chat completion chunk of the `/__raw` streams.
fn chat_chunk(delta: Value, finish_reason: Value) -> Value {
    json!({
        "id": "chatcmpl-raw-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "raw-model",
        "system_fingerprint": "fp_raw",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    })
}

fn content_chunk(text: &str) -> Value {
    chat_chunk(json!({ "content": text }), Value::Null)
}

/// `text` as one `/__raw` chunk per piece, the pieces split at byte offsets `cuts`
/// (anywhere, even inside a UTF-8 character).
fn byte_chunks(text: &str, cuts: &[usize]) -> Vec<Value> {
    let bytes = text.as_bytes();
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(bytes.len());
    bounds
        .windows(2)
        .map(|w| json!(bytes[w[0]..w[1]].to_vec()))
        .collect()
}

#[test]
fn openai_chat_sse_pii_split_across_events_is_masked_event_for_event() {
    let up = Upstream::start("u1");
    let gw = gateway(&up, "");
    let usage = json!({"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21});
    let mut usage_chunk = chat_chunk(json!({}), Value::Null);
    usage_chunk["choices"] = json!([]);
    usage_chunk["usage"] = usage.clone();
    let upstream = [
        chat_chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        content_chunk("Mail "),
        content_chunk("jo"),
        content_chunk("hn@"),
        content_chunk("exam"),
        content_chunk("ple.com"),
        content_chunk(" or pay with 4111 "),
        content_chunk("1111 11"),
        content_chunk("11 1111"),
        content_chunk("."),
        chat_chunk(json!({}), json!("stop")),
        usage_chunk,
    ];
    let mut chunks = openai_sse_chunks(&upstream);
    // One network chunk ends in the middle of an event: framing must not care.
    let (a, b) = {
        let s = chunks[3].as_str().unwrap();
        let (a, b) = s.split_at(25);
        (a.to_string(), b.to_string())
    };
    chunks.splice(3..4, [json!(a), json!(b)]);

    let body = masked_body(raw(&gw, "text/event-stream", &chunks), "text/event-stream");
    assert_no_pii(&body, &RAW_PII);
    let events = sse_events(&body);
    assert_eq!(
        events.len(),
        upstream.len() + 1,
        "one event out per event in (no text held at the end): {body}"
    );
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let values = json_data(&events);
    assert_eq!(
        joined(&values, "/choices/0/delta/content"),
        "Mail [EMAIL] or pay with [CREDIT_CARD]."
    );
    for v in &values {
        assert_eq!(v["id"], "chatcmpl-raw-1", "{v}");
        assert_eq!(v["model"], "raw-model", "{v}");
        assert_eq!(v["object"], "chat.completion.chunk", "{v}");
        assert_eq!(v["system_fingerprint"], "fp_raw", "{v}");
    }
    assert_eq!(values[0]["choices"][0]["delta"]["role"], "assistant");
    let finishes: Vec<&Value> = (values.iter())
        .filter_map(|v| v.pointer("/choices/0/finish_reason"))
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, [&json!("stop")]);
    assert_eq!(values[10]["choices"][0]["finish_reason"], "stop");
    assert_eq!(values[11]["usage"], usage);
    assert_eq!(values[11]["choices"], json!([]));
}

#[test]
fn legacy_completions_tool_call_arguments_and_logprob_tokens_are_masked() {
    let up = Upstream::start("u1");
    let gw = gateway(&up, "");

    // Legacy completions: `choices[].text`.
    let completion = |text: &str, finish: Value| {
        json!({
            "id": "cmpl-raw-2", "object": "text_completion", "created": 1, "model": "raw-model",
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
        })
    };
    let upstream = [
        completion("Call +1 ", Value::Null),
        completion("415-", Value::Null),
        completion("555-0132", Value::Null),
        completion(" or jo", Value::Null),
        completion("hn@example.com", Value::Null),
        completion(" today", Value::Null),
        completion("", json!("length")),
    ];
    let values = masked_openai_stream(&gw, &upstream);
    assert_eq!(
        joined(&values, "/choices/0/text"),
        "Call [PHONE] or [EMAIL] today"
    );
    assert!(values.iter().all(|v| v["id"] == "cmpl-raw-2"));
    assert_eq!(
        values.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );

    // Tool-call arguments, split mid-value; name and id are structure.
    let call = |args: &str| {
        chat_chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": args}}]}),
            Value::Null,
        )
    };
    let upstream = [
        chat_chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_abc", "type": "function", "function": {"name": "send_mail", "arguments": ""}}]}),
            Value::Null,
        ),
        call("{\"to\": \"jo"),
        call("hn@exa"),
        call("mple.com\", \"card\": \"4111 1111"),
        call(" 1111 1111\"}"),
        chat_chunk(json!({}), json!("tool_calls")),
    ];
    let values = masked_openai_stream(&gw, &upstream);
    let args = joined(&values, "/choices/0/delta/tool_calls/0/function/arguments");
    assert_eq!(args, r#"{"to": "[EMAIL]", "card": "[CREDIT_CARD]"}"#);
    let first_call = &values[0]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(first_call["id"], "call_abc");
    assert_eq!(first_call["function"]["name"], "send_mail");
    assert_eq!(
        values.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // Logprob tokens mirror the content; reassembled, they must not leak either.
    let with_logprobs = |text: &str| {
        let mut c = content_chunk(text);
        c["choices"][0]["logprobs"] = json!({"content": [{
            "token": text, "logprob": -0.25, "bytes": text.as_bytes(), "top_logprobs": []
        }]});
        c
    };
    let upstream = [
        with_logprobs("Write to "),
        with_logprobs("jo"),
        with_logprobs("hn@"),
        with_logprobs("exam"),
        with_logprobs("ple.com"),
        with_logprobs(" now."),
        chat_chunk(json!({}), json!("stop")),
    ];
    let values = masked_openai_stream(&gw, &upstream);
    assert_eq!(
        joined(&values, "/choices/0/delta/content"),
        "Write to [EMAIL] now."
    );
    let mut tokens = String::new();
    let mut bytes = Vec::new();
    for v in &values {
        let entries = v
            .pointer("/choices/0/logprobs/content")
            .and_then(Value::as_array);
        for e in entries.into_iter().flatten() {
            tokens.push_str(e["token"].as_str().unwrap());
            let b = e["bytes"].as_array().unwrap();
            bytes.extend(b.iter().map(|b| b.as_u64().unwrap() as u8));
        }
    }
    assert_eq!(tokens, "Write to [EMAIL] now.");
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        tokens,
        "bytes follow tokens"
    );
}

#[test]
fn anthropic_sse_text_and_tool_json_are_masked_and_event_names_kept() {
    let up = Upstream::start("u1");
    let gw = gateway(&up, "");
    let delta = |index: u64, kind: &str, field: &str, text: &str| json!({"type": "content_block_delta", "index": index, "delta": {"type": kind, field: text}});
    let text = |t: &str| delta(0, "text_delta", "text", t);
    let tool = |t: &str| delta(1, "input_json_delta", "partial_json", t);
    let upstream = [
        json!({"type": "message_start", "message": {"id": "msg_raw_1", "type": "message", "role": "assistant", "model": "claude-raw", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        text("Mail jo"),
        text("hn@"),
        text("exam"),
        text("ple.com or call +1 415-"),
        text("555-0132"),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_raw", "name": "lookup", "input": {}}}),
        tool("{\"email\": \"jo"),
        tool("hn@example.c"),
        tool("om\"}"),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 30}}),
        json!({"type": "message_stop"}),
    ];
    let chunks: Vec<Value> = upstream.iter().map(named_sse).collect();
    let body = masked_body(raw(&gw, "text/event-stream", &chunks), "text/event-stream");
    assert_no_pii(&body, &RAW_PII);
    let events = sse_events(&body);
    let values = json_data(&events);
    assert_eq!(values.len(), events.len(), "no [DONE] is added: {body}");
    for (e, v) in events.iter().zip(&values) {
        assert_eq!(e.name.as_deref(), v["type"].as_str(), "{e:?}");
    }
    let names: Vec<&str> = events.iter().map(|e| e.name.as_deref().unwrap()).collect();
    let upstream_names: Vec<&str> = upstream
        .iter()
        .map(|u| u["type"].as_str().unwrap())
        .collect();
    assert_same_events_plus_flushes(&names, &upstream_names);

    let block = |index: u64, pointer: &str| -> String {
        let of_block: Vec<Value> = (values.iter())
            .filter(|v| v["type"] == "content_block_delta" && v["index"] == index)
            .cloned()
            .collect();
        joined(&of_block, pointer)
    };
    assert_eq!(block(0, "/delta/text"), "Mail [EMAIL] or call [PHONE]");
    assert_eq!(block(1, "/delta/partial_json"), r#"{"email": "[EMAIL]"}"#);
    let start = &values[0]["message"];
    assert_eq!(start["id"], "msg_raw_1");
    assert_eq!(start["usage"]["input_tokens"], 12);
    let tool_start = values.iter().find(|v| v["index"] == 1).unwrap();
    assert_eq!(tool_start["content_block"]["name"], "lookup");
    let message_delta = values
        .iter()
        .find(|v| v["type"] == "message_delta")
        .unwrap();
    assert_eq!(message_delta["usage"]["output_tokens"], 30);
    assert_eq!(message_delta["delta"]["stop_reason"], "tool_use");

    // The demo's own Messages endpoint, streamed and whole.
    let ask = |stream: bool| {
        http()
            .post(gw.url("/v1/messages"))
            .bearer_auth(ALICE_KEY)
            .header("x-demo-delay-ms", "1")
            .json(
                &json!({"model": "claude-demo", "max_tokens": 100, "stream": stream,
                "messages": [{"role": "user", "content": "How do I reach support?"}]}),
            )
            .send()
            .unwrap()
    };
    let body = masked_body(ask(true), "text/event-stream");
    assert_no_pii(&body, &ANSWER_PII);
    let values = json_data(&sse_events(&body));
    let deltas: Vec<Value> = (values.iter())
        .filter(|v| v["type"] == "content_block_delta")
        .cloned()
        .collect();
    assert_eq!(joined(&deltas, "/delta/text"), MASKED_ANSWER);
    assert_eq!(values.last().unwrap()["type"], "message_stop");
    let whole: Value = serde_json::from_str(&masked_body(ask(false), "application/json")).unwrap();
    assert_eq!(whole["content"][0]["text"], MASKED_ANSWER);
    assert!(whole["id"].as_str().unwrap().starts_with("msg_demo_"));
    assert_eq!(whole["stop_reason"], "end_turn");
}

#[test]
fn ollama_ndjson_chat_and_generate_lines_are_masked() {
    let up = Upstream::start("u1");
    let gw = gateway(&up, "");
    let chat_line = |text: &str, done: bool| {
        let mut v = json!({"model": "llama3", "created_at": "2024-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": text}, "done": done});
        if done {
            v["done_reason"] = json!("stop");
            v["eval_count"] = json!(7);
            v["prompt_eval_count"] = json!(3);
        }
        v
    };
    let upstream = [
        chat_line("Mail jo", false),
        chat_line("hn@", false),
        chat_line("exam", false),
        chat_line("ple.com or 4111 1111 ", false),
        chat_line("1111 1111", false),
        chat_line("", true),
    ];
    let chunks: Vec<Value> = upstream.iter().map(ndjson).collect();
    let body = masked_body(
        raw(&gw, "application/x-ndjson", &chunks),
        "application/x-ndjson",
    );
    assert_no_pii(&body, &RAW_PII);
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        upstream.len(),
        "one line out per line in: {body}"
    );
    assert_eq!(
        joined(&lines, "/message/content"),
        "Mail [EMAIL] or [CREDIT_CARD]"
    );
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["eval_count"], 7);
    assert!(lines[..lines.len() - 1].iter().all(|l| l["done"] == false));

    let gen_line = |text: &str, done: bool| json!({"model": "llama3", "created_at": "2024-01-01T00:00:00Z", "response": text, "done": done});
    let upstream = [
        gen_line("Server 10.2", false),
        gen_line("0.30.40 and +1 415-", false),
        gen_line("555-0132", false),
        gen_line("", true),
    ];
    let chunks: Vec<Value> = upstream.iter().map(ndjson).collect();
    let body = masked_body(
        raw(&gw, "application/x-ndjson", &chunks),
        "application/x-ndjson",
    );
    assert_no_pii(&body, &["10.2", "0.30.40", "415-", "555-0132"]);
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), upstream.len(), "{body}");
    assert_eq!(
        joined(&lines, "/response"),
        "Server [IP_ADDRESS] and [PHONE]"
    );

    // The demo's own Ollama endpoints: streamed by default, and whole.
    for (path, pointer) in [
        ("/api/chat", "/message/content"),
        ("/api/generate", "/response"),
    ] {
        let ask = |stream: Option<bool>| {
            let mut req = json!({"model": "llama3", "prompt": "hi",
                "messages": [{"role": "user", "content": "hi"}]});
            if let Some(s) = stream {
                req["stream"] = json!(s);
            }
            http()
                .post(gw.url(path))
                .bearer_auth(ALICE_KEY)
                .header("x-demo-delay-ms", "1")
                .json(&req)
                .send()
                .unwrap()
        };
        let body = masked_body(ask(None), "application/x-ndjson");
        assert_no_pii(&body, &ANSWER_PII);
        let lines: Vec<Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(joined(&lines, pointer), MASKED_ANSWER, "{path}");
        assert_eq!(lines.last().unwrap()["done"], true, "{path}");
        let whole: Value =
            serde_json::from_str(&masked_body(ask(Some(false)), "application/json")).unwrap();
        assert_eq!(whole.pointer(pointer).unwrap(), MASKED_ANSWER, "{path}");
        assert_eq!(whole["done"], true);
    }
}

#[test]
fn whole_json_and_plain_text_split_inside_utf8_characters_are_masked() {
    let up = Upstream::start("u1");
    let gw = gateway(&up, "");
    let r = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(ALICE_KEY)
        .json(&chat("demo-model", false))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = masked_body(r, "application/json");
    assert_no_pii(&body, &ANSWER_PII);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], MASKED_ANSWER);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["system_fingerprint"], "u1");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 40, "total_tokens": 45})
    );

    // Plain text, cut inside `é` (2 bytes), inside the email, and inside `😀`
    // (4 bytes) right after the email.
    let text = "Café: write jane@example.com😀 or 10.0.0.1 — ok";
    let at = |needle: &str| text.find(needle).unwrap();
    let cuts = [
        at("é") + 1,
        at("@") - 2,
        at("@") + 4,
        at("😀") + 1,
        at("😀") + 3,
        at("0.0.1") + 2,
        at("—") + 1,
    ];
    let body = masked_body(
        raw(&gw, "text/plain; charset=utf-8", &byte_chunks(text, &cuts)),
        "text/plain",
    );
    assert_eq!(body, "Café: write [EMAIL]😀 or [IP_ADDRESS] — ok");
}

#[test]
fn text_held_back_when_the_upstream_ends_early_still_reaches_the_client() {
    let up = Upstream::start("u1");
    let gw = gateway(&up, "");
    // No finish_reason, no [DONE]: the stream just ends after the email.
    let upstream = [
        content_chunk("Reach me at jo"),
        content_chunk("hn@"),
        content_chunk("example.com"),
    ];
    let chunks: Vec<Value> = upstream.iter().map(sse).collect();
    let body = masked_body(
        raw_with(
            &gw,
            json!({"headers": {"content-type": "text/event-stream"}, "chunks": chunks,
                "delay_ms": 10, "close_early": true}),
        ),
        "text/event-stream",
    );
    assert_no_pii(&body, &RAW_PII);
    let events = sse_events(&body);
    assert!(
        events.len() == upstream.len() || events.len() == upstream.len() + 1,
        "{body}"
    );
    assert!(
        events.iter().all(|e| e.data != "[DONE]"),
        "nothing invented: {body}"
    );
    let values = json_data(&events);
    assert_eq!(
        joined(&values, "/choices/0/delta/content"),
        "Reach me at [EMAIL]"
    );
    assert!(values.iter().all(|v| v["id"] == "chatcmpl-raw-1"), "{body}");

    // The same for NDJSON without the `done: true` line.
    let lines = [
        "{\"response\":\"Call +1 415-\",\"done\":false}\n",
        "{\"response\":\"555-0132\",\"done\":false}\n",
    ];
    let body = masked_body(
        raw(&gw, "application/x-ndjson", &lines.map(|l| json!(l))),
        "application/x-ndjson",
    );
    assert_no_pii(&body, &["415-", "555-0132"]);
    let out: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(out.len() == 2 || out.len() == 3, "{body}");
    assert_eq!(joined(&out, "/response"), "Call [PHONE]");

    // Chat-shaped lines, the last one releasing part of its text and holding
    // the rest (`10.0.0` may still become an address).
    let line = |text: &str| {
        ndjson(
            &json!({"model": "llama3", "created_at": "2024-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": text}, "done": false}),
        )
    };
    let body = masked_body(
        raw(
            &gw,
            "application/x-ndjson",
            &[line("Mail jo"), line("hn@example.com and 10.0.0")],
        ),
        "application/x-ndjson",
    );
    assert_no_pii(&body, &RAW_PII);
    let out: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(out.len() == 2 || out.len() == 3, "{body}");
    assert_eq!(
        joined(&out, "/message/content"),
        "Mail [EMAIL] and 10.0.0",
        "{body}"
    );

    // And for Anthropic events cut off before `content_block_stop`.
    let upstream = [
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Mail jo"}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hn@example.com"}}),
    ];
    let chunks: Vec<Value> = upstream.iter().map(named_sse).collect();
    let body = masked_body(raw(&gw, "text/event-stream", &chunks), "text/event-stream");
    assert_no_pii(&body, &RAW_PII);
    let events = sse_events(&body);
    let values = json_data(&events);
    assert!(values.len() == 3 || values.len() == 4, "{body}");
    for (e, v) in events.iter().zip(&values) {
        assert_eq!(e.name.as_deref(), v["type"].as_str(), "{e:?}");
    }
    assert_eq!(joined(&values, "/delta/text"), "Mail [EMAIL]");
}

#[test]
fn response_none_passes_the_upstream_bytes_through_untouched() {
    let up = Upstream::start("u1");
    let gw = gateway(&up, "policies:\n  default: {mask: {response: none}}\n");
    let upstream = [
        content_chunk("Mail jo"),
        content_chunk("hn@example.com or 4111 1111 1111 1111"),
        chat_chunk(json!({}), json!("stop")),
    ];
    let chunks = openai_sse_chunks(&upstream);
    let expected: String = chunks.iter().map(|c| c.as_str().unwrap()).collect();
    let r = raw(&gw, "text/event-stream", &chunks);
    assert_eq!(r.text().unwrap(), expected, "byte for byte");

    let r = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(ALICE_KEY)
        .json(&chat("demo-model", false))
        .send()
        .unwrap();
    assert!(r.headers().contains_key("content-length"), "not re-framed");
    let v: Value = r.json().unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.contains("jane.doe@example.com"), "{content}");
    assert!(content.contains("4111 1111 1111 1111"), "{content}");
    assert!(!content.contains("[EMAIL]"), "{content}");
}

#[test]
fn request_all_masks_the_prompt_before_it_reaches_the_model() {
    let up = Upstream::start("u1");
    let gw = gateway(&up, "policies:\n  default: {mask: {request: all}}\n");
    let prompt = "I am alice@example.org, card 5500 0000 0000 0004, server 192.168.1.20.";
    let r = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(ALICE_KEY)
        .json(&json!({"model": "demo-model", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": prompt},
        ]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // Responses stay masked too (the default `response: all`).
    let v: Value = r.json().unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], MASKED_ANSWER);

    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let logged = seen[0]["body"].as_str().unwrap();
    assert_no_pii(logged, &["alice", "example.org", "5500", "0004", "192.168"]);
    let sent: Value = serde_json::from_str(logged).unwrap();
    assert_eq!(sent["model"], "demo-model");
    assert_eq!(sent["messages"][0]["role"], "system");
    assert_eq!(sent["messages"][0]["content"], "Be brief.");
    assert_eq!(
        sent["messages"][1]["content"],
        "I am [EMAIL], card [CREDIT_CARD], server [IP_ADDRESS]."
    );
    assert_eq!(seen[0]["model"], "demo-model");
    assert_eq!(seen[0]["body_len"], logged.len());
    for entity in ["EMAIL", "CREDIT_CARD", "IP_ADDRESS"] {
        wait_for_masked_count(&gw, "request", entity, 1.0);
    }
    if let Some(len) = seen[0]["headers"].get("content-length") {
        assert_eq!(
            len,
            &json!(logged.len().to_string()),
            "framed for the masked body"
        );
    }
}

#[test]
fn hash_style_maps_a_value_to_the_same_token_every_time() {
    let up = Upstream::start("u1");
    let gw = gateway(
        &up,
        "masking: {hash_key: \"test-hash-key-0123\"}\npolicies:\n  default: {mask: {style: hash}}\n",
    );
    let tokens_of = |text: &str, entity: &str| -> Vec<String> {
        let prefix = format!("[{entity}:");
        let mut found = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find(&prefix) {
            let after = &rest[i + prefix.len()..];
            let hex: String = after
                .chars()
                .take_while(|c| c.is_ascii_hexdigit())
                .collect();
            assert_eq!(hex.len(), 12, "12 hex digits in {text}");
            assert!(after[12..].starts_with(']'), "{text}");
            assert!(
                hex.chars().all(|c| !c.is_ascii_uppercase()),
                "lower-case hex"
            );
            found.push(format!("{prefix}{hex}]"));
            rest = &after[13..];
        }
        found
    };
    let ask = |stream: bool| {
        http()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(ALICE_KEY)
            .header("x-demo-delay-ms", "1")
            .json(&chat("demo-model", stream))
            .send()
            .unwrap()
    };
    let first: Value = serde_json::from_str(&masked_body(ask(false), "application/json")).unwrap();
    let first = first["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let second = json_data(&sse_events(&masked_body(ask(true), "text/event-stream")));
    let second = joined(&second, "/choices/0/delta/content");
    assert_no_pii(&first, &ANSWER_PII);
    assert_no_pii(&second, &ANSWER_PII);
    let a = tokens_of(&first, "EMAIL");
    assert_eq!(a.len(), 1, "{first}");
    assert_eq!(a, tokens_of(&second, "EMAIL"), "streamed and whole agree");
    assert_eq!(first, second);
    assert_eq!(tokens_of(&first, "CREDIT_CARD").len(), 1, "{first}");

    // Another address gets another token; the same one (other case) the same.
    let chunks = [sse(&content_chunk("Jane.Doe@Example.com, bob@example.net"))];
    let body = masked_body(raw(&gw, "text/event-stream", &chunks), "text/event-stream");
    let text = joined(&json_data(&sse_events(&body)), "/choices/0/delta/content");
    let b = tokens_of(&text, "EMAIL");
    assert_eq!(b.len(), 2, "{text}");
    assert_eq!(b[0], a[0], "emails are compared case-insensitively");
    assert_ne!(b[1], a[0]);
}

#[test]
fn per_entity_styles_override_the_policy_style() {
    let up = Upstream::start("u1");
    let gw = gateway(
        &up,
        "policies:\n  default: {mask: {styles: {CREDIT_CARD: partial}}}\n",
    );
    let r = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(ALICE_KEY)
        .header("x-demo-delay-ms", "1")
        .json(&chat("demo-model", true))
        .send()
        .unwrap();
    let body = masked_body(r, "text/event-stream");
    let text = joined(&json_data(&sse_events(&body)), "/choices/0/delta/content");
    assert_eq!(
        text,
        MASKED_ANSWER.replace("[CREDIT_CARD]", "[CREDIT_CARD …1111]")
    );
}

#[test]
fn masked_streams_still_stream() {
    // Each model sends the head of its answer, then holds the rest back
    // until the client has seen the marker in it: a gateway that buffers
    // the masked stream never delivers the marker.
    let events = openai_chat_events(&["tok "; 5]);
    let toks = HeldStream::start(
        "text/event-stream",
        events[..2].to_vec(),
        events[2..].to_vec(),
    );
    // With PII: the masked email must arrive as soon as the text after it
    // shows it is complete (here: the event after it), long before the end.
    let upstream = [
        content_chunk("Hello, "),
        content_chunk("mail jo"),
        content_chunk("hn@example.com "),
        content_chunk("and "),
        content_chunk("bye"),
        chat_chunk(json!({}), json!("stop")),
    ];
    let chunks: Vec<String> = openai_sse_chunks(&upstream)
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let pii = HeldStream::start(
        "text/event-stream",
        chunks[..4].to_vec(),
        chunks[4..].to_vec(),
    );
    let body = format!(
        "upstreams:\n  toks: {{hosts: [\"{}\"], health_check: {{interval: 1s}}}}\n  pii: {{hosts: [\"{}\"], health_check: {{interval: 1s}}}}\nroutes:\n  - {{path_prefix: /, model: toks, upstream: toks}}\n  - {{path_prefix: /, model: pii, upstream: pii}}\n",
        toks.addr, pii.addr
    );
    let gw = Gateway::start(&body, &[], true);
    let call = |model: &str| {
        http()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(ALICE_KEY)
            .json(&chat(model, true))
            .send()
            .unwrap()
    };

    let (text, _) = toks.read(call("toks"), "\"tok ");
    assert_eq!(text.matches("\"tok ").count(), 5, "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    let (body, _) = pii.read(call("pii"), "[EMAIL]");
    assert_no_pii(&body, &RAW_PII);
    assert_eq!(
        joined(&json_data(&sse_events(&body)), "/choices/0/delta/content"),
        "Hello, mail [EMAIL] and bye"
    );
}

#[test]
fn masked_values_are_counted_in_metrics() {
    let up = Upstream::start("u1");
    let gw = gateway(&up, "");
    for stream in [false, true] {
        let r = http()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(ALICE_KEY)
            .header("x-demo-delay-ms", "1")
            .json(&chat("demo-model", stream))
            .send()
            .unwrap();
        assert_no_pii(&r.text().unwrap(), &ANSWER_PII);
    }
    // One of each per call: the answer has one email, phone, card and address.
    for entity in ["EMAIL", "CREDIT_CARD", "PHONE", "IP_ADDRESS"] {
        wait_for_masked_count(&gw, "response", entity, 2.0);
    }
    let m = gw.metrics();
    assert!(
        !m.contains("direction=\"request\""),
        "request masking is off: {m}"
    );
}

/// Tool inputs are model-written objects: a key that is structure elsewhere
/// (`name`, `id`, `content`, `response`...) may hold anything there.
fn tool_args() -> (Value, Value) {
    let args = json!({"content": "mail jane@example.com", "name": "Jane <jane@example.com>",
        "response": "card 4111 1111 1111 1111", "to": "bob@example.com"});
    let masked = json!({"content": "mail [EMAIL]", "name": "Jane <[EMAIL]>",
        "response": "card [CREDIT_CARD]", "to": "[EMAIL]"});
    (args, masked)
}

const TOOL_PII: [&str; 3] = ["jane@", "bob@", "4111"];

#[test]
fn ollama_tool_call_arguments_are_masked_whatever_their_keys() {
    let up = Upstream::start("u1");
    let gw = gateway(&up, "");
    let (args, masked_args) = tool_args();
    let line = |done: bool, tool_calls: Option<Value>| {
        let mut v = json!({"model": "llama3", "created_at": "2024-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": ""}, "done": done});
        if let Some(calls) = tool_calls {
            v["message"]["tool_calls"] = calls;
        }
        ndjson(&v)
    };
    let calls = json!([{"function": {"name": "send_mail", "arguments": args}}]);
    let chunks = [line(false, Some(calls)), line(true, None)];
    let body = masked_body(
        raw(&gw, "application/x-ndjson", &chunks),
        "application/x-ndjson",
    );
    assert_no_pii(&body, &TOOL_PII);
    let first: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    let call = &first["message"]["tool_calls"][0]["function"];
    assert_eq!(call["arguments"], masked_args, "{body}");
    assert_eq!(call["name"], "send_mail");
}

#[test]
fn anthropic_tool_use_input_is_masked_whatever_its_keys() {
    let up = Upstream::start("u1");
    let gw = gateway(&up, "");
    let (args, masked_args) = tool_args();
    let message = json!({
        "id": "msg_raw_2", "type": "message", "role": "assistant", "model": "claude-raw",
        "content": [{"type": "tool_use", "id": "toolu_2", "name": "send_mail", "input": args}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 3, "output_tokens": 9},
    });
    let body = masked_body(
        raw(&gw, "application/json", &[json!(message.to_string())]),
        "application/json",
    );
    assert_no_pii(&body, &TOOL_PII);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["content"][0]["input"], masked_args, "{body}");
    assert_eq!(v["content"][0]["name"], "send_mail");
    assert_eq!(v["id"], "msg_raw_2");
}

#[test]
fn tool_use_input_in_a_prompt_is_masked_whatever_its_keys() {
    let up = Upstream::start("u1");
    let gw = gateway(&up, "policies:\n  default: {mask: {request: all}}\n");
    let (args, masked_args) = tool_args();
    let r = http()
        .post(gw.url("/v1/messages"))
        .bearer_auth(ALICE_KEY)
        .json(&json!({"model": "claude-demo", "max_tokens": 10, "messages": [
            {"role": "user", "content": "Mail Jane."},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_3", "name": "send_mail", "input": args}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_3", "content": "sent"}]},
        ]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.seen();
    let logged = seen[0]["body"].as_str().unwrap();
    assert_no_pii(logged, &TOOL_PII);
    let sent: Value = serde_json::from_str(logged).unwrap();
    assert_eq!(sent["messages"][1]["content"][0]["input"], masked_args);
    assert_eq!(sent["messages"][1]["content"][0]["name"], "send_mail");
    assert_eq!(sent["messages"][1]["content"][0]["id"], "toolu_3");
}
