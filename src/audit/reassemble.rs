//! Audit reassembly: turns the exact bytes a client received (already
//! PII-masked) back into the text it reads, plus the call's metadata (usage,
//! finish reason, model, system fingerprint, error message). Runs off the hot
//! path, on the captured prefix of the body and, when the capture overflowed,
//! its last bytes (used for metadata only).
//!
//! | Content-Type | Shapes understood |
//! |---|---|
//! | `text/event-stream` | OpenAI chat / completions chunks, Anthropic Messages events, Ollama-shaped objects; other data appended as text |
//! | `application/x-ndjson`, `application/jsonl`, `application/ndjson` | Ollama `/api/chat`, `/api/generate` lines; other lines appended as text |
//! | `application/json`, `*+json` | OpenAI chat / completions, Anthropic message, Ollama, error objects; anything else as text |
//! | anything else | the body as text |
//!
//! Never panics: malformed or truncated input gives whatever could be read.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Token counts reported by the upstream, in OpenAI's names.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Usage {
    /// Prompt (input) tokens: OpenAI `prompt_tokens`, Anthropic
    /// `input_tokens`, Ollama `prompt_eval_count`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    /// Generated (output) tokens: OpenAI `completion_tokens`, Anthropic
    /// `output_tokens`, Ollama `eval_count`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
    /// As reported, or prompt + completion when both are known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u64>,
}

impl Usage {
    /// `None` when no count is given: an empty `usage` object is no usage.
    fn given(self) -> Option<Usage> {
        (self != Usage::default()).then_some(self)
    }
}

/// One tool (function) call the model made.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct ToolCall {
    /// The function's name.
    pub name: String,
    /// Its arguments as the client received them: streamed pieces joined, or
    /// a JSON object serialised compactly.
    pub arguments: String,
}

/// What the client received, as readable text and metadata. With several
/// choices, their reasoning and refusal texts are joined by blank lines and
/// tool calls are ordered by choice, then index; metadata that is one value
/// (finish reason) is choice 0's.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reassembled {
    /// The answer text the client reads (choice 0 / the whole message).
    /// Without a choice 0, the lowest-indexed choice.
    pub text: String,
    /// Texts of further choices (n > 1), index 1.. ; empty when there is one choice.
    pub more_choices: Vec<String>,
    /// Reasoning/thinking text (reasoning_content, reasoning, Anthropic thinking), if any.
    pub reasoning: String,
    /// Refusal text (OpenAI `refusal`), if any.
    pub refusal: String,
    /// Tool calls in index order with concatenated streamed arguments.
    pub tool_calls: Vec<ToolCall>,
    /// Token counts, when the upstream reported any.
    pub usage: Option<Usage>,
    /// Why generation stopped (`finish_reason`, `stop_reason`, `done_reason`).
    pub finish_reason: Option<String>,
    /// The model that answered, as the response names it.
    pub model: Option<String>,
    /// OpenAI `system_fingerprint`.
    pub system_fingerprint: Option<String>,
    /// The body was an error object (`{"error": ...}` or Anthropic `type: error`): its message.
    pub error: Option<String>,
}

/// `content_type` is the response Content-Type header value ("" if none).
/// `body` is the captured prefix of the bytes sent to the client (may be cut
/// mid-event when `tail` is non-empty). `tail` is empty unless the capture
/// overflowed, in which case it holds the last bytes of the stream (it may
/// start mid-event: skip up to the first complete event/line boundary) and
/// is used ONLY for usage / finish_reason / model / system_fingerprint.
pub fn reassemble(content_type: &str, body: &[u8], tail: &[u8]) -> Reassembled {
    // from_utf8 checks valid text faster than from_utf8_lossy's scan.
    let text =
        |b| std::str::from_utf8(b).map_or_else(|_| String::from_utf8_lossy(b), Cow::Borrowed);
    let body = text(body);
    let tail = text(tail);
    match Format::of(content_type) {
        Format::Sse => sse(&body, &tail),
        Format::Ndjson => ndjson(&body, &tail),
        Format::Json => json_body(&body, &tail),
        Format::Text => Reassembled {
            text: body.into_owned(),
            ..Default::default()
        },
    }
}

/// The wire format of a body, by its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Sse,
    Ndjson,
    Json,
    Text,
}

impl Format {
    fn of(content_type: &str) -> Self {
        let base = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match base.as_str() {
            "text/event-stream" => Format::Sse,
            "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/jsonlines"
            | "application/x-jsonlines" => Format::Ndjson,
            "application/json" => Format::Json,
            t if t.ends_with("+json") => Format::Json,
            _ => Format::Text,
        }
    }
}

// ---------------------------------------------------------------------------
// Accumulating the result
// ---------------------------------------------------------------------------

/// Text of one choice.
#[derive(Debug, Default)]
struct Choice {
    text: String,
    reasoning: String,
    refusal: String,
}

/// The result being built, event by event.
#[derive(Debug, Default)]
struct Builder {
    choices: BTreeMap<u64, Choice>,
    /// Keyed by (choice index, tool index).
    tools: BTreeMap<(u64, u64), ToolCall>,
    /// Finish reason per choice index.
    finish: BTreeMap<u64, String>,
    usage: Option<Usage>,
    model: Option<String>,
    system_fingerprint: Option<String>,
    error: Option<String>,
}

impl Builder {
    fn choice(&mut self, idx: u64) -> &mut Choice {
        self.choices.entry(idx).or_default()
    }

    fn tool(&mut self, choice: u64, idx: u64) -> &mut ToolCall {
        self.tools.entry((choice, idx)).or_default()
    }

    /// Appends a piece of answer text (choice 0).
    fn push_text(&mut self, s: &str) {
        self.choice(0).text.push_str(s);
    }

    /// Appends a whole unrecognised record (choice 0), on a line of its own.
    fn push_line(&mut self, s: &str) {
        let text = &mut self.choice(0).text;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(s);
    }

    /// Merges counts in: each one reported replaces the earlier one.
    fn add_usage(&mut self, u: Option<Usage>) {
        let Some(u) = u else { return };
        let cur = self.usage.get_or_insert_with(Usage::default);
        cur.prompt_tokens = u.prompt_tokens.or(cur.prompt_tokens);
        cur.completion_tokens = u.completion_tokens.or(cur.completion_tokens);
        cur.total_tokens = u.total_tokens.or(cur.total_tokens);
    }

    fn set_finish(&mut self, choice: u64, v: Option<&Value>) {
        if let Some(s) = v.and_then(Value::as_str) {
            self.finish.insert(choice, s.to_string());
        }
    }

    /// `model`, `system_fingerprint` and `usage` of a top-level object.
    fn meta(&mut self, obj: &Map<String, Value>) {
        set_str(&mut self.model, obj.get("model"));
        set_str(&mut self.system_fingerprint, obj.get("system_fingerprint"));
        self.add_usage(obj.get("usage").and_then(usage_of));
    }

    /// Takes usage, finish reasons, model and fingerprint from `other` (the
    /// end of the stream), where it has them.
    fn merge_meta(&mut self, other: Builder) {
        self.add_usage(other.usage);
        self.finish.extend(other.finish);
        if other.model.is_some() {
            self.model = other.model;
        }
        if other.system_fingerprint.is_some() {
            self.system_fingerprint = other.system_fingerprint;
        }
    }

    fn finish(mut self) -> Reassembled {
        let finish_reason = self
            .finish
            .remove(&0)
            .or_else(|| self.finish.into_values().next());
        let mut texts = Vec::new();
        let mut reasoning = Vec::new();
        let mut refusal = Vec::new();
        for c in self.choices.into_values() {
            texts.push(c.text);
            reasoning.extend((!c.reasoning.is_empty()).then_some(c.reasoning));
            refusal.extend((!c.refusal.is_empty()).then_some(c.refusal));
        }
        let mut texts = texts.into_iter();
        Reassembled {
            text: texts.next().unwrap_or_default(),
            more_choices: texts.collect(),
            reasoning: reasoning.join("\n\n"),
            refusal: refusal.join("\n\n"),
            tool_calls: self.tools.into_values().collect(),
            usage: self.usage.map(with_total),
            finish_reason,
            model: self.model,
            system_fingerprint: self.system_fingerprint,
            error: self.error,
        }
    }
}

fn set_str(slot: &mut Option<String>, v: Option<&Value>) {
    if let Some(s) = v.and_then(Value::as_str) {
        *slot = Some(s.to_string());
    }
}

/// Fills `total_tokens` from prompt + completion when it was not reported.
fn with_total(mut u: Usage) -> Usage {
    if u.total_tokens.is_none() {
        if let (Some(p), Some(c)) = (u.prompt_tokens, u.completion_tokens) {
            u.total_tokens = p.checked_add(c);
        }
    }
    u
}

