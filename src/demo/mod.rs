//! The demo model: a small OpenAI-compatible mock model server.
//!
//! It owns the mock upstream used by `modelgate demo`, the integration tests and the load
//! tests: `/v1/chat/completions` and `/v1/completions` (real SSE streaming, one flushed
//! chunk per event with a delay between events), `/v1/models`, `/health`, and a request
//! log at `/__requests` that tests read to see what the upstream actually received.
//! Test knobs are request headers: `x-demo-delay-ms`, `x-demo-events`, `x-demo-status`.
//!
//! This is not a production model server: the answer is canned (and deliberately
//! contains PII so redaction can be demonstrated), token counts are word counts.

use async_trait::async_trait;
use bytes::Bytes;
use log::debug;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::listening::Service;
use pingora_http::ResponseHeader;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The canned assistant reply. It contains PII on purpose, so redaction has work to do.
const ANSWER: &str = "Sure, happy to help. Our support contact is jane.doe@example.com, \
or call +1 415-555-0132 during business hours. The card on file is 4111 1111 1111 1111 \
and the staging server is at 10.20.30.40. Let me know if you need anything else.";

const MODELS: [&str; 3] = ["demo-model", "llama-demo", "qwen-demo"];
const DEFAULT_MODEL: &str = "demo-model";
const DEFAULT_DELAY_MS: u64 = 20;
const LOG_CAPACITY: usize = 200;
const MAX_BODY: usize = 16 << 20;
/// Upper bound for `x-demo-events`, so a typo cannot make the server allocate gigabytes.
const MAX_EVENTS: u64 = 100_000;
/// Maximum characters per streamed piece, so PII such as an email spans several events.
const PIECE_CHARS: usize = 4;

/// The demo model application. Cheap to construct; one per listening service.
pub struct DemoModel {
    name: String,
    requests: Mutex<VecDeque<Value>>,
    next_id: AtomicU64,
}

impl DemoModel {
    /// `name` identifies this instance: returned in the `x-demo-upstream` response header and as `system_fingerprint`.
    pub fn new(name: &str) -> Self {
        DemoModel {
            name: name.to_string(),
            requests: Mutex::new(VecDeque::with_capacity(LOG_CAPACITY)),
            next_id: AtomicU64::new(1),
        }
    }

    fn header(&self, status: u16, content_type: &str, len: Option<usize>) -> ResponseHeader {
        let mut h = ResponseHeader::build(status, Some(4)).expect("valid status");
        let _ = h.insert_header("x-demo-upstream", self.name.as_str());
        let _ = h.insert_header("content-type", content_type);
        match len {
            Some(n) => {
                let _ = h.insert_header("content-length", n.to_string());
            }
            None => {
                let _ = h.insert_header("cache-control", "no-cache");
                let _ = h.insert_header("transfer-encoding", "chunked");
            }
        }
        h
    }

    /// Write a complete JSON response. Returns false if the client went away.
    async fn send_json(&self, s: &mut ServerSession, status: u16, body: &Value) -> bool {
        let body = Bytes::from(body.to_string());
        let h = self.header(status, "application/json", Some(body.len()));
        s.write_response_header(Box::new(h)).await.is_ok()
            && s.write_response_body(body, true).await.is_ok()
    }

