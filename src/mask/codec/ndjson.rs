//! Newline-delimited JSON (Ollama `/api/chat` and `/api/generate`):
//! `message.content`, `message.thinking`, `response` and `thinking` are
//! streams; the line with `"done": true` receives their remaining text.

use super::fields::*;
use super::frames::Framer;
use super::openai::object_at;
use super::MaskError;
use crate::mask::stream::MaskRules;
use serde_json::{Map, Value};

#[derive(Default)]
pub struct NdjsonCodec {
    framer: Framer,
    streams: Streams,
    /// Last line seen, as a template for a synthesised final line.
    template: Option<Map<String, Value>>,
}

const STREAMED: [(&str, Field); 2] = [("response", Field::Text), ("thinking", Field::Thinking)];
const MESSAGE_STREAMED: [(&str, Field); 2] =
    [("content", Field::Content), ("thinking", Field::Thinking)];

fn streamed(k: &str) -> bool {
    matches!(k, "content" | "thinking" | "response")
}

impl NdjsonCodec {
    /// A codec refusing events/lines longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        NdjsonCodec {
            framer: Framer::new(limit, 0, line_end),
            ..Default::default()
        }
    }

    pub fn feed(
        &mut self,
        chunk: &[u8],
        rules: &MaskRules,
        counts: &mut [u32],
        out: &mut Vec<u8>,
    ) -> Result<(), MaskError> {
        for line in self.framer.feed(chunk)? {
            self.line(&line, rules, counts, out);
            out.push(b'\n');
        }
        Ok(())
    }

    pub fn finish(&mut self, rules: &MaskRules, counts: &mut [u32], out: &mut Vec<u8>) {
        let rest = self.framer.take_rest();
        if !rest.iter().all(u8::is_ascii_whitespace) {
            self.line(&rest, rules, counts, out);
            out.push(b'\n');
        }
        let left = self.streams.flush(rules, counts, |_| true);
        if !left.is_empty() {
            // A fresh line in the shape of the last one: same model and
            // timestamp, empty text fields, which `put` then fills.
            let template = self.template.clone().unwrap_or_default();
            let mut obj = Map::new();
            for key in ["model", "created_at"] {
                if let Some(v) = template.get(key) {
                    obj.insert(key.into(), v.clone());
                }
            }
            if template.contains_key("message") || left.iter().any(|(k, _)| k.choice == 1) {
                obj.insert(
                    "message".into(),
                    serde_json::json!({"role": "assistant", "content": ""}),
                );
            }
            obj.insert("done".into(), Value::Bool(false));
            put(&mut obj, left);
            out.extend_from_slice(&serde_json::to_vec(&Value::Object(obj)).expect("serialises"));
            out.push(b'\n');
        }
    }

    pub fn overflows(&self) -> u32 {
        self.streams.overflows()
    }

    fn line(&mut self, raw: &[u8], rules: &MaskRules, counts: &mut [u32], out: &mut Vec<u8>) {
        let trimmed = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(trimmed) else {
            if !trimmed.is_empty() {
                out.extend_from_slice(
                    rules
                        .mask_all(&String::from_utf8_lossy(trimmed), counts)
                        .as_bytes(),
                );
            }
            return;
        };
        for (name, field) in STREAMED {
            if let Some(Value::String(s)) = obj.get_mut(name) {
                *s = self
                    .streams
                    .push(StreamKey::new(0, field), s, rules, counts);
            }
        }
        if let Some(Value::Object(m)) = obj.get_mut("message") {
            for (name, field) in MESSAGE_STREAMED {
                if let Some(Value::String(s)) = m.get_mut(name) {
                    *s = self
                        .streams
                        .push(StreamKey::new(1, field), s, rules, counts);
                }
            }
        }
        for (k, v) in obj.iter_mut() {
            if !STRUCTURAL.contains(&k.as_str()) && !streamed(k) {
                mask_leaves(v, rules, counts, &streamed);
            }
        }
        if obj.get("done") == Some(&Value::Bool(true)) {
            let left = self.streams.flush(rules, counts, |_| true);
            put(&mut obj, left);
        } else {
            self.template = Some(obj.clone());
        }
        out.extend_from_slice(&serde_json::to_vec(&Value::Object(obj)).expect("serialises"));
    }
}

fn line_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    buf[from..]
        .iter()
        .position(|b| *b == b'\n')
        .map(|i| (from + i, from + i + 1))
}

/// Appends streams' remaining text to the fields they came from.
fn put(obj: &mut Map<String, Value>, left: Vec<(StreamKey, String)>) {
    for (key, text) in left {
        if key.choice == 1 {
            let name = if key.field == Field::Thinking {
                "thinking"
            } else {
                "content"
            };
            append_str(object_at(obj, "message"), name, &text);
        } else {
            let name = if key.field == Field::Thinking {
                "thinking"
            } else {
                "response"
            };
            append_str(obj, name, &text);
        }
    }
}