// ---------------------------------------------------------------------------
// JSON values
// ---------------------------------------------------------------------------

/// A token count: a non-negative integer (also written as `12.0`).
fn count(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        let f = v.as_f64()?;
        // 2^64: larger floats would saturate.
        (f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f)).then_some(f as u64)
    })
}

/// OpenAI or Anthropic usage object.
fn usage_of(v: &Value) -> Option<Usage> {
    let o = v.as_object()?;
    let pick = |keys: &[&str]| keys.iter().find_map(|k| o.get(*k).and_then(count));
    Usage {
        prompt_tokens: pick(&["prompt_tokens", "input_tokens"]),
        completion_tokens: pick(&["completion_tokens", "output_tokens"]),
        total_tokens: pick(&["total_tokens"]),
    }
    .given()
}

/// Ollama's `prompt_eval_count` / `eval_count`.
fn ollama_counts(o: &Map<String, Value>) -> Option<Usage> {
    Usage {
        prompt_tokens: o.get("prompt_eval_count").and_then(count),
        completion_tokens: o.get("eval_count").and_then(count),
        total_tokens: None,
    }
    .given()
}

/// Message content: a string, or an array of text parts.
fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.as_str().or_else(|| p.get("text").and_then(Value::as_str)))
                .collect(),
        ),
        _ => None,
    }
}

fn str_of<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    o.get(key).and_then(Value::as_str)
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The message of an `error` value: a string, or an object's `message`.
fn error_message(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(e @ Value::Object(o)) => match o.get("message") {
            Some(Value::String(m)) => m.clone(),
            _ => compact(e),
        },
        Some(other) => compact(other),
        None => "error".to_string(),
    }
}

/// Adds a function's name and arguments to `t` (OpenAI `function`, Ollama
/// `function`, legacy `function_call`).
fn add_function(t: &mut ToolCall, f: &Value) {
    if let Some(name) = f.get("name").and_then(Value::as_str) {
        merge_name(&mut t.name, name);
    }
    match f.get("arguments") {
        Some(Value::String(s)) => t.arguments.push_str(s),
        Some(v @ (Value::Object(_) | Value::Array(_))) => t.arguments.push_str(&compact(v)),
        _ => {}
    }
}

/// A name is sent once (OpenAI), repeated (some servers) or, rarely, in pieces.
fn merge_name(name: &mut String, piece: &str) {
    if name.is_empty() {
        *name = piece.to_string();
    } else if name != piece {
        name.push_str(piece);
    }
}

// ---------------------------------------------------------------------------
// Object shapes
// ---------------------------------------------------------------------------

/// Anthropic Messages stream event types (the masking codec's list; `error`
/// is matched before it is consulted).
use crate::mask::codec::sse::ANTHROPIC_TYPES as ANTHROPIC_EVENTS;

/// What a JSON object is.
enum Shape<'a> {
    Error(Option<&'a Value>),
    OpenAi,
    AnthropicEvent(&'a str),
    AnthropicMessage,
    Ollama,
    Unknown,
}

impl<'a> Shape<'a> {
    fn of(obj: &'a Map<String, Value>) -> Self {
        let kind = str_of(obj, "type");
        if kind == Some("error") {
            return Shape::Error(obj.get("error"));
        }
        let error = obj.get("error").filter(|e| !e.is_null());
        if error.is_some() && !obj.contains_key("choices") {
            return Shape::Error(error);
        }
        if obj.contains_key("choices") {
            return Shape::OpenAi;
        }
        if let Some(k) = kind.filter(|k| ANTHROPIC_EVENTS.contains(k)) {
            return Shape::AnthropicEvent(k);
        }
        let content_array = obj.get("content").is_some_and(Value::is_array);
        if kind == Some("message") || (content_array && obj.contains_key("role")) {
            return Shape::AnthropicMessage;
        }
        if obj.get("message").is_some_and(Value::is_object)
            || obj.get("response").is_some_and(Value::is_string)
            || obj.get("done").is_some_and(Value::is_boolean)
        {
            return Shape::Ollama;
        }
        if obj.get("usage").is_some_and(Value::is_object) {
            return Shape::OpenAi;
        }
        Shape::Unknown
    }
}

/// Applies one JSON object of a known shape (stream chunk or whole
/// response); false, touching nothing, when the shape is unknown.
fn apply_object(b: &mut Builder, obj: &Map<String, Value>) -> bool {
    match Shape::of(obj) {
        Shape::Error(e) => b.error = Some(error_message(e)),
        Shape::OpenAi => openai(b, obj),
        Shape::AnthropicEvent(kind) => anthropic_event(b, kind, obj),
        Shape::AnthropicMessage => anthropic_message(b, obj),
        Shape::Ollama => ollama(b, obj),
        Shape::Unknown => return false,
    }
    true
}

// ---------------------------------------------------------------------------
// OpenAI
// ---------------------------------------------------------------------------

/// Legacy `function_call`'s tool index (one per choice).
const LEGACY_FUNCTION: u64 = u64::MAX;

/// An OpenAI chat / completions object: a stream chunk (`delta`) or a whole
/// response (`message`).
fn openai(b: &mut Builder, obj: &Map<String, Value>) {
    b.meta(obj);
    if let Some(Value::Array(choices)) = obj.get("choices") {
        for (pos, c) in choices.iter().enumerate() {
            if let Value::Object(c) = c {
                openai_choice(b, pos as u64, c);
            }
        }
    }
}

fn openai_choice(b: &mut Builder, pos: u64, c: &Map<String, Value>) {
    let idx = c.get("index").and_then(count).unwrap_or(pos);
    b.choice(idx);
    for key in ["delta", "message"] {
        if let Some(Value::Object(m)) = c.get(key) {
            openai_message(b, idx, m);
        }
    }
    if let Some(t) = str_of(c, "text") {
        b.choice(idx).text.push_str(t);
    }
    b.set_finish(idx, c.get("finish_reason"));
}

fn openai_message(b: &mut Builder, idx: u64, m: &Map<String, Value>) {
    if let Some(t) = m.get("content").and_then(text_of) {
        b.choice(idx).text.push_str(&t);
    }
    // Some servers send both names with the same text.
    if let Some(r) = str_of(m, "reasoning_content").or_else(|| str_of(m, "reasoning")) {
        b.choice(idx).reasoning.push_str(r);
    }
    if let Some(r) = str_of(m, "refusal") {
        b.choice(idx).refusal.push_str(r);
    }
    if let Some(Value::Array(calls)) = m.get("tool_calls") {
        for (pos, call) in calls.iter().enumerate() {
            let Value::Object(call) = call else { continue };
            let tidx = call.get("index").and_then(count).unwrap_or(pos as u64);
            let t = b.tool(idx, tidx);
            if let Some(f) = call.get("function") {
                add_function(t, f);
            }
        }
    }
    if let Some(f @ Value::Object(_)) = m.get("function_call") {
        add_function(b.tool(idx, LEGACY_FUNCTION), f);
    }
}

// ---------------------------------------------------------------------------
// Anthropic
// ---------------------------------------------------------------------------

/// One Anthropic Messages stream event.
fn anthropic_event(b: &mut Builder, kind: &str, obj: &Map<String, Value>) {
    let index = obj.get("index").and_then(count).unwrap_or(0);
    match kind {
        "message_start" => {
            if let Some(Value::Object(m)) = obj.get("message") {
                b.meta(m);
            }
        }
        "content_block_start" => {
            if let Some(block) = obj.get("content_block") {
                anthropic_block(b, index, block, false);
            }
        }
        "content_block_delta" => {
            if let Some(d) = obj.get("delta") {
                anthropic_delta(b, index, d);
            }
        }
        "message_delta" => {
            b.set_finish(0, obj.get("delta").and_then(|d| d.get("stop_reason")));
            b.add_usage(obj.get("usage").and_then(usage_of));
        }
        _ => {}
    }
}

/// A whole Anthropic `message` object.
fn anthropic_message(b: &mut Builder, m: &Map<String, Value>) {
    b.meta(m);
    b.set_finish(0, m.get("stop_reason"));
    if let Some(Value::Array(blocks)) = m.get("content") {
        for (i, block) in blocks.iter().enumerate() {
            anthropic_block(b, i as u64, block, true);
        }
    }
}

/// A content block, whole or (not `whole`) as it starts a stream. A streamed
/// `tool_use` starts with an empty `input`; its JSON follows in deltas.
fn anthropic_block(b: &mut Builder, index: u64, block: &Value, whole: bool) {
    let text = |key: &str| block.get(key).and_then(Value::as_str).unwrap_or("");
    match block.get("type").and_then(Value::as_str) {
        Some("text") => b.push_text(text("text")),
        Some("thinking") => b.choice(0).reasoning.push_str(text("thinking")),
        Some("tool_use" | "server_tool_use" | "mcp_tool_use") => {
            let t = b.tool(0, index);
            merge_name(&mut t.name, text("name"));
            let input = block.get("input");
            let empty = input.is_none_or(|v| v.as_object().is_some_and(Map::is_empty));
            if let Some(input) = input.filter(|_| whole || !empty) {
                t.arguments.push_str(&compact(input));
            }
        }
        _ => {}
    }
}

/// A `content_block_delta`'s `delta`: text, thinking, or tool input JSON.
fn anthropic_delta(b: &mut Builder, index: u64, d: &Value) {
    if let Some(t) = d.get("text").and_then(Value::as_str) {
        b.push_text(t);
    }
    if let Some(t) = d.get("thinking").and_then(Value::as_str) {
        b.choice(0).reasoning.push_str(t);
    }
    if let Some(t) = d.get("partial_json").and_then(Value::as_str) {
        b.tool(0, index).arguments.push_str(t);
    }
}

// ---------------------------------------------------------------------------
// Ollama
// ---------------------------------------------------------------------------

/// An Ollama `/api/chat` or `/api/generate` object (a streamed line or whole).
fn ollama(b: &mut Builder, o: &Map<String, Value>) {
    set_str(&mut b.model, o.get("model"));
    if let Some(Value::Object(m)) = o.get("message") {
        ollama_message(b, m);
    }
    if let Some(t) = str_of(o, "response") {
        b.push_text(t);
    }
    if let Some(t) = str_of(o, "thinking") {
        b.choice(0).reasoning.push_str(t);
    }
    b.set_finish(0, o.get("done_reason"));
    b.add_usage(ollama_counts(o));
}

fn ollama_message(b: &mut Builder, m: &Map<String, Value>) {
    if let Some(t) = m.get("content").and_then(text_of) {
        b.push_text(&t);
    }
    if let Some(t) = str_of(m, "thinking") {
        b.choice(0).reasoning.push_str(t);
    }
    if let Some(Value::Array(calls)) = m.get("tool_calls") {
        for call in calls {
            // Ollama sends each call whole, once.
            let next = b.tools.len() as u64;
            let t = b.tool(0, next);
            if let Some(f) = call.get("function") {
                add_function(t, f);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Lines and server-sent events
// ---------------------------------------------------------------------------

/// Lines ended by `\n`, `\r\n` or `\r`, each with whether its end was seen.
struct Lines<'a> {
    s: &'a str,
    pos: usize,
    /// The next `\n` at or after `pos` (`Some(None)`: there is none), cached
    /// so that `\r`-only text is not rescanned for each line.
    lf: Option<Option<usize>>,
}

fn lines(s: &str) -> Lines<'_> {
    Lines {
        s,
        pos: 0,
        lf: None,
    }
}

impl Lines<'_> {
    fn next_lf(&mut self) -> Option<usize> {
        let stale = match self.lf {
            None => true,
            Some(lf) => lf.is_some_and(|i| i < self.pos),
        };
        if stale {
            // `find` of one char is a fast memchr.
            self.lf = Some(self.s[self.pos..].find('\n').map(|i| i + self.pos));
        }
        self.lf.flatten()
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = (&'a str, bool);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.s[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let lf = self.next_lf().map(|i| i - self.pos);
        // A `\r` can only end a line before the next `\n`.
        let cr = rest[..lf.unwrap_or(rest.len())].find('\r');
        let (end, skip) = match (cr, lf) {
            (Some(cr), Some(lf)) if cr + 1 == lf => (cr, 2),
            (Some(cr), _) => (cr, 1),
            (None, Some(lf)) => (lf, 1),
            (None, None) => {
                self.pos = self.s.len();
                return Some((rest, false));
            }
        };
        self.pos += end + skip;
        Some((&rest[..end], true))
    }
}

/// One server-sent event: its lines, and whether its blank line was seen.
struct Event<'a> {
    lines: Vec<&'a str>,
    complete: bool,
}

impl Event<'_> {
    /// The joined `data:` lines, or `None` without any.
    fn data(&self) -> Option<String> {
        let mut data: Option<String> = None;
        for line in &self.lines {
            let value = match line.strip_prefix("data:") {
                Some(v) => v.strip_prefix(' ').unwrap_or(v),
                None if *line == "data" => "",
                None => continue,
            };
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            }
        }
        data
    }

    fn has_data(&self) -> bool {
        self.lines
            .iter()
            .any(|l| l.starts_with("data:") || *l == "data")
    }

    /// Whether the event starts with a field line (not part of a line).
    fn starts_with_field(&self) -> bool {
        self.lines.first().is_some_and(|l| {
            ["data:", "event:", "id:", "retry:"]
                .iter()
                .any(|f| l.starts_with(f))
        })
    }
}

