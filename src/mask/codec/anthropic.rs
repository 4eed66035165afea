//! Anthropic Messages stream events: `text_delta.text`,
//! `input_json_delta.partial_json` and `thinking_delta.thinking` are streams
//! per content block; a block's streams are flushed, as an extra
//! `content_block_delta`, just before its `content_block_stop`.

use super::fields::*;
use crate::mask::stream::MaskRules;
use serde_json::{Map, Value};

fn streamed(k: &str) -> bool {
    matches!(k, "text" | "partial_json" | "thinking")
}

/// Masks one event; returns events to emit *before* it (flushed text).
pub fn process(
    obj: &mut Map<String, Value>,
    streams: &mut Streams,
    rules: &MaskRules,
    counts: &mut [u32],
) -> Vec<Value> {
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let index = obj.get("index").and_then(Value::as_u64).unwrap_or(0);
    let mut before = Vec::new();
    match kind.as_str() {
        "content_block_start" | "content_block_delta" => {
            let slot = if kind == "content_block_start" {
                "content_block"
            } else {
                "delta"
            };
            if let Some(Value::Object(d)) = obj.get_mut(slot) {
                for (name, field) in [
                    ("text", Field::Text),
                    ("partial_json", Field::PartialJson),
                    ("thinking", Field::Thinking),
                ] {
                    if let Some(Value::String(s)) = d.get_mut(name) {
                        *s = streams.push(StreamKey::new(index, field), s, rules, counts);
                    }
                }
            }
            // Other strings in the block (e.g. citations) are masked whole.
            if let Some(v) = obj.get_mut(slot) {
                mask_leaves(v, rules, counts, &streamed);
            }
        }
        "content_block_stop" => {
            before = flush_events(streams, rules, counts, |k| k.choice == index);
        }
        "message_stop" => {
            before = flush_events(streams, rules, counts, |k| {
                k.field != Field::Path && k.choice < u64::MAX - 1
            });
        }
        _ => {
            for (k, v) in obj.iter_mut() {
                if !STRUCTURAL.contains(&k.as_str()) {
                    mask_leaves(v, rules, counts, &|_| false);
                }
            }
        }
    }
    before
}

/// `content_block_delta` events carrying the remaining text of the picked streams.
pub fn flush_events(
    streams: &mut Streams,
    rules: &MaskRules,
    counts: &mut [u32],
    pick: impl Fn(&StreamKey) -> bool,
) -> Vec<Value> {
    streams
        .flush(rules, counts, pick)
        .into_iter()
        .map(|(key, text)| {
            let delta = match key.field {
                Field::PartialJson => {
                    serde_json::json!({"type": "input_json_delta", "partial_json": text})
                }
                Field::Thinking => serde_json::json!({"type": "thinking_delta", "thinking": text}),
                _ => serde_json::json!({"type": "text_delta", "text": text}),
            };
            serde_json::json!({"type": "content_block_delta", "index": key.choice, "delta": delta})
        })
        .collect()
}
