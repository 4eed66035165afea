//! What the codecs share: the logical streams of one response (keyed by
//! choice/block, field and tool-call index), and JSON helpers that mask string
//! leaves and logprob token lists.

use crate::mask::stream::{MaskRules, StreamMasker};
use serde_json::{Map, Value};

/// Which text field a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Content,
    ReasoningContent,
    Reasoning,
    Refusal,
    ToolArguments,
    /// Completions `text`, Anthropic `text`, Ollama `response`.
    Text,
    Thinking,
    PartialJson,
    /// Logprob tokens (chat `logprobs.content[].token`, legacy `logprobs.tokens`).
    Tokens,
    /// A string at a JSON path of an event shape the codecs do not know
    /// (`sub` indexes the codec's path table); `choice` is unused.
    Path,
}

/// One logical stream: a field of a choice (or Anthropic content block), and
/// for tool calls the tool-call index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub choice: u64,
    pub field: Field,
    pub sub: u64,
}

impl StreamKey {
    pub fn new(choice: u64, field: Field) -> Self {
        StreamKey {
            choice,
            field,
            sub: 0,
        }
    }
}

/// Most streams one response may open.
pub const MAX_STREAMS: usize = 256;

/// The streams of one response. Few per response, so a vector beats a map.
#[derive(Default)]
pub struct Streams {
    streams: Vec<(StreamKey, StreamMasker)>,
}

impl Streams {
    /// Feeds `text` to the stream `key`; returns what it releases.
    pub fn push(
        &mut self,
        key: StreamKey,
        text: &str,
        rules: &MaskRules,
        counts: &mut [u32],
    ) -> String {
        let i = match self.streams.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            // A hostile upstream could invent endless choices or tool calls:
            // beyond the cap a piece is masked on its own (never unmasked).
            None if self.streams.len() >= MAX_STREAMS => return rules.mask_all(text, counts),
            None => {
                self.streams.push((key, StreamMasker::new()));
                self.streams.len() - 1
            }
        };
        let mut out = String::with_capacity(text.len() + 8);
        self.streams[i].1.push(rules, text, &mut out, counts);
        out
    }

    /// [`Streams::push`], except that the whole text of a field in a whole
    /// response (`whole`, and no stream open for `key`) is masked in one go:
    /// nothing would be held back, so no liveness scan, and no holdback bound.
    pub fn push_field(
        &mut self,
        key: StreamKey,
        text: &str,
        rules: &MaskRules,
        counts: &mut [u32],
        whole: bool,
    ) -> String {
        if whole && !self.any(|k| *k == key) {
            return rules.mask_all(text, counts);
        }
        self.push(key, text, rules, counts)
    }

    /// Ends the streams selected by `pick`, returning their non-empty remainders.
    pub fn flush(
        &mut self,
        rules: &MaskRules,
        counts: &mut [u32],
        pick: impl Fn(&StreamKey) -> bool,
    ) -> Vec<(StreamKey, String)> {
        let mut out = Vec::new();
        self.streams.retain_mut(|(k, m)| {
            if !pick(k) {
                return true;
            }
            let mut s = String::new();
            m.finish(rules, &mut s, counts);
            if !s.is_empty() {
                out.push((*k, s));
            }
            false
        });
        out
    }

    /// Whether any open stream's key satisfies `pred`.
    pub fn any(&self, pred: impl Fn(&StreamKey) -> bool) -> bool {
        self.streams.iter().any(|(k, _)| pred(k))
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Holdback overflows across all streams.
    pub fn overflows(&self) -> u32 {
        self.streams.iter().map(|(_, m)| m.overflows).sum()
    }
}

/// Keys whose string values are structure, not content: never masked.
pub const STRUCTURAL: &[&str] = &[
    "id",
    "object",
    "model",
    "role",
    "type",
    "finish_reason",
    "stop_reason",
    "system_fingerprint",
    "created_at",
    "service_tier",
    "event",
    "done_reason",
    "stop_sequence",
    "name",
];

/// Keys whose values are free-form data (tool inputs and arguments): every
/// string below them is masked, whatever its key is called.
pub const FREE_FORM: &[&str] = &[
    "input",
    "arguments",
    "args",
    "parameters",
    "tool_input",
    "metadata",
];

/// Masks every string leaf of `v` as a whole value, except under structural
/// keys and, among the direct keys of `v` (or of the objects of an array
/// `v`), those `skip` selects (fields streamed elsewhere). Below a free-form
/// key nothing is skipped.
pub fn mask_leaves(
    v: &mut Value,
    rules: &MaskRules,
    counts: &mut [u32],
    skip: &dyn Fn(&str) -> bool,
) {
    walk(v, rules, counts, Some(skip), false);
}

fn walk(
    v: &mut Value,
    rules: &MaskRules,
    counts: &mut [u32],
    skip: Option<&dyn Fn(&str) -> bool>,
    free: bool,
) {
    match v {
        Value::String(s) if !s.is_empty() => *s = rules.mask_all(s, counts),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|i| walk(i, rules, counts, skip, free)),
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let k = k.as_str();
                if !free && (STRUCTURAL.contains(&k) || skip.is_some_and(|f| f(k))) {
                    continue;
                }
                walk(child, rules, counts, None, free || FREE_FORM.contains(&k));
            }
        }
        _ => {}
    }
}

/// Sets `obj.bytes` (if present) to the UTF-8 bytes of `obj.token`.
pub fn sync_token_bytes(obj: &mut Map<String, Value>) {
    if obj.get("bytes").is_some_and(Value::is_array) {
        if let Some(Value::String(t)) = obj.get("token") {
            let bytes: Vec<Value> = t.bytes().map(|b| Value::from(b as u64)).collect();
            obj.insert("bytes".into(), Value::Array(bytes));
        }
    }
}

/// Masks chat-style logprob entries (`[{token, bytes, top_logprobs}]`) as one
/// token stream: each token becomes the text released after it. Alternatives
/// in `top_logprobs` are masked one by one.
pub fn mask_logprob_entries(
    entries: &mut [Value],
    streams: &mut Streams,
    key: StreamKey,
    rules: &MaskRules,
    counts: &mut [u32],
) {
    for e in entries.iter_mut() {
        let Value::Object(obj) = e else {
            mask_leaves(e, rules, counts, &|_| false);
            continue;
        };
        if let Some(Value::String(t)) = obj.get_mut("token") {
            *t = streams.push(key, t, rules, counts);
        }
        sync_token_bytes(obj);
        if let Some(Value::Array(alts)) = obj.get_mut("top_logprobs") {
            for alt in alts.iter_mut() {
                if let Value::Object(a) = alt {
                    if let Some(Value::String(t)) = a.get_mut("token") {
                        *t = rules.mask_all(t, counts);
                    }
                    sync_token_bytes(a);
                }
            }
        }
    }
}

/// A chat logprob entry carrying flushed text.
pub fn flushed_logprob_entry(text: String) -> Value {
    let bytes: Vec<Value> = text.bytes().map(|b| Value::from(b as u64)).collect();
    serde_json::json!({"token": text, "logprob": 0.0, "bytes": bytes, "top_logprobs": []})
}

/// Appends `text` to the string at `obj[key]`, creating it.
pub fn append_str(obj: &mut Map<String, Value>, key: &str, text: &str) {
    match obj.get_mut(key) {
        Some(Value::String(s)) => s.push_str(text),
        _ => {
            obj.insert(key.to_string(), Value::String(text.to_string()));
        }
    }
}