/// Splits `s` into events at blank lines; a last event without its blank
/// line is `complete: false`.
fn events(s: &str) -> Vec<Event<'_>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for (line, ended) in lines(s) {
        if line.is_empty() && ended {
            if !cur.is_empty() {
                out.push(Event {
                    lines: std::mem::take(&mut cur),
                    complete: true,
                });
            }
        } else {
            cur.push(line);
        }
    }
    if !cur.is_empty() {
        out.push(Event {
            lines: cur,
            complete: false,
        });
    }
    out
}

/// Whether an unfinished record's text that is not JSON is kept: not when the
/// capture was cut (it may be any fragment) nor when it is truncated JSON.
fn keep_partial(data: &str, cut: bool) -> bool {
    !cut && !data.trim_start().starts_with(['{', '['])
}

fn sse(body: &str, tail: &str) -> Reassembled {
    let body = body.strip_prefix('\u{feff}').unwrap_or(body);
    let evs = events(body);
    let has_data = evs.iter().any(Event::has_data);
    if !has_data && serde_json::from_str::<Value>(body).is_ok() {
        // An error body sent under the stream's content type.
        return json_body(body, tail);
    }
    let cut = !tail.is_empty();
    let mut b = Builder::default();
    for ev in &evs {
        if let Some(data) = ev.data() {
            sse_data(&mut b, &data, ev.complete, cut);
        }
    }
    if cut {
        b.merge_meta(sse_tail(tail));
    }
    b.finish()
}

/// One event's data. An unfinished event counts if its data is whole JSON.
fn sse_data(b: &mut Builder, data: &str, complete: bool, cut: bool) {
    if data == "[DONE]" {
        return;
    }
    if let Ok(Obj(chunk)) = serde_json::from_str::<Obj<PlainObject>>(data) {
        chunk.apply(b);
        return;
    }
    match serde_json::from_str::<Value>(data) {
        Ok(Value::Object(obj)) => {
            if !apply_object(b, &obj) {
                b.push_line(data);
            }
        }
        Ok(Value::Array(_) | Value::String(_)) => b.push_line(data),
        // A bare number, bool or null is most likely text.
        Ok(_) => b.push_text(data),
        Err(_) if complete || keep_partial(data, cut) => b.push_text(data),
        Err(_) => {}
    }
}

/// The common OpenAI object: a chat chunk (`delta`), a whole chat answer
/// (`message`) or a completions choice (`text`), with text, refusal and
/// meta fields only. It is parsed without building a `Value`: the profiles
/// of the streamed and the JSON load tests showed map hashing in `Value`
/// parsing as the writer's main cost. Any other field (tool calls,
/// reasoning, content parts, vLLM's `stop_reason`, an error...), an array
/// where an object belongs, a duplicate key or a float count fails this
/// parse and the object takes the general path, which it matches on
/// everything it accepts (see the tests). One difference is kept: in the
/// fields both paths ignore (`id`, `logprobs`...), the skip here does not
/// check what the `Value` parser rejects (a lone surrogate escape, a number
/// out of range, nesting deeper than 128), so such an answer is recorded
/// field by field here instead of as raw text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainObject<'a> {
    #[serde(borrow)]
    choices: Vec<Obj<PlainChoice<'a>>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    system_fingerprint: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<Obj<PlainUsage>>,
    #[serde(default, rename = "id")]
    _id: serde::de::IgnoredAny,
    #[serde(default, rename = "object")]
    _object: serde::de::IgnoredAny,
    #[serde(default, rename = "created")]
    _created: serde::de::IgnoredAny,
    #[serde(default, rename = "service_tier")]
    _service_tier: serde::de::IgnoredAny,
    // vLLM's whole answers carry these two, usually null (their choices'
    // `stop_reason` still sends them the general way).
    #[serde(default, rename = "prompt_logprobs")]
    _prompt_logprobs: serde::de::IgnoredAny,
    #[serde(default, rename = "kv_transfer_params")]
    _kv_transfer_params: serde::de::IgnoredAny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainChoice<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    delta: Option<Obj<PlainDelta<'a>>>,
    #[serde(borrow, default)]
    message: Option<Obj<PlainDelta<'a>>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default, rename = "logprobs")]
    _logprobs: serde::de::IgnoredAny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(default, rename = "role")]
    _role: serde::de::IgnoredAny,
    #[serde(default, rename = "annotations")]
    _annotations: serde::de::IgnoredAny,
}