    fn log(&self) -> MutexGuard<'_, VecDeque<Value>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, s: &ServerSession, body_len: usize, model: Option<&str>) {
        let req = s.req_header();
        let mut headers = serde_json::Map::new();
        for (name, value) in req.headers.iter() {
            let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
            match headers.get_mut(name.as_str()) {
                Some(Value::String(prev)) => *prev = format!("{prev}, {v}"),
                _ => {
                    headers.insert(name.as_str().to_string(), Value::String(v));
                }
            }
        }
        let entry = json!({
            "method": req.method.as_str(),
            "path": req.uri.path(),
            "headers": headers,
            "body_len": body_len,
            "model": model,
        });
        let mut log = self.log();
        if log.len() >= LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(entry);
    }

    /// Stream `pieces` as SSE events. Returns false if the client went away.
    async fn stream(&self, s: &mut ServerSession, req: &Completion, pieces: &[String]) -> bool {
        let h = self.header(200, "text/event-stream", None);
        if s.write_response_header(Box::new(h)).await.is_err() {
            return false;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let chunk = ChunkMaker::new(req.chat, id, &req.model, &self.name);
        let mut events = Vec::with_capacity(pieces.len() + 4);
        if req.chat {
            events.push(chunk.piece(json!({"role": "assistant", "content": ""}), None));
        }
        for p in pieces {
            let delta = if req.chat {
                json!({"content": p})
            } else {
                json!(p)
            };
            events.push(chunk.piece(delta, None));
        }
        let end = if req.chat { json!({}) } else { json!("") };
        events.push(chunk.piece(end, Some("stop")));
        if req.include_usage {
            events.push(chunk.usage(&req.usage(pieces)));
        }
        for (i, ev) in events.iter().enumerate() {
            if i > 0 && req.delay > Duration::ZERO {
                tokio::time::sleep(req.delay).await;
            }
            if s.write_response_body(sse_event(ev), false).await.is_err() {
                return false;
            }
        }
        s.write_response_body(Bytes::from_static(b"data: [DONE]\n\n"), true)
            .await
            .is_ok()
    }

    /// Handle one request whose header and body have been read. Returns false if the
    /// connection must not be reused.
    async fn respond(&self, s: &mut ServerSession, body: &[u8]) -> bool {
        let req = s.req_header();
        let method = req.method.as_str().to_string();
        let path = req.uri.path().to_string();
        let header = |name: &str| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let forced_status = header("x-demo-status").filter(|c| (200..=599).contains(c));
        let delay = Duration::from_millis(header("x-demo-delay-ms").unwrap_or(DEFAULT_DELAY_MS));
        let events = header("x-demo-events").map(|n| n.min(MAX_EVENTS));
        let parsed: Option<Value> = serde_json::from_slice(body).ok();

        match (method.as_str(), path.as_str()) {
            ("GET", "/__requests") => {
                let all = Value::Array(self.log().iter().cloned().collect());
                return self.send_json(s, 200, &all).await;
            }
            ("DELETE", "/__requests") => {
                let cleared = self.log().drain(..).count();
                return self.send_json(s, 200, &json!({ "cleared": cleared })).await;
            }
            (_, "/health") => {}
            _ => {
                let model = parsed.as_ref().and_then(|v| v.get("model")?.as_str());
                self.record(s, body.len(), model);
            }
        }
        if let Some(code) = forced_status {
            let msg = format!("demo upstream forced status {code} (x-demo-status)");
            return self
                .send_json(s, code as u16, &error_body(code as u16, &msg))
                .await;
        }
        let chat = match (method.as_str(), path.as_str()) {
            ("GET", "/health") => return self.send_json(s, 200, &json!({"status": "ok"})).await,
            ("GET", "/v1/models") => {
                let data: Vec<Value> = MODELS
                    .iter()
                    .map(|id| json!({"id": id, "object": "model", "owned_by": "modelgate"}))
                    .collect();
                let list = json!({"object": "list", "data": data});
                return self.send_json(s, 200, &list).await;
            }
            ("POST", "/v1/chat/completions") => true,
            ("POST", "/v1/completions") => false,
            _ => {
                let msg = format!("Unknown request URL: {method} {path}");
                return self.send_json(s, 404, &error_body(404, &msg)).await;
            }
        };
        let Some(json_body) = parsed else {
            let msg = "We could not parse the JSON body of your request.";
            return self.send_json(s, 400, &error_body(400, msg)).await;
        };
        let req = Completion::from_body(&json_body, chat, delay);
        let answer = match events {
            Some(n) => vec!["tok ".to_string(); n as usize],
            None => split_answer(ANSWER),
        };
        if req.stream {
            return self.stream(s, &req, &answer).await;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let resp = req.full_response(id, &self.name, &answer.concat(), &req.usage(&answer));
        self.send_json(s, 200, &resp).await
    }
}

#[async_trait]
impl HttpServerApp for DemoModel {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                debug!("demo model: failed to read request: {e}");
                return None;
            }
        }
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_BODY => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) | Err(_) => return None,
                Ok(None) => break,
            }
        }
        if !self.respond(&mut session, &body).await {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(stream) => stream.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(e) => {
                debug!("demo model: failed to finish request: {e}");
                None
            }
        }
    }
}

