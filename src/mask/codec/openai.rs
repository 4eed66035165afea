//! OpenAI chat-completions and completions objects, streamed (`delta`) or
//! whole (`message`): every text field a client reads goes through a stream
//! (`content`, `reasoning_content`, `reasoning`, `refusal`, tool-call
//! `arguments`, completions `text`, logprob tokens); other strings are masked
//! as whole values. A choice's streams are flushed into the event that
//! carries its `finish_reason`.

use super::fields::*;
use crate::mask::stream::MaskRules;
use serde_json::{Map, Value};

pub(super) const TEXT_FIELDS: [(&str, Field); 4] = [
    ("content", Field::Content),
    ("reasoning_content", Field::ReasoningContent),
    ("reasoning", Field::Reasoning),
    ("refusal", Field::Refusal),
];

/// Sub-stream ids for logprob token streams.
const LP_CONTENT: u64 = 0;
const LP_REFUSAL: u64 = 1;
const LP_LEGACY: u64 = 2;

/// Masks one OpenAI object (a stream chunk or a whole response). With
/// `whole`, every stream is flushed at the end of its choice.
pub fn process(
    obj: &mut Map<String, Value>,
    streams: &mut Streams,
    rules: &MaskRules,
    counts: &mut [u32],
    whole: bool,
) {
    match obj.get_mut("choices") {
        Some(Value::Array(choices)) => {
            for (pos, choice) in choices.iter_mut().enumerate() {
                match choice {
                    Value::Object(choice) => {
                        process_choice(choice, pos as u64, streams, rules, counts, whole)
                    }
                    // Not the shape a client expects, but it reads it: masked whole.
                    other => mask_leaves(other, rules, counts, &|_| false),
                }
            }
        }
        Some(other) => mask_leaves(other, rules, counts, &|_| false),
        None => {}
    }
    for (k, v) in obj.iter_mut() {
        if k != "choices" && !STRUCTURAL.contains(&k.as_str()) {
            mask_leaves(v, rules, counts, &|_| false);
        }
    }
}

fn process_choice(
    choice: &mut Map<String, Value>,
    pos: u64,
    streams: &mut Streams,
    rules: &MaskRules,
    counts: &mut [u32],
    whole: bool,
) {
    let idx = choice.get("index").and_then(Value::as_u64).unwrap_or(pos);
    let container = if choice.contains_key("message") {
        "message"
    } else {
        "delta"
    };
    if let Some(Value::Object(c)) = choice.get_mut(container) {
        for (name, field) in TEXT_FIELDS {
            if let Some(Value::String(s)) = c.get_mut(name) {
                *s = streams.push_field(StreamKey::new(idx, field), s, rules, counts, whole);
            }
        }
        if let Some(Value::Array(calls)) = c.get_mut("tool_calls") {
            for (tpos, call) in calls.iter_mut().enumerate() {
                let tidx = call
                    .get("index")
                    .and_then(Value::as_u64)
                    .unwrap_or(tpos as u64);
                if let Some(Value::String(a)) = call.pointer_mut("/function/arguments") {
                    let key = StreamKey {
                        choice: idx,
                        field: Field::ToolArguments,
                        sub: tidx,
                    };
                    *a = streams.push_field(key, a, rules, counts, whole);
                }
            }
        }
        mask_leaves_except_streamed(c, rules, counts);
    }
    if let Some(Value::String(t)) = choice.get_mut("text") {
        *t = streams.push_field(StreamKey::new(idx, Field::Text), t, rules, counts, whole);
    }
    if let Some(Value::Object(lp)) = choice.get_mut("logprobs") {
        let key = |sub| StreamKey {
            choice: idx,
            field: Field::Tokens,
            sub,
        };
        for (name, v) in lp.iter_mut() {
            match (name.as_str(), v) {
                ("content", Value::Array(entries)) => {
                    mask_logprob_entries(entries, streams, key(LP_CONTENT), rules, counts)
                }
                ("refusal", Value::Array(entries)) => {
                    mask_logprob_entries(entries, streams, key(LP_REFUSAL), rules, counts)
                }
                ("tokens", Value::Array(tokens)) => {
                    for t in tokens.iter_mut() {
                        match t {
                            Value::String(s) => *s = streams.push(key(LP_LEGACY), s, rules, counts),
                            other => mask_leaves(other, rules, counts, &|_| false),
                        }
                    }
                }
                ("top_logprobs", Value::Array(tops)) => {
                    for top in tops.iter_mut() {
                        let Value::Object(m) = top else {
                            mask_leaves(top, rules, counts, &|_| false);
                            continue;
                        };
                        // Token alternatives are the keys.
                        let masked: Map<String, Value> = std::mem::take(m)
                            .into_iter()
                            .map(|(k, mut v)| {
                                mask_leaves(&mut v, rules, counts, &|_| false);
                                (rules.mask_all(&k, counts), v)
                            })
                            .collect();
                        *m = masked;
                    }
                }
                (_, other) => mask_leaves(other, rules, counts, &|_| false),
            }
        }
    }
    // Everything not streamed above is masked whole: a client reads a
    // `message` that is a string, a second container, a `text` that is not
    // a string, as surely as the fields it expects.
    for (k, v) in choice.iter_mut() {
        let streamed = match k.as_str() {
            k if k == container => v.is_object(),
            "logprobs" => v.is_object(),
            "text" => v.is_string(),
            "index" => v.is_number(),
            k => STRUCTURAL.contains(&k),
        };
        if !streamed {
            mask_leaves(v, rules, counts, &|_| false);
        }
    }
    let finished = choice.get("finish_reason").is_some_and(|f| !f.is_null());
    if whole || finished {
        for (key, text) in streams.flush(rules, counts, |k| k.choice == idx) {
            put_flushed(choice, container, key, text);
        }
    }
}