/// Both vocabularies, as `usage_of` reads them; other keys (the `*_details`
/// objects) are ignored there too.
#[derive(Deserialize)]
struct PlainUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

impl PlainUsage {
    /// `usage_of`'s result: `None` when no count is given.
    fn counts(self) -> Option<Usage> {
        Usage {
            prompt_tokens: self.prompt_tokens.or(self.input_tokens),
            completion_tokens: self.completion_tokens.or(self.output_tokens),
            total_tokens: self.total_tokens,
        }
        .given()
    }
}

impl PlainObject<'_> {
    /// The same effect as the general path on this chunk.
    fn apply(self, b: &mut Builder) {
        if let Some(m) = self.model {
            b.model = Some(m.into_owned());
        }
        if let Some(f) = self.system_fingerprint {
            b.system_fingerprint = Some(f.into_owned());
        }
        b.add_usage(self.usage.and_then(|Obj(u)| u.counts()));
        for (pos, Obj(c)) in self.choices.into_iter().enumerate() {
            let idx = c.index.unwrap_or(pos as u64);
            let choice = b.choice(idx);
            // In `openai_choice`'s order: delta, message, then text.
            for Obj(m) in [c.delta, c.message].into_iter().flatten() {
                if let Some(t) = m.content {
                    choice.text.push_str(&t);
                }
                if let Some(r) = m.refusal {
                    choice.refusal.push_str(&r);
                }
            }
            if let Some(t) = c.text {
                choice.text.push_str(&t);
            }
            if let Some(f) = c.finish_reason {
                b.finish.insert(idx, f.into_owned());
            }
        }
    }
}

/// A `T` read from a JSON object only: derived structs also read an array
/// of their fields in order, which the `Value` path treats as text or skips.
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Fields<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Obj)
            }
        }
        d.deserialize_map(Fields(std::marker::PhantomData))
    }
}

/// Metadata from the stream's last bytes: events after the first boundary
/// (or a first one that starts cleanly), JSON objects only.
fn sse_tail(tail: &str) -> Builder {
    let mut b = Builder::default();
    for (i, ev) in events(tail).iter().enumerate() {
        if i == 0 && !ev.starts_with_field() {
            continue;
        }
        if let Some(Ok(Value::Object(obj))) = ev.data().map(|d| serde_json::from_str(&d)) {
            apply_object(&mut b, &obj);
        }
    }
    b
}

// ---------------------------------------------------------------------------
// NDJSON
// ---------------------------------------------------------------------------

fn ndjson(body: &str, tail: &str) -> Reassembled {
    let cut = !tail.is_empty();
    let mut b = Builder::default();
    for (line, ended) in lines(body) {
        ndjson_line(&mut b, line.trim(), ended, cut);
    }
    if cut {
        b.merge_meta(ndjson_tail(tail));
    }
    b.finish()
}

fn ndjson_line(b: &mut Builder, line: &str, ended: bool, cut: bool) {
    if line.is_empty() {
        return;
    }
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(obj)) => {
            if !apply_object(b, &obj) {
                b.push_line(line);
            }
        }
        Ok(_) => b.push_line(line),
        Err(_) if ended || keep_partial(line, cut) => b.push_line(line),
        Err(_) => {}
    }
}

/// Metadata from the stream's last lines. A first line starting mid-line
/// never parses as a JSON object (it would end in an extra `}`), so every
/// line that does is whole.
fn ndjson_tail(tail: &str) -> Builder {
    let mut b = Builder::default();
    for (line, _) in lines(tail) {
        if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line.trim()) {
            apply_object(&mut b, &obj);
        }
    }
    b
}

// ---------------------------------------------------------------------------
// Whole JSON bodies
// ---------------------------------------------------------------------------

fn json_body(body: &str, tail: &str) -> Reassembled {
    let mut b = Builder::default();
    if let Ok(Obj(plain)) = serde_json::from_str::<Obj<PlainObject>>(body) {
        plain.apply(&mut b);
    } else {
        general_json_body(&mut b, body);
    }
    if !tail.is_empty() {
        b.merge_meta(scanned_meta(tail));
    }
    b.finish()
}

/// A whole JSON body the typed fast path declined.
fn general_json_body(b: &mut Builder, body: &str) {
    match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(obj)) if apply_object(b, &obj) => {}
        Ok(_) => b.push_text(body),
        Err(_) => {
            b.push_text(body);
            b.merge_meta(scanned_meta(body));
        }
    }
}

/// Keys whose values make the metadata of a JSON body.
const META_KEYS: [&str; 8] = [
    "model",
    "system_fingerprint",
    "usage",
    "finish_reason",
    "stop_reason",
    "done_reason",
    "prompt_eval_count",
    "eval_count",
];

/// Occurrences of a key tried, from the last, before giving up.
const MAX_KEY_TRIES: usize = 16;

/// Metadata of a JSON document too long to parse whole: the last value of
/// each of [`META_KEYS`] found in the fragment `s`.
fn scanned_meta(s: &str) -> Builder {
    let found: Map<String, Value> = META_KEYS
        .iter()
        .filter_map(|k| Some((k.to_string(), last_value_of(s, k)?)))
        .collect();
    let mut b = Builder::default();
    b.meta(&found);
    for key in ["finish_reason", "stop_reason", "done_reason"] {
        b.set_finish(0, found.get(key));
    }
    b.add_usage(ollama_counts(&found));
    b
}

/// The value after the last `"key":` in `s` that parses (and is not null).
fn last_value_of(s: &str, key: &str) -> Option<Value> {
    let pattern = format!("\"{key}\"");
    s.rmatch_indices(&pattern)
        .take(MAX_KEY_TRIES)
        .find_map(|(i, _)| value_after(s, i, pattern.len()))
}

