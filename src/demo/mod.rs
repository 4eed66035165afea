//! The demo model: a small mock model server speaking the wire formats modelgate
//! proxies.
//!
//! It owns the mock upstream used by `modelgate demo`, the integration tests and the load
//! tests. Endpoints, one module per wire format:
//!
//! | Endpoint | Module | Streams |
//! |---|---|---|
//! | `POST /v1/chat/completions`, `POST /v1/completions` | [`openai`] | SSE when `"stream": true` |
//! | `POST /v1/messages` (Anthropic Messages) | [`anthropic`] | SSE with `event:` lines when `"stream": true` |
//! | `POST /api/chat`, `POST /api/generate` (Ollama) | [`ollama`] | NDJSON unless `"stream": false` |
//! | `POST /__raw` (exact bytes chosen by the test) | [`raw`] | always chunked |
//!
//! plus `GET /v1/models`, `GET /health`, and a request log at `/__requests` (`GET` reads
//! it, `DELETE` clears it) that tests read to see what the upstream actually received,
//! including the request body. Streams are real: one flushed write per event, with a
//! delay between events. Test knobs are request headers: `x-demo-delay-ms` (delay between
//! events, default 20), `x-demo-events` (answer with that many `"tok "` pieces instead of
//! the canned answer), `x-demo-text` (answer with this text instead),
//! `x-demo-fingerprint` (the `system_fingerprint` to report), `x-demo-status` (answer
//! with that error status instead). `PUT /__models` with a JSON array of ids replaces
//! the `GET /v1/models` list (a model swapped on the host).
//!
//! This is not a production model server: the answer is canned (and deliberately
//! contains PII so redaction can be demonstrated), token counts are word counts.
//! [`demo_tls_service`] serves it over HTTPS (optionally requiring client
//! certificates), for tests of TLS to upstreams.

mod anthropic;
mod ollama;
mod openai;
mod raw;

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
/// Most request-body bytes kept per `/__requests` entry.
const LOG_BODY_BYTES: usize = 64 << 10;
/// Upper bound for `x-demo-events`, so a typo cannot make the server allocate gigabytes.
const MAX_EVENTS: u64 = 100_000;
/// Maximum characters per streamed piece, so PII such as an email spans several events.
const PIECE_CHARS: usize = 4;

/// The demo model application. Cheap to construct; one per listening service.
pub struct DemoModel {
    name: String,
    /// What `GET /v1/models` lists.
    models: Mutex<Vec<String>>,
    requests: Mutex<VecDeque<Value>>,
    next_id: AtomicU64,
}

/// The model endpoints (everything that answers with generated text).
#[derive(Clone, Copy)]
enum Endpoint {
    OpenAiChat,
    OpenAiCompletions,
    AnthropicMessages,
    OllamaChat,
    OllamaGenerate,
    Raw,
}

/// How an endpoint answers: one JSON body, or a stream of events.
enum Reply {
    Json(Value),
    Stream {
        content_type: &'static str,
        events: Vec<Bytes>,
        /// Written right after the last event, without a delay (OpenAI's `[DONE]`).
        tail: &'static [u8],
    },
}