/// Masks whole every value of a `delta`/`message` that did not go through a
/// stream: array `content`, legacy `function_call`, `audio`, tool calls
/// (all but a string `function.arguments`, which was streamed).
fn mask_leaves_except_streamed(c: &mut Map<String, Value>, rules: &MaskRules, counts: &mut [u32]) {
    for (k, v) in c.iter_mut() {
        let k = k.as_str();
        if STRUCTURAL.contains(&k) || (v.is_string() && TEXT_FIELDS.iter().any(|(n, _)| *n == k)) {
            continue;
        }
        if let ("tool_calls", Value::Array(calls)) = (k, &mut *v) {
            for call in calls.iter_mut() {
                let streamed = match call.pointer_mut("/function/arguments") {
                    Some(a) if a.is_string() => Some(std::mem::take(a)),
                    _ => None,
                };
                mask_leaves(call, rules, counts, &|_| false);
                if let (Some(a), Some(slot)) = (streamed, call.pointer_mut("/function/arguments")) {
                    *slot = a;
                }
            }
            continue;
        }
        mask_leaves(v, rules, counts, &|_| false);
    }
}

/// Puts a stream's final text into `choice` (the finish event, or the whole response).
fn put_flushed(choice: &mut Map<String, Value>, container: &str, key: StreamKey, text: String) {
    let name = TEXT_FIELDS
        .iter()
        .find(|(_, f)| *f == key.field)
        .map(|(n, _)| *n);
    match key.field {
        Field::Text => append_str(choice, "text", &text),
        Field::Tokens => {
            let lp = object_at(choice, "logprobs");
            if key.sub == LP_LEGACY {
                array_at(lp, "tokens").push(Value::String(text));
                array_at(lp, "token_logprobs").push(Value::from(0.0));
            } else {
                let list = if key.sub == LP_REFUSAL {
                    "refusal"
                } else {
                    "content"
                };
                array_at(lp, list).push(flushed_logprob_entry(text));
            }
        }
        Field::ToolArguments => {
            let calls = array_at(object_at(choice, container), "tool_calls");
            let found = calls.iter_mut().enumerate().find(|(p, c)| {
                c.get("index").and_then(Value::as_u64).unwrap_or(*p as u64) == key.sub
            });
            match found {
                Some((_, call)) => {
                    if let Value::Object(call) = call {
                        append_str(object_at(call, "function"), "arguments", &text);
                    }
                }
                None => calls
                    .push(serde_json::json!({"index": key.sub, "function": {"arguments": text}})),
            }
        }
        _ => {
            if let Some(name) = name {
                append_str(object_at(choice, container), name, &text);
            }
        }
    }
}

/// `obj[key]` as an object, created (or replaced if not an object).
pub fn object_at<'a>(obj: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = obj
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().expect("just made an object")
}

fn array_at<'a>(obj: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = obj
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut().expect("just made an array")
}

/// Fields copied from the last chunk when an event must be synthesised.
pub const ENVELOPE: [&str; 5] = ["id", "object", "created", "model", "system_fingerprint"];

/// A chunk carrying streams' remaining text, for a stream that ended without
/// a `finish_reason` (upstream closed early, or `[DONE]` came first).
pub fn synthesize(
    envelope: &Map<String, Value>,
    leftovers: Vec<(StreamKey, String)>,
) -> Map<String, Value> {
    let mut obj = envelope.clone();
    let mut choices: Vec<Map<String, Value>> = Vec::new();
    for (key, text) in leftovers {
        let pos = match choices
            .iter()
            .position(|c| c.get("index").and_then(Value::as_u64) == Some(key.choice))
        {
            Some(p) => p,
            None => {
                let mut c = Map::new();
                c.insert("index".into(), Value::from(key.choice));
                if key.field != Field::Text {
                    c.insert("delta".into(), Value::Object(Map::new()));
                }
                c.insert("finish_reason".into(), Value::Null);
                choices.push(c);
                choices.len() - 1
            }
        };
        put_flushed(&mut choices[pos], "delta", key, text);
    }
    obj.insert(
        "choices".into(),
        Value::Array(choices.into_iter().map(Value::Object).collect()),
    );
    obj
}