fn value_after(s: &str, at: usize, len: usize) -> Option<Value> {
    // An escaped quote is inside a string, not a key.
    if s[..at].ends_with('\\') {
        return None;
    }
    let rest = s[at + len..].trim_start().strip_prefix(':')?.trim_start();
    let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
    values.next()?.ok().filter(|v| !v.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Whole JSON answers: the typed path takes the first list and declines
    /// the second; either way the answer is what the `Value` path gives.
    #[test]
    fn plain_json_answer_fast_path_matches_the_general_path() {
        let taken = [
            r#"{"id":"c","object":"chat.completion","created":1,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"message":{"role":"assistant","content":"Mail jane@example.com"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":4,"total_tokens":5}}"#,
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"I can't","annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":2,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":0}},"service_tier":"default"}"#,
            r#"{"choices":[{"index":1,"message":{"content":"b"}},{"index":0,"message":{"content":"a"},"finish_reason":"length"}]}"#,
            r#"{"object":"text_completion","choices":[{"text":"once upon","index":0,"finish_reason":"length"}],"prompt_logprobs":null,"kv_transfer_params":null}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"x"},"message":{"content":"y"},"text":"z"}]}"#,
            r#"{"choices":[{"index":0,"message":null}],"model":null,"usage":{}}"#,
            r#"{"choices":[],"usage":{"input_tokens":7,"output_tokens":2}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":null,"input_tokens":7}}"#,
        ];
        let declined = [
            r#"{"choices":[{"index":0,"message":{"content":"a","tool_calls":[]}}]}"#,
            r#"{"choices":[{"index":0,"message":{"content":[{"type":"text","text":"a"}]}}]}"#,
            r#"{"choices":[],"model":"a","model":"b"}"#,
            r#"{"choices":[],"usage":{"total_tokens":1.0}}"#,
            r#"{"error":{"message":"boom"},"choices":[]}"#,
            // Arrays where objects belong (serde reads them as fields in order).
            r#"[[]]"#,
            r#"[[],null,null,null,"hidden"]"#,
            r#"{"choices":[{"message":["hi"]}]}"#,
            r#"{"choices":[[0,null,["hi"]]]}"#,
            r#"{"choices":[],"usage":[1,2,3,0,0]}"#,
        ];
        let cases = taken.iter().map(|b| (b, true));
        for (body, fast) in cases.chain(declined.iter().map(|b| (b, false))) {
            assert_eq!(
                serde_json::from_str::<Obj<PlainObject>>(body).is_ok(),
                fast,
                "fast path {} {body}",
                if fast { "declined" } else { "took" }
            );
            let mut general = Builder::default();
            general_json_body(&mut general, body);
            assert_eq!(json_body(body, ""), general.finish(), "{body}");
        }
    }

    #[test]
    fn plain_chunk_fast_path_matches_the_general_path() {
        let chunks = [
            r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"Hi \"there\" \u00e9"},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"choices":[{"index":1,"delta":{"content":"two"},"finish_reason":"length"}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}],"usage":null}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#,
        ];
        let mut fast = Builder::default();
        let mut general = Builder::default();
        for c in chunks {
            serde_json::from_str::<Obj<PlainObject>>(c)
                .unwrap_or_else(|e| panic!("{c}: {e}"))
                .0
                .apply(&mut fast);
            let v: Value = serde_json::from_str(c).unwrap();
            assert!(apply_object(&mut general, v.as_object().unwrap()));
        }
        assert_eq!(fast.finish(), general.finish());
        // Anything richer takes the general path.
        for c in [
            r#"{"choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[]}}]}"#,
            r#"{"error":{"message":"boom"},"choices":[]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":[{"type":"text","text":"x"}]}}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3.0}}"#,
            r#"[[]]"#,
            r#"{"choices":[],"usage":[1,2,3]}"#,
        ] {
            assert!(serde_json::from_str::<Obj<PlainObject>>(c).is_err(), "{c}");
        }
    }

    const SSE: &str = "text/event-stream";
    const JSON: &str = "application/json";
    const NDJSON: &str = "application/x-ndjson";

    /// An SSE body of `data:` events (then `[DONE]`).
    fn sse_of(events: &[Value]) -> String {
        let mut s: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
        s.push_str("data: [DONE]\n\n");
        s
    }

    /// An SSE body of Anthropic events, each with its `event:` line.
    fn named_sse_of(events: &[Value]) -> String {
        events
            .iter()
            .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
            .collect()
    }

    fn ndjson_of(lines: &[Value]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    fn chat_chunk(delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "qwen-demo",
            "system_fingerprint": "fp-1",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    }

    fn usage_chunk(p: u64, c: u64) -> Value {
        json!({
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "model": "qwen-demo",
            "choices": [],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
        })
    }

    const PIECES: [&str; 8] = [
        "Hello", ", ", "wörld", "! ", "日本", "語 ", "text", " done.",
    ];

    /// A realistic OpenAI chat stream: role chunk, pieces, a tool call,
    /// finish chunk, usage chunk, `[DONE]`.
    fn openai_stream() -> String {
        let mut events = vec![chat_chunk(
            json!({"role": "assistant", "content": ""}),
            None,
        )];
        for p in PIECES {
            events.push(chat_chunk(json!({ "content": p }), None));
        }
        events.push(chat_chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "lookup", "arguments": ""}}]}),
            None,
        ));
        for piece in ["{\"q\":", " \"caf", "é\"}"] {
            events.push(chat_chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                None,
            ));
        }
        events.push(chat_chunk(json!({}), Some("tool_calls")));
        events.push(usage_chunk(11, 9));
        sse_of(&events)
    }

    fn anthropic_stream() -> String {
        named_sse_of(&[
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
                "role": "assistant", "model": "claude-demo", "content": [], "stop_reason": null,
                "usage": {"input_tokens": 25, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "thinking", "thinking": ""}}),
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "Let me "}}),
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "think."}}),
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "signature_delta", "signature": "sig"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "text", "text": "Hi"}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "text_delta", "text": " there, "}}),
            json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "text_delta", "text": "friend."}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "content_block_start", "index": 2, "content_block":
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
            json!({"type": "content_block_delta", "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": ""}}),
            json!({"type": "content_block_delta", "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}}),
            json!({"type": "content_block_delta", "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
            json!({"type": "content_block_stop", "index": 2}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use",
                "stop_sequence": null}, "usage": {"output_tokens": 42}}),
            json!({"type": "message_stop"}),
        ])
    }

    // ---- framing ----------------------------------------------------------

    #[test]
    fn lines_end_at_lf_crlf_or_cr() {
        let got: Vec<(&str, bool)> = lines("a\nb\r\nc\rd\r\r\ne").collect();
        assert_eq!(
            got,
            [
                ("a", true),
                ("b", true),
                ("c", true),
                ("d", true),
                ("", true),
                ("e", false)
            ]
        );
        assert_eq!(lines("").count(), 0);
        assert_eq!(lines("x\r").collect::<Vec<_>>(), [("x", true)]);
        let cr_only = "data: x\r\r".repeat(20_000);
        assert_eq!(reassemble(SSE, cr_only.as_bytes(), b"").text.len(), 20_000);
    }

    // ---- content types ----------------------------------------------------

    #[test]
    fn format_by_content_type() {
        assert_eq!(Format::of("text/event-stream"), Format::Sse);
        assert_eq!(Format::of("Text/Event-Stream; charset=utf-8"), Format::Sse);
        assert_eq!(Format::of(" application/JSON ;charset=UTF-8"), Format::Json);
        assert_eq!(Format::of("application/problem+json"), Format::Json);
        assert_eq!(Format::of("application/x-ndjson"), Format::Ndjson);
        assert_eq!(Format::of("application/jsonl"), Format::Ndjson);
        assert_eq!(
            Format::of("application/ndjson; charset=utf-8"),
            Format::Ndjson
        );
        assert_eq!(Format::of("text/plain"), Format::Text);
        assert_eq!(Format::of(""), Format::Text);
        assert_eq!(Format::of(";;;"), Format::Text);
    }

    #[test]
    fn text_and_unknown_types_are_lossy_text() {
        let r = reassemble("text/plain; charset=utf-8", b"hello \xff world", b"ignored");
        assert_eq!(r.text, "hello \u{fffd} world");
        assert_eq!(r.usage, None);
        let body = br#"{"choices":[{"text":"x"}]}"#;
        assert_eq!(
            reassemble("", body, b"").text,
            String::from_utf8_lossy(body)
        );
        assert_eq!(reassemble("", b"", b""), Reassembled::default());
    }

    // ---- OpenAI streams ---------------------------------------------------

    #[test]
    fn openai_chat_stream_joins_pieces_and_reads_metadata() {
        let r = reassemble(SSE, openai_stream().as_bytes(), b"");
        assert_eq!(r.text, PIECES.concat());
        assert!(r.more_choices.is_empty());
        assert_eq!(
            r.tool_calls,
            vec![ToolCall {
                name: "lookup".into(),
                arguments: "{\"q\": \"café\"}".into()
            }]
        );
        assert_eq!(r.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(r.model.as_deref(), Some("qwen-demo"));
        assert_eq!(r.system_fingerprint.as_deref(), Some("fp-1"));
        assert_eq!(
            r.usage,
            Some(Usage {
                prompt_tokens: Some(11),
                completion_tokens: Some(9),
                total_tokens: Some(20)
            })
        );
        assert_eq!(r.error, None);
        assert!(r.reasoning.is_empty() && r.refusal.is_empty());
    }

    #[test]
    fn many_small_events_equal_the_joined_text() {
        let answer = "The quick brown fox — jumps over the lazy dog. 🦊 Ünïcödé!";
        let events: Vec<Value> = answer
            .chars()
            .map(|c| chat_chunk(json!({ "content": c.to_string() }), None))
            .chain([chat_chunk(json!({}), Some("stop"))])
            .collect();
        let r = reassemble(SSE, sse_of(&events).as_bytes(), b"");
        assert_eq!(r.text, answer);
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));
        assert_eq!(r.usage, None, "no include_usage, no usage");
    }

    #[test]
    fn finish_chunk_may_carry_text_flushed_by_the_masker() {
        let body = sse_of(&[
            chat_chunk(json!({"content": "Call "}), None),
            chat_chunk(json!({"content": "[PHONE]"}), Some("stop")),
        ]);
        let r = reassemble(SSE, body.as_bytes(), b"");
        assert_eq!(r.text, "Call [PHONE]");
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn completions_stream() {
        let chunk = |t: &str, f: Value| {
            json!({"object": "text_completion", "model": "m",
                "choices": [{"index": 0, "text": t, "logprobs": null, "finish_reason": f}]})
        };
        let body = sse_of(&[
            chunk("Once", Value::Null),
            chunk(" upon", Value::Null),
            chunk(" a time", Value::Null),
            chunk("", json!("length")),
        ]);
        let r = reassemble(SSE, body.as_bytes(), b"");
        assert_eq!(r.text, "Once upon a time");
        assert_eq!(r.finish_reason.as_deref(), Some("length"));
        assert_eq!(r.model.as_deref(), Some("m"));
    }

    #[test]
    fn multiple_choices_stream_by_index() {
        let chunk = |i: u64, t: &str, f: Value| json!({"choices": [{"index": i, "delta": {"content": t}, "finish_reason": f}]});
        let body = sse_of(&[
            chunk(1, "B1", Value::Null),
            chunk(0, "A1", Value::Null),
            chunk(2, "C1", Value::Null),
            chunk(0, " A2", Value::Null),
            chunk(1, " B2", json!("length")),
            chunk(2, " C2", json!("stop")),
            chunk(0, "", json!("stop")),
            json!({"choices": [
                {"index": 0, "delta": {"reasoning_content": "r0"}},
                {"index": 1, "delta": {"reasoning_content": "r1"}},
            ]}),
        ]);
        let r = reassemble(SSE, body.as_bytes(), b"");
        assert_eq!(r.text, "A1 A2");
        assert_eq!(
            r.more_choices,
            vec!["B1 B2".to_string(), "C1 C2".to_string()]
        );
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));
        assert_eq!(r.reasoning, "r0\n\nr1");
    }

    #[test]
    fn choice_index_defaults_to_position() {
        let body = sse_of(&[json!({"choices": [
            {"delta": {"content": "a"}},
            {"delta": {"content": "b"}},
        ]})]);
        let r = reassemble(SSE, body.as_bytes(), b"");
        assert_eq!(
            (r.text.as_str(), r.more_choices),
            ("a", vec!["b".to_string()])
        );
    }

    #[test]
    fn tool_call_arguments_assembled_across_chunks() {
        let call = |i: u64, name: Option<&str>, args: &str| {
            let mut f = json!({ "arguments": args });
            if let Some(n) = name {
                f["name"] = json!(n);
            }
            chat_chunk(json!({"tool_calls": [{"index": i, "function": f}]}), None)
        };
        let body = sse_of(&[
            chat_chunk(json!({"role": "assistant", "content": null}), None),
            call(0, Some("get_weather"), ""),
            call(0, None, "{\"loc"),
            call(1, Some("get_time"), "{\"tz\":"),
            call(0, None, "ation\":\"Oslo\"}"),
            call(1, None, "\"CET\"}"),
            // The masker's synthesised chunk: arguments only, no name.
            json!({"choices": [{"index": 0, "delta": {"tool_calls":
                [{"index": 1, "function": {"arguments": ""}}]}, "finish_reason": null}]}),
            chat_chunk(json!({}), Some("tool_calls")),
        ]);
        let r = reassemble(SSE, body.as_bytes(), b"");
        assert_eq!(r.text, "");
        assert_eq!(
            r.tool_calls,
            vec![
                ToolCall {
                    name: "get_weather".into(),
                    arguments: "{\"location\":\"Oslo\"}".into()
                },
                ToolCall {
                    name: "get_time".into(),
                    arguments: "{\"tz\":\"CET\"}".into()
                },
            ]
        );
        assert_eq!(r.finish_reason.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn reasoning_and_refusal_streams() {
        let body = sse_of(&[
            chat_chunk(json!({"reasoning_content": "Think"}), None),
            chat_chunk(json!({"reasoning_content": "ing..."}), None),
            // Both names with the same text: counted once.
            chat_chunk(
                json!({"reasoning_content": " ok", "reasoning": " ok"}),
                None,
            ),
            chat_chunk(json!({"reasoning": " more"}), None),
            chat_chunk(json!({"refusal": "I can't "}), None),
            chat_chunk(json!({"refusal": "help with that."}), Some("stop")),
        ]);
        let r = reassemble(SSE, body.as_bytes(), b"");
        assert_eq!(r.reasoning, "Thinking... ok more");
        assert_eq!(r.refusal, "I can't help with that.");
        assert_eq!(r.text, "");
    }

    #[test]
    fn crlf_separators_comments_and_multiline_data() {
        let a = chat_chunk(json!({"content": "one "}), None);
        let b = chat_chunk(json!({"content": "two"}), Some("stop"));
        let body = format!(
            ": keep-alive\r\n\r\nevent: message\r\nid: 1\r\ndata: {a}\r\n\r\ndata:{b}\r\n\r\ndata: [DONE]\r\n\r\n"
        );
        let r = reassemble(SSE, body.as_bytes(), b"");
        assert_eq!(r.text, "one two");
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));
        // One JSON object over two data lines, then lone-CR line ends.
        let split = "data: {\"choices\":[{\"delta\":\n\
                     data: {\"content\":\"joined\"}}]}\n\n\
                     data: {\"choices\":[{\"delta\":{\"content\":\"!\"}}]}\r\r";
        assert_eq!(reassemble(SSE, split.as_bytes(), b"").text, "joined!");
    }

    #[test]
    fn plain_and_unknown_data_is_appended() {
        let body = "data: Hello\n\ndata:  world\n\ndata: line1\ndata: line2\n\ndata: 42\n\n";
        assert_eq!(
            reassemble(SSE, body.as_bytes(), b"").text,
            "Hello worldline1\nline242"
        );
        let body = "data: {\"token\":{\"text\":\"a\"}}\n\ndata: {\"token\":{\"text\":\"b\"}}\n\n";
        assert_eq!(
            reassemble(SSE, body.as_bytes(), b"").text,
            "{\"token\":{\"text\":\"a\"}}\n{\"token\":{\"text\":\"b\"}}"
        );
    }

    #[test]
    fn incomplete_final_event_counts_only_when_its_json_is_whole() {
        let a = chat_chunk(json!({"content": "kept"}), None);
        let whole = format!("data: {a}\n\ndata: {a}");
        assert_eq!(reassemble(SSE, whole.as_bytes(), b"").text, "keptkept");
        let cut = format!("data: {a}\n\ndata: {{\"choices\":[{{\"delta\":{{\"content\":\"lo");
        assert_eq!(reassemble(SSE, cut.as_bytes(), b"").text, "kept");
        assert_eq!(reassemble(SSE, cut.as_bytes(), b"x").text, "kept");
        // Plain text: kept when the stream ended there, not when capture was cut.
        assert_eq!(reassemble(SSE, b"data: a\n\ndata: b", b"").text, "ab");
        assert_eq!(reassemble(SSE, b"data: a\n\ndata: b", b"\n\n").text, "a");
    }

    #[test]
    fn stream_errors() {
        let body = format!(
            "{}event: error\ndata: {}\n\n",
            named_sse_of(&[json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "par"}})]),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        );
        let r = reassemble(SSE, body.as_bytes(), b"");
        assert_eq!(
            (r.text.as_str(), r.error.as_deref()),
            ("par", Some("Overloaded"))
        );
        let openai = sse_of(&[json!({"error": {"message": "boom", "code": 500}})]);
        assert_eq!(
            reassemble(SSE, openai.as_bytes(), b"").error.as_deref(),
            Some("boom")
        );
        // A JSON error body sent with the stream's content type.
        let r = reassemble(SSE, br#"{"error":{"message":"no such model"}}"#, b"");
        assert_eq!(r.error.as_deref(), Some("no such model"));
    }

    // ---- Anthropic streams ------------------------------------------------

    #[test]
    fn anthropic_stream_text_thinking_tools_usage() {
        let r = reassemble(SSE, anthropic_stream().as_bytes(), b"");
        assert_eq!(r.text, "Hi there, friend.");
        assert_eq!(r.reasoning, "Let me think.");
        assert_eq!(
            r.tool_calls,
            vec![ToolCall {
                name: "get_weather".into(),
                arguments: "{\"city\": \"Paris\"}".into()
            }]
        );
        assert_eq!(r.finish_reason.as_deref(), Some("tool_use"));
        assert_eq!(r.model.as_deref(), Some("claude-demo"));
        assert_eq!(
            r.usage,
            Some(Usage {
                prompt_tokens: Some(25),
                completion_tokens: Some(42),
                total_tokens: Some(67)
            })
        );
        assert!(r.more_choices.is_empty());
    }

    // ---- overflowed captures ----------------------------------------------

    #[test]
    fn tail_only_usage_after_overflow() {
        let full = openai_stream();
        let usage_at = full
            .find("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\"")
            .unwrap();
        // The capture stopped mid-way through the third piece; the tail
        // starts in the middle of the finish chunk.
        let body_end = full.find("wörld").unwrap() + 2;
        let tail_start = usage_at - 30;
        let r = reassemble(
            SSE,
            &full.as_bytes()[..body_end],
            &full.as_bytes()[tail_start..],
        );
        assert_eq!(r.text, "Hello, ");
        assert!(r.tool_calls.is_empty(), "tail content is not text");
        assert_eq!(r.usage.as_ref().and_then(|u| u.total_tokens), Some(20));
        assert_eq!(r.model.as_deref(), Some("qwen-demo"));
        // The finish chunk was cut by the tail's start: no finish reason.
        assert_eq!(r.finish_reason, None);
        let finish_at = full.find("\"finish_reason\":\"tool_calls\"").unwrap();
        let earlier = full[..finish_at].rfind("data: ").unwrap() - 5;
        let r = reassemble(
            SSE,
            &full.as_bytes()[..body_end],
            &full.as_bytes()[earlier..],
        );
        assert_eq!(r.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(r.text, "Hello, ");
    }

    #[test]
    fn anthropic_tail_has_stop_reason_and_output_tokens() {
        let full = anthropic_stream();
        let body_end = full.find("friend").unwrap();
        let tail_start = full.find("Paris").unwrap();
        let r = reassemble(
            SSE,
            &full.as_bytes()[..body_end],
            &full.as_bytes()[tail_start..],
        );
        assert_eq!(r.text, "Hi there, ");
        assert_eq!(r.finish_reason.as_deref(), Some("tool_use"));
        let u = r.usage.unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (Some(25), Some(42), Some(67))
        );
    }

    #[test]
    fn tail_starting_on_a_boundary_or_with_crlf() {
        let usage = usage_chunk(3, 4);
        for tail in [
            format!("data: {usage}\n\ndata: [DONE]\n\n"),
            format!("\n\ndata: {usage}\n\n"),
            format!("ent\r\n\r\ndata: {usage}\r\n\r\n"),
            format!("data: {{\"x\r\n\r\ndata: {usage}"),
        ] {
            let r = reassemble(
                SSE,
                b"data: {\"choices\":[{\"delta\":{\"content\":\"a",
                tail.as_bytes(),
            );
            assert_eq!(r.usage.and_then(|u| u.total_tokens), Some(7), "{tail:?}");
        }
    }

    // ---- whole JSON bodies ------------------------------------------------

    #[test]
    fn openai_chat_completion_json() {
        let body = json!({
            "id": "chatcmpl-9", "object": "chat.completion", "model": "gpt-x",
            "system_fingerprint": "fp_abc",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Answer",
                    "reasoning_content": "Because", "refusal": null,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
                    ]},
                 "finish_reason": "tool_calls"},
                {"index": 1, "message": {"role": "assistant", "content": "Second", "refusal": "no"},
                 "finish_reason": "stop"},
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        });
        let r = reassemble(JSON, body.to_string().as_bytes(), b"");
        assert_eq!(r.text, "Answer");
        assert_eq!(r.more_choices, vec!["Second".to_string()]);
        assert_eq!(r.reasoning, "Because");
        assert_eq!(r.refusal, "no");
        assert_eq!(r.tool_calls.len(), 2);
        assert_eq!(r.tool_calls[0].name, "f");
        assert_eq!(r.tool_calls[0].arguments, "{\"a\":1}");
        assert_eq!(r.tool_calls[1].name, "g");
        assert_eq!(r.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(r.model.as_deref(), Some("gpt-x"));
        assert_eq!(r.system_fingerprint.as_deref(), Some("fp_abc"));
        assert_eq!(r.usage.unwrap().total_tokens, Some(12));
    }

    #[test]
    fn openai_variants_json() {
        let legacy = json!({"object": "text_completion",
            "choices": [{"index": 0, "text": "done", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 3}});
        let r = reassemble(
            "application/json; charset=utf-8",
            legacy.to_string().as_bytes(),
            b"",
        );
        assert_eq!(r.text, "done");
        assert_eq!(r.finish_reason.as_deref(), Some("length"));
        assert_eq!(r.usage.unwrap().total_tokens, Some(5), "total filled in");
        let parts = json!({"choices": [{"message": {"content": [
            {"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            "function_call": {"name": "old", "arguments": "{}"}}}]});
        let r = reassemble(JSON, parts.to_string().as_bytes(), b"");
        assert_eq!(r.text, "ab");
        assert_eq!(r.tool_calls[0].name, "old");
        // A reported total is kept as is.
        let odd = json!({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 5}});
        let r = reassemble(JSON, odd.to_string().as_bytes(), b"");
        assert_eq!(r.usage.unwrap().total_tokens, Some(5));
    }

    #[test]
    fn anthropic_message_json() {
        let body = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-demo",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Sunny "},
                {"type": "tool_use", "id": "t1", "name": "weather",
                 "input": {"city": "Rome", "days": [1, 2]}},
                {"type": "text", "text": "today."},
            ],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 4},
        });
        let r = reassemble(JSON, body.to_string().as_bytes(), b"");
        assert_eq!(r.text, "Sunny today.");
        assert_eq!(r.reasoning, "hmm");
        assert_eq!(
            r.tool_calls,
            vec![ToolCall {
                name: "weather".into(),
                arguments: r#"{"city":"Rome","days":[1,2]}"#.into()
            }]
        );
        assert_eq!(r.finish_reason.as_deref(), Some("end_turn"));
        assert_eq!(
            r.usage,
            Some(Usage {
                prompt_tokens: Some(10),
                completion_tokens: Some(4),
                total_tokens: Some(14)
            })
        );
        assert_eq!(r.model.as_deref(), Some("claude-demo"));
    }

    #[test]
    fn ollama_json() {
        let chat = json!({"model": "llama3", "created_at": "2024-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": "Hi!", "thinking": "greet",
                "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
            "done": true, "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 2});
        let r = reassemble(JSON, chat.to_string().as_bytes(), b"");
        assert_eq!(r.text, "Hi!");
        assert_eq!(r.reasoning, "greet");
        assert_eq!(r.tool_calls[0].arguments, "{\"x\":1}");
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));
        assert_eq!(r.model.as_deref(), Some("llama3"));
        assert_eq!(r.usage.unwrap().total_tokens, Some(5));
        let gen = json!({"model": "llama3", "response": "Generated.", "done": true,
            "done_reason": "length", "eval_count": 9});
        let r = reassemble(JSON, gen.to_string().as_bytes(), b"");
        assert_eq!(r.text, "Generated.");
        assert_eq!(
            r.usage,
            Some(Usage {
                completion_tokens: Some(9),
                ..Default::default()
            })
        );
    }

    #[test]
    fn error_objects_json() {
        for (body, msg) in [
            (
                json!({"error": {"message": "bad key", "type": "auth"}}),
                "bad key",
            ),
            (
                json!({"error": "model 'x' not found"}),
                "model 'x' not found",
            ),
            (
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
                "Overloaded",
            ),
            (json!({"error": {"code": 7}}), "{\"code\":7}"),
        ] {
            let r = reassemble(JSON, body.to_string().as_bytes(), b"");
            assert_eq!(r.error.as_deref(), Some(msg));
            assert_eq!(r.text, "");
        }
    }

    #[test]
    fn unknown_or_unparsable_json_is_text() {
        for body in [
            r#"{"data": [{"id": "m1"}]}"#,
            r#"[1, 2, 3]"#,
            r#""just a string""#,
            "not json at all \u{e9}",
            r#"{"choices": [{"message": {"content": "cut"#,
        ] {
            assert_eq!(reassemble(JSON, body.as_bytes(), b"").text, body);
        }
        let r = reassemble(JSON, b"{\"a\":\xff}", b"");
        assert_eq!(r.text, "{\"a\":\u{fffd}}");
    }

    #[test]
    fn truncated_json_takes_metadata_from_the_tail() {
        let body = json!({
            "id": "x", "object": "chat.completion", "model": "big-model",
            "choices": [{"index": 0, "message": {"role": "assistant",
                "content": "say \"usage\": {} and \"model\": \"fake\" ".repeat(50)},
                "finish_reason": "length"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 4000},
        })
        .to_string();
        let bytes = body.as_bytes();
        let (head, tail) = (&bytes[..200], &bytes[bytes.len() - 150..]);
        let r = reassemble(JSON, head, tail);
        assert_eq!(r.text, String::from_utf8_lossy(head));
        assert_eq!(r.model.as_deref(), Some("big-model"));
        assert_eq!(r.finish_reason.as_deref(), Some("length"));
        assert_eq!(
            r.usage,
            Some(Usage {
                prompt_tokens: Some(100),
                completion_tokens: Some(4000),
                total_tokens: Some(4100)
            })
        );
        // Anthropic and Ollama names.
        let r = reassemble(
            JSON,
            b"{\"content\":[{\"type\":\"te",
            br#"xt"}],"stop_reason":"max_tokens","usage":{"input_tokens":1,"output_tokens":2}}"#,
        );
        assert_eq!(r.finish_reason.as_deref(), Some("max_tokens"));
        assert_eq!(r.usage.unwrap().total_tokens, Some(3));
        let r = reassemble(
            JSON,
            b"{\"response\":\"a",
            br#"","done":true,"done_reason":"stop","prompt_eval_count":4,"eval_count":6}"#,
        );
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));
        assert_eq!(r.usage.unwrap().total_tokens, Some(10));
    }

    // ---- NDJSON -----------------------------------------------------------

    fn ollama_chat_lines() -> Vec<Value> {
        let mut lines: Vec<Value> = ["The ", "sky ", "is ", "blue."]
            .iter()
            .map(|p| {
                json!({"model": "llama3", "created_at": "t",
                "message": {"role": "assistant", "content": p}, "done": false})
            })
            .collect();
        lines.push(json!({"model": "llama3", "created_at": "t",
            "message": {"role": "assistant", "content": ""}, "done": true,
            "done_reason": "stop", "total_duration": 5, "prompt_eval_count": 12, "eval_count": 4}));
        lines
    }

    #[test]
    fn ollama_chat_stream() {
        let body = ndjson_of(&ollama_chat_lines());
        let r = reassemble(NDJSON, body.as_bytes(), b"");
        assert_eq!(r.text, "The sky is blue.");
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));
        assert_eq!(r.model.as_deref(), Some("llama3"));
        assert_eq!(
            r.usage,
            Some(Usage {
                prompt_tokens: Some(12),
                completion_tokens: Some(4),
                total_tokens: Some(16)
            })
        );
    }

    #[test]
    fn ollama_generate_stream_with_thinking_and_crlf() {
        let lines = [
            json!({"model": "qwen3", "response": "", "thinking": "Hmm, ", "done": false}),
            json!({"model": "qwen3", "response": "", "thinking": "ok.", "done": false}),
            json!({"model": "qwen3", "response": "Forty", "done": false}),
            json!({"model": "qwen3", "response": "-two", "done": false}),
            json!({"model": "qwen3", "response": "", "done": true, "done_reason": "length",
                "eval_count": 2}),
        ];
        let body: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
        let r = reassemble("application/jsonl", body.as_bytes(), b"");
        assert_eq!(r.text, "Forty-two");
        assert_eq!(r.reasoning, "Hmm, ok.");
        assert_eq!(r.finish_reason.as_deref(), Some("length"));
    }

    #[test]
    fn ndjson_tool_calls_errors_and_other_lines() {
        let body = ndjson_of(&[
            json!({"model": "m", "message": {"role": "assistant", "content": "",
                "tool_calls": [{"function": {"name": "a", "arguments": {"k": "v"}}}]}, "done": false}),
            json!({"model": "m", "message": {"role": "assistant", "content": "",
                "tool_calls": [{"function": {"name": "b", "arguments": {}}}]}, "done": false}),
            json!({"error": "out of memory"}),
        ]);
        let r = reassemble(NDJSON, body.as_bytes(), b"");
        let names: Vec<&str> = r.tool_calls.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(r.tool_calls[0].arguments, "{\"k\":\"v\"}");
        assert_eq!(r.error.as_deref(), Some("out of memory"));
        let other = "{\"id\":1,\"v\":\"x\"}\n\nplain line\n[1,2]\n";
        assert_eq!(
            reassemble("application/ndjson", other.as_bytes(), b"").text,
            "{\"id\":1,\"v\":\"x\"}\nplain line\n[1,2]"
        );
    }

    #[test]
    fn ndjson_partial_last_line_and_tail() {
        let full = ndjson_of(&ollama_chat_lines());
        let bytes = full.as_bytes();
        let cut = full.find("is ").unwrap() + 1;
        let r = reassemble(NDJSON, &bytes[..cut], b"");
        assert_eq!(r.text, "The sky ", "truncated JSON line dropped");
        assert_eq!(r.usage, None);
        let tail_start = full.find("blue").unwrap();
        let r = reassemble(NDJSON, &bytes[..cut], &bytes[tail_start..]);
        assert_eq!(r.text, "The sky ");
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));
        assert_eq!(r.usage.unwrap().total_tokens, Some(16));
        // Without the final newline the last line is still whole.
        let r = reassemble(NDJSON, full.trim_end().as_bytes(), b"");
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));
    }

    // ---- robustness -------------------------------------------------------

    #[test]
    fn every_prefix_of_a_stream_is_safe_and_monotonic() {
        let openai = openai_stream();
        let anthropic = anthropic_stream();
        for (full, usage_marker) in [
            (
                &openai,
                "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\"",
            ),
            (&anthropic, "event: message_delta"),
        ] {
            let bytes = full.as_bytes();
            let whole = reassemble(SSE, bytes, b"");
            let usage_at = full.find(usage_marker).unwrap();
            for i in 0..=bytes.len() {
                let part = reassemble(SSE, &bytes[..i], b"");
                assert!(
                    whole.text.starts_with(&part.text),
                    "prefix {i}: {:?}",
                    part.text
                );
                let with_tail = reassemble(SSE, &bytes[..i], &bytes[i..]);
                assert!(whole.text.starts_with(&with_tail.text), "prefix {i}");
                for (w, p) in whole.tool_calls.iter().zip(&with_tail.tool_calls) {
                    assert!(w.arguments.starts_with(&p.arguments), "prefix {i}");
                }
                if i <= usage_at {
                    let u = with_tail.usage.as_ref().and_then(|u| u.completion_tokens);
                    assert_eq!(u, whole.usage.as_ref().unwrap().completion_tokens, "at {i}");
                }
            }
        }
    }

    #[test]
    fn every_prefix_of_ndjson_and_json_is_safe() {
        let nd = ndjson_of(&ollama_chat_lines());
        let js = json!({"choices": [{"message": {"content": "héllo", "tool_calls":
            [{"function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2}, "model": "m"})
        .to_string();
        for (ct, full) in [(NDJSON, nd), (JSON, js)] {
            let b = full.as_bytes();
            for i in 0..=b.len() {
                reassemble(ct, &b[..i], b"");
                reassemble(ct, &b[..i], &b[i..]);
                reassemble(SSE, &b[..i], &b[i..]);
            }
        }
    }

    #[test]
    fn wrong_types_and_huge_numbers_do_not_panic() {
        let events = [
            json!({"choices": "nope"}),
            json!({"choices": [1, null, {"index": -1, "delta": "x"}, {"index": 1e300, "delta": {"content": 5}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": "a", "function": "f"}, 7]}}]}),
            json!({"choices": [{"delta": {"tool_calls": {"index": 0}}}], "usage": "lots"}),
            json!({"usage": {"prompt_tokens": 1e30, "completion_tokens": -3, "total_tokens": "9"}}),
            json!({"type": "content_block_delta", "index": "z", "delta": 3}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "name": 5, "input": [1]}}),
            json!({"type": "message_start", "message": "m"}),
            json!({"type": "message_delta", "delta": null, "usage": {"output_tokens": 1.5}}),
            json!({"type": "error"}),
            json!({"message": 1, "done": "yes", "response": null}),
            json!({"model": ["x"], "system_fingerprint": {}, "choices": []}),
        ];
        let body = sse_of(&events);
        let r = reassemble(SSE, body.as_bytes(), b"");
        assert_eq!(r.error.as_deref(), Some("error"));
        assert_eq!(r.model, None);
        assert_eq!(r.usage, None, "no count was a valid integer");
        let huge = br#"{"choices":[],"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":1,"big":123456789012345678901234567890}}"#;
        let r = reassemble(JSON, huge, b"");
        let u = r.usage.unwrap();
        assert_eq!(u.prompt_tokens, Some(u64::MAX));
        assert_eq!(u.total_tokens, None, "overflowing sum is left out");
        let r = reassemble(
            JSON,
            br#"{"choices":[],"usage":{"prompt_tokens":1e400}}"#,
            b"",
        );
        assert_eq!(r.usage, None);
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        for ct in [SSE, JSON, NDJSON] {
            reassemble(ct, deep.as_bytes(), deep.as_bytes());
            reassemble(ct, format!("data: {deep}\n\n").as_bytes(), b"");
        }
    }

    #[test]
    fn garbage_never_panics() {
        const TOKENS: [&[u8]; 22] = [
            b"data:",
            b"data: ",
            b"event: x",
            b"\n",
            b"\r",
            b"\n\n",
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"choices\"",
            b"\"usage\"",
            b":",
            b",",
            b"\"",
            b"\\",
            b"\xff",
            b"\xe6\x97",
            b"[DONE]",
            b"\"type\":\"content_block_delta\"",
            b"0",
            b"\"index\"",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2_000 {
            let len = next() % 60;
            let mut buf = Vec::new();
            for _ in 0..len {
                buf.extend_from_slice(TOKENS[(next() % TOKENS.len() as u64) as usize]);
            }
            let split = (next() as usize) % (buf.len() + 1);
            for ct in [SSE, JSON, NDJSON, "text/plain"] {
                reassemble(ct, &buf, b"");
                reassemble(ct, &buf[..split], &buf[split..]);
            }
        }
    }

    #[test]
    fn usage_and_tool_calls_serialise_compactly() {
        let u = Usage {
            prompt_tokens: Some(1),
            completion_tokens: None,
            total_tokens: Some(1),
        };
        assert_eq!(
            serde_json::to_value(&u).unwrap(),
            json!({"prompt_tokens": 1, "total_tokens": 1})
        );
        let t = ToolCall {
            name: "f".into(),
            arguments: "{}".into(),
        };
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            json!({"name": "f", "arguments": "{}"})
        );
    }
}