impl DemoModel {
    /// `name` identifies this instance: returned in the `x-demo-upstream` response header and as `system_fingerprint`.
    pub fn new(name: &str) -> Self {
        DemoModel {
            name: name.to_string(),
            models: Mutex::new(MODELS.map(String::from).to_vec()),
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

    /// Write `header`, then each event as its own flushed body write with `delay`
    /// between events, then `tail`, and end the body. Returns false if the client
    /// went away.
    async fn send_events(
        &self,
        s: &mut ServerSession,
        header: ResponseHeader,
        events: &[Bytes],
        delay: Duration,
        tail: &'static [u8],
    ) -> bool {
        if s.write_response_header(Box::new(header)).await.is_err() {
            return false;
        }
        for (i, ev) in events.iter().enumerate() {
            if i > 0 && delay > Duration::ZERO {
                tokio::time::sleep(delay).await;
            }
            if s.write_response_body(ev.clone(), false).await.is_err() {
                return false;
            }
        }
        s.write_response_body(Bytes::from_static(tail), true)
            .await
            .is_ok()
    }

    fn log(&self) -> MutexGuard<'_, VecDeque<Value>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, s: &ServerSession, body: &[u8], model: Option<&str>) {
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
        // The organisation of a TLS client's certificate (upstream mTLS tests).
        let client_cert_o = s
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .and_then(|t| t.organization.clone());
        let entry = json!({
            "client_cert_o": client_cert_o,
            "method": req.method.as_str(),
            "path": req.uri.path(),
            "headers": headers,
            "body_len": body.len(),
            "body": log_body(body),
            "model": model,
        });
        let mut log = self.log();
        if log.len() >= LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(entry);
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
                self.record(s, body, model);
            }
        }
        if let Some(code) = forced_status {
            let msg = format!("demo upstream forced status {code} (x-demo-status)");
            return self
                .send_json(s, code as u16, &error_body(code as u16, &msg))
                .await;
        }
        let endpoint = match (method.as_str(), path.as_str()) {
            ("GET", "/health") => return self.send_json(s, 200, &json!({"status": "ok"})).await,
            ("PUT", "/__models") => {
                let ids: Option<Vec<String>> = parsed.and_then(|v| serde_json::from_value(v).ok());
                let Some(ids) = ids else {
                    let msg = "expected a JSON array of model ids";
                    return self.send_json(s, 400, &error_body(400, msg)).await;
                };
                *self.models.lock().unwrap_or_else(|e| e.into_inner()) = ids.clone();
                return self.send_json(s, 200, &json!({ "models": ids })).await;
            }
            ("GET", "/v1/models") => {
                let models = self
                    .models
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let data: Vec<Value> = models
                    .iter()
                    .map(|id| json!({"id": id, "object": "model", "owned_by": "modelgate"}))
                    .collect();
                let list = json!({"object": "list", "data": data});
                return self.send_json(s, 200, &list).await;
            }
            ("POST", "/v1/chat/completions") => Endpoint::OpenAiChat,
            ("POST", "/v1/completions") => Endpoint::OpenAiCompletions,
            ("POST", "/v1/messages") => Endpoint::AnthropicMessages,
            ("POST", "/api/chat") => Endpoint::OllamaChat,
            ("POST", "/api/generate") => Endpoint::OllamaGenerate,
            ("POST", "/__raw") => Endpoint::Raw,
            _ => {
                let msg = format!("Unknown request URL: {method} {path}");
                return self.send_json(s, 404, &error_body(404, &msg)).await;
            }
        };
        let Some(json_body) = parsed else {
            let msg = "We could not parse the JSON body of your request.";
            return self.send_json(s, 400, &error_body(400, msg)).await;
        };
        let text_header = |name: &str| {
            s.req_header()
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let pieces = match (events, text_header("x-demo-text")) {
            (Some(n), _) => vec!["tok ".to_string(); n as usize],
            (None, Some(text)) => split_answer(&text),
            (None, None) => split_answer(ANSWER),
        };
        let fingerprint = text_header("x-demo-fingerprint").unwrap_or_else(|| self.name.clone());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let reply = match endpoint {
            Endpoint::OpenAiChat | Endpoint::OpenAiCompletions => {
                let chat = matches!(endpoint, Endpoint::OpenAiChat);
                openai::reply(&json_body, chat, id, &fingerprint, &pieces)
            }
            Endpoint::AnthropicMessages => anthropic::reply(&json_body, id, &pieces),
            Endpoint::OllamaChat => ollama::reply(&json_body, true, &pieces),
            Endpoint::OllamaGenerate => ollama::reply(&json_body, false, &pieces),
            Endpoint::Raw => {
                return match raw::RawReply::from_body(&json_body, delay) {
                    Ok(r) if r.abort => {
                        let h = r.header(&self.name);
                        let mut sent = s.write_response_header(Box::new(h)).await.is_ok();
                        for (i, c) in r.chunks.iter().enumerate() {
                            if i > 0 {
                                tokio::time::sleep(r.delay).await;
                            }
                            sent = sent && s.write_response_body(c.clone(), false).await.is_ok();
                        }
                        // Dropping the session closes the connection with the
                        // chunked body unfinished: a host that died.
                        let _ = sent;
                        false
                    }
                    Ok(r) => {
                        let h = r.header(&self.name);
                        self.send_events(s, h, &r.chunks, r.delay, b"").await
                    }
                    Err(msg) => self.send_json(s, 400, &error_body(400, &msg)).await,
                };
            }
        };
        match reply {
            Reply::Json(v) => self.send_json(s, 200, &v).await,
            Reply::Stream {
                content_type,
                events,
                tail,
            } => {
                let h = self.header(200, content_type, None);
                self.send_events(s, h, &events, delay, tail).await
            }
        }
    }
}

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