/// A listening Pingora service serving the demo model on `listen` (e.g. "127.0.0.1:8000").
pub fn demo_service(name: &str, listen: &str) -> Service<DemoModel> {
    let mut service = Service::new(format!("demo model {name}"), DemoModel::new(name));
    service.add_tcp(listen);
    service
}

/// The parts of a (chat) completion request the demo model looks at.
struct Completion {
    chat: bool,
    model: String,
    stream: bool,
    include_usage: bool,
    prompt_tokens: usize,
    delay: Duration,
}

impl Completion {
    fn from_body(body: &Value, chat: bool, delay: Duration) -> Self {
        let prompt = if chat {
            let messages = body.get("messages").and_then(Value::as_array);
            let contents = messages
                .into_iter()
                .flatten()
                .filter_map(|m| m.get("content"));
            contents.map(text_of).collect::<Vec<_>>().join(" ")
        } else {
            body.get("prompt").map(text_of).unwrap_or_default()
        };
        Completion {
            chat,
            model: (body.get("model").and_then(Value::as_str))
                .unwrap_or(DEFAULT_MODEL)
                .to_string(),
            stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
            include_usage: body
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            prompt_tokens: count_tokens(&prompt),
            delay,
        }
    }

    fn usage(&self, pieces: &[String]) -> Value {
        usage_json(self.prompt_tokens, count_tokens(&pieces.concat()))
    }

    fn full_response(&self, id: u64, name: &str, text: &str, usage: &Value) -> Value {
        let (object, choice) = if self.chat {
            let message = json!({"role": "assistant", "content": text});
            let choice = json!({"index": 0, "message": message, "finish_reason": "stop"});
            ("chat.completion", choice)
        } else {
            let choice =
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": "stop"});
            ("text_completion", choice)
        };
        json!({
            "id": format!("{}-{id}", id_prefix(self.chat)),
            "object": object,
            "created": unix_now(),
            "model": self.model,
            "system_fingerprint": name,
            "choices": [choice],
            "usage": usage,
        })
    }
}

/// Builds the streamed chunk objects of one response (same id/created/model throughout).
struct ChunkMaker {
    chat: bool,
    base: Value,
}

impl ChunkMaker {
    fn new(chat: bool, id: u64, model: &str, name: &str) -> Self {
        let object = if chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let base = json!({
            "id": format!("{}-{id}", id_prefix(chat)),
            "object": object,
            "created": unix_now(),
            "model": model,
            "system_fingerprint": name,
        });
        ChunkMaker { chat, base }
    }

    /// A chunk with one choice; `delta` is the chat delta object or the completion text.
    fn piece(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        let mut v = self.base.clone();
        v["choices"] = if self.chat {
            json!([{"index": 0, "delta": delta, "finish_reason": finish_reason}])
        } else {
            json!([{"index": 0, "text": delta, "logprobs": null, "finish_reason": finish_reason}])
        };
        v
    }

    fn usage(&self, usage: &Value) -> Value {
        let mut v = self.base.clone();
        v["choices"] = json!([]);
        v["usage"] = usage.clone();
        v
    }
}

fn id_prefix(chat: bool) -> &'static str {
    if chat {
        "chatcmpl-demo"
    } else {
        "cmpl-demo"
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Text of a message content / prompt: a string, or an array of strings / `{"text": ..}` parts.
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let parts = items.iter().map(|i| match i.get("text") {
                Some(t) => text_of(t),
                None => text_of(i),
            });
            parts.collect::<Vec<_>>().join(" ")
        }
        _ => String::new(),
    }
}

/// Split `text` into small pieces (at most [`PIECE_CHARS`] characters, never crossing a
/// word end) the way a tokenizer would; concatenating the pieces gives back `text`.
fn split_answer(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    for word in text.split_inclusive(' ') {
        let chars: Vec<char> = word.chars().collect();
        pieces.extend(
            chars
                .chunks(PIECE_CHARS)
                .map(|c| c.iter().collect::<String>()),
        );
    }
    pieces
}

/// Approximate token count: whitespace-separated words.
fn count_tokens(text: &str) -> usize {
    text.split_whitespace().count()
}

fn usage_json(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// One SSE event carrying `v` as JSON.
fn sse_event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// An OpenAI-shaped error body.
fn error_body(status: u16, message: &str) -> Value {
    let kind = match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    json!({"error": {"message": message, "type": kind, "code": null}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rejoins_and_splits_pii() {
        let pieces = split_answer(ANSWER);
        assert_eq!(pieces.concat(), ANSWER);
        assert!(pieces
            .iter()
            .all(|p| !p.is_empty() && p.chars().count() <= PIECE_CHARS));
        assert!(!pieces.iter().any(|p| p.contains("jane.doe@example.com")));
        assert_eq!(split_answer("héllo wörld").concat(), "héllo wörld");
        assert!(split_answer("").is_empty());
    }

    #[test]
    fn sse_events_are_json_per_data_line() {
        let body =
            json!({"model": "qwen-demo", "messages": [{"role": "user", "content": "hi there"}]});
        let req = Completion::from_body(&body, true, Duration::ZERO);
        let maker = ChunkMaker::new(true, 7, &req.model, "up-a");
        for p in split_answer(ANSWER) {
            let ev = sse_event(&maker.piece(json!({ "content": p }), None));
            let text = std::str::from_utf8(&ev).unwrap();
            assert!(text.starts_with("data: ") && text.ends_with("\n\n"));
            assert_eq!(text.matches('\n').count(), 2, "one line per event");
            let v: Value = serde_json::from_str(&text[6..text.len() - 2]).unwrap();
            assert_eq!(v["object"], "chat.completion.chunk");
            assert_eq!(v["model"], "qwen-demo");
            assert_eq!(v["system_fingerprint"], "up-a");
            assert_eq!(v["choices"][0]["delta"]["content"], p.as_str());
        }
        let legacy = ChunkMaker::new(false, 1, "demo-model", "x").piece(json!("ab"), Some("stop"));
        assert_eq!(legacy["choices"][0]["text"], "ab");
        assert_eq!(legacy["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn usage_counts_words() {
        assert_eq!(count_tokens("  one two\tthree\n"), 3);
        let body = json!({"messages": [{"content": "a b"}, {"content": [{"type": "text", "text": "c d e"}]}]});
        let req = Completion::from_body(&body, true, Duration::ZERO);
        assert_eq!(req.model, DEFAULT_MODEL);
        let u = req.usage(&vec!["tok ".to_string(); 5]);
        assert_eq!(
            u,
            json!({"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10})
        );
        let legacy = Completion::from_body(&json!({"prompt": "x y"}), false, Duration::ZERO);
        assert_eq!(legacy.prompt_tokens, 2);
    }

    #[test]
    fn error_body_shape() {
        let e = error_body(400, "bad");
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert!(e["error"]["code"].is_null());
        assert_eq!(error_body(503, "x")["error"]["type"], "server_error");
    }
}