/// The demo model over HTTPS, for tests of upstream TLS: `cert` and `key`
/// are PEM files; with `client_ca`, every client must present a certificate
/// issued by it (upstream mutual TLS).
pub fn demo_tls_service(
    name: &str,
    listen: &str,
    cert: &str,
    key: &str,
    client_ca: Option<&str>,
) -> Result<Service<DemoModel>, String> {
    use pingora_core::tls::ssl::SslVerifyMode;
    let mut settings = pingora_core::listeners::tls::TlsSettings::intermediate(cert, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    if let Some(ca) = client_ca {
        settings
            .set_ca_file(ca)
            .map_err(|e| format!("--client-ca {ca}: {e}"))?;
        settings.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    let mut service = Service::new(format!("demo model {name}"), DemoModel::new(name));
    service.add_tls_with_settings(listen, None, settings);
    Ok(service)
}

/// The request body as logged: text (lossy UTF-8), at most [`LOG_BODY_BYTES`] bytes,
/// cut at a character boundary.
fn log_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut end = text.len().min(LOG_BODY_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// `model` of a request body, or the default model.
fn model_of(body: &Value) -> String {
    body.get("model")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_MODEL)
        .to_string()
}

/// Word count of the text of every message's `content` (plus `system`, if any).
fn prompt_tokens(body: &Value) -> usize {
    let messages = body.get("messages").and_then(Value::as_array);
    let contents = messages
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("content"));
    let system = body.get("system").map(text_of).unwrap_or_default();
    count_tokens(&system) + contents.map(|c| count_tokens(&text_of(c))).sum::<usize>()
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
    fn prompt_tokens_count_messages_and_system() {
        assert_eq!(count_tokens("  one two\tthree\n"), 3);
        let body = json!({
            "system": [{"type": "text", "text": "be brief"}],
            "messages": [{"content": "a b"}, {"content": [{"type": "text", "text": "c d e"}]}]
        });
        assert_eq!(prompt_tokens(&body), 7);
        assert_eq!(prompt_tokens(&json!({})), 0);
        assert_eq!(model_of(&json!({})), DEFAULT_MODEL);
        assert_eq!(model_of(&json!({"model": "m"})), "m");
    }

    #[test]
    fn logged_body_is_text_cut_at_a_char_boundary() {
        assert_eq!(log_body(br#"{"a":"b"}"#), r#"{"a":"b"}"#);
        let long = "é".repeat(LOG_BODY_BYTES); // 2 bytes each
        let logged = log_body(long.as_bytes());
        assert_eq!(logged.len(), LOG_BODY_BYTES);
        let odd = format!("x{long}");
        let logged = log_body(odd.as_bytes());
        assert_eq!(logged.len(), LOG_BODY_BYTES - 1, "never splits a character");
        assert_eq!(log_body(b"\xff ok"), "\u{fffd} ok");
    }

    #[test]
    fn error_body_shape() {
        let e = error_body(400, "bad");
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert!(e["error"]["code"].is_null());
        assert_eq!(error_body(503, "x")["error"]["type"], "server_error");
    }
}
