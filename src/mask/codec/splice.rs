//! The fast path for the common OpenAI object (a `chat.completion.chunk`, a
//! `chat.completion`, a completions object): when its only strings are
//! structural ones and the text fields that go through streams, it is
//! masked by splicing the fields' new values into the original bytes, with
//! no `serde_json::Value` tree built, walked and re-encoded.
//!
//! It gives the same JSON as [`super::openai::process`] (the differential
//! tests below hold it to that), only formatted as the upstream formatted it.
//! Anything else (tool calls, logprobs, content parts, strings under
//! unknown keys, duplicate keys, escaped keys, a stream state it does not
//! handle) is declined before any stream is touched, and the caller takes the
//! `Value` path.

use super::fields::{Field, StreamKey, Streams, STRUCTURAL};
use super::openai::TEXT_FIELDS;
use crate::mask::stream::MaskRules;
use serde::de::{
    self, Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// Masks the OpenAI object in `data` into `out` as `openai::process` would,
/// or returns `false` (with nothing changed) when the object is not one the
/// fast path handles. With `whole`, every stream is flushed at the end of
/// its choice (a whole response).
pub fn process(
    data: &[u8],
    streams: &mut Streams,
    rules: &MaskRules,
    counts: &mut [u32],
    whole: bool,
    out: &mut Vec<u8>,
) -> bool {
    let Some(choices) = plan(data) else {
        return false;
    };
    // Streams this path cannot write back (tool arguments, logprob tokens,
    // generic paths) may have been opened by earlier events on the `Value`
    // path; a flush would have to put them somewhere.
    let unhandled = |k: &StreamKey| !(k.field == Field::Text || field_index(k.field).is_some());
    if choices
        .iter()
        .any(|c| (whole || c.finished) && streams.any(|k| k.choice == c.idx && unhandled(k)))
    {
        return false;
    }
    let mut edits: Vec<Edit> = Vec::new();
    for c in &choices {
        apply(c, streams, rules, counts, whole, &mut edits);
    }
    edits.sort_by_key(|e| e.at);
    let mut last = 0;
    for e in edits {
        out.extend_from_slice(&data[last..e.at]);
        out.extend_from_slice(&e.bytes);
        last = e.end;
    }
    out.extend_from_slice(&data[last..]);
    true
}

/// A replacement of `data[at..end]` (an insertion when `at == end`).
struct Edit {
    at: usize,
    end: usize,
    bytes: Vec<u8>,
}

/// A text field as found: its value's byte span, and its text when it is a
/// JSON string.
struct Slot<'a> {
    start: usize,
    end: usize,
    text: Option<Cow<'a, str>>,
}

/// An object's closing brace and whether it has entries (for insertions).
#[derive(Clone, Copy)]
struct Close {
    at: usize,
    empty: bool,
}

struct Choice<'a> {
    idx: u64,
    close: Close,
    /// `message` when the choice has one, else `delta`.
    container_name: &'static str,
    container: Option<Close>,
    fields: [Option<Slot<'a>>; 4],
    text: Option<Slot<'a>>,
    finished: bool,
}

fn field_index(f: Field) -> Option<usize> {
    TEXT_FIELDS.iter().position(|(_, tf)| *tf == f)
}

/// Reads `data` into choices, or `None` when it is not a shape the fast
/// path handles. One pass over the object; only a choice's container is
/// read twice (once to find its span, once for its fields).
fn plan(data: &[u8]) -> Option<Vec<Choice<'_>>> {
    let text = std::str::from_utf8(data).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    let choices = Top { text }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    choices
}

fn decline<E: de::Error>() -> E {
    E::custom("not a shape the fast path handles")
}

/// Remembers an object's keys; a repeated one declines (the `Value` path
/// keeps the last, and the fast path does not try to agree). The first
/// [`INLINE_KEYS`] live inline: a chunk's objects have fewer, and a growing
/// `Vec` per object was three allocations per streamed event.
#[derive(Default)]
struct Keys<'a> {
    inline: [&'a str; INLINE_KEYS],
    len: usize,
    more: Vec<&'a str>,
}

const INLINE_KEYS: usize = 12;

impl<'a> Keys<'a> {
    fn add<E: de::Error>(&mut self, k: &'a str) -> Result<(), E> {
        let inline = &self.inline[..self.len.min(INLINE_KEYS)];
        if inline.contains(&k) || self.more.contains(&k) {
            return Err(decline());
        }
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = k,
            None => self.more.push(k),
        }
        self.len += 1;
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The top-level object: its `choices`, if any.
struct Top<'t> {
    text: &'t str,
}

impl<'de> DeserializeSeed<'de> for Top<'de> {
    type Value = Option<Vec<Choice<'de>>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Top<'de> {
    type Value = Option<Vec<Choice<'de>>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an OpenAI object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut keys = Keys::default();
        let mut choices = None;
        // Keys with escapes are not borrowed strings: they decline.
        while let Some(k) = map.next_key::<&'de str>()? {
            keys.add(k)?;
            match k {
                "choices" => choices = Some(map.next_value_seed(Choices { text: self.text })?),
                k if STRUCTURAL.contains(&k) => {
                    map.next_value::<IgnoredAny>()?;
                }
                _ => {
                    map.next_value::<NoStrings>()?;
                }
            }
        }
        Ok(choices)
    }
}

struct Choices<'t> {
    text: &'t str,
}

impl<'de> DeserializeSeed<'de> for Choices<'de> {
    type Value = Vec<Choice<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Choices<'de> {
    type Value = Vec<Choice<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of choices")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(1);
        while let Some(c) = seq.next_element_seed(ChoiceSeed {
            text: self.text,
            pos: out.len() as u64,
        })? {
            out.push(c);
        }
        Ok(out)
    }
}

struct ChoiceSeed<'t> {
    text: &'t str,
    pos: u64,
}

impl<'de> DeserializeSeed<'de> for ChoiceSeed<'de> {
    type Value = Choice<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ChoiceSeed<'de> {
    type Value = Choice<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a choice object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let text = self.text;
        let mut c = Choice {
            idx: self.pos,
            close: Close {
                at: 0,
                empty: false,
            },
            container_name: "delta",
            container: None,
            fields: [None, None, None, None],
            text: None,
            finished: false,
        };
        let mut keys = Keys::default();
        // End of the last value: the closing brace is the next non-blank byte.
        let mut end = None;
        while let Some(k) = map.next_key::<&'de str>()? {
            keys.add(k)?;
            let v: &'de RawValue = map.next_value()?;
            end = Some(offset(text, v) + v.get().len());
            match k {
                "index" => match serde_json::from_str::<u64>(v.get()) {
                    Ok(i) => c.idx = i,
                    Err(_) => no_strings(v).ok_or_else(decline)?,
                },
                "message" | "delta" => {
                    // Both containers: the `Value` path reads only `message`.
                    if c.container.is_some() {
                        return Err(decline());
                    }
                    let mut de = serde_json::Deserializer::from_str(v.get());
                    let empty = Container { text, c: &mut c }
                        .deserialize(&mut de)
                        .map_err(|_| decline())?;
                    c.container = Some(close(text, v, empty));
                    c.container_name = if k == "message" { "message" } else { "delta" };
                }
                "text" => c.text = Some(slot(text, v).ok_or_else(decline)?),
                "finish_reason" => c.finished = v.get() != "null",
                // Logprob tokens are their own streams: the `Value` path.
                "logprobs" if v.get() != "null" => return Err(decline()),
                k if STRUCTURAL.contains(&k) || k == "logprobs" => {}
                _ => no_strings(v).ok_or_else(decline)?,
            }
        }
        let end = end.ok_or_else(decline)?;
        let rest = &text.as_bytes()[end..];
        let brace = rest.iter().position(|b| !b.is_ascii_whitespace());
        match brace {
            Some(i) if rest[i] == b'}' => {
                c.close = Close {
                    at: end + i,
                    empty: false,
                }
            }
            _ => return Err(decline()),
        }
        Ok(c)
    }
}

/// A `message` or `delta` object: fills the choice's text-field slots and
/// says whether the object is empty.
struct Container<'t, 'c> {
    text: &'t str,
    c: &'c mut Choice<'t>,
}

impl<'de> DeserializeSeed<'de> for Container<'de, '_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Container<'de, '_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a message or delta object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut keys = Keys::default();
        while let Some(k) = map.next_key::<&'de str>()? {
            keys.add(k)?;
            match TEXT_FIELDS.iter().position(|(n, _)| *n == k) {
                Some(i) => {
                    let v: &'de RawValue = map.next_value()?;
                    self.c.fields[i] = Some(slot(self.text, v).ok_or_else(decline)?);
                }
                None if STRUCTURAL.contains(&k) => {
                    map.next_value::<IgnoredAny>()?;
                }
                None => {
                    map.next_value::<NoStrings>()?;
                }
            }
        }
        Ok(keys.is_empty())
    }
}

/// Byte offset of `raw` in `text` (it is borrowed from it).
fn offset(text: &str, raw: &RawValue) -> usize {
    raw.get().as_ptr() as usize - text.as_ptr() as usize
}

fn close(text: &str, raw: &RawValue, empty: bool) -> Close {
    Close {
        at: offset(text, raw) + raw.get().len() - 1,
        empty,
    }
}

fn slot<'a>(text: &'a str, raw: &'a RawValue) -> Option<Slot<'a>> {
    let start = offset(text, raw);
    let value = if raw.get().starts_with('"') {
        Some(serde_json::from_str::<Cow<'a, str>>(raw.get()).ok()?)
    } else {
        // Not a string: no strings inside either (it would be masked whole).
        no_strings(raw)?;
        None
    };
    Some(Slot {
        start,
        end: start + raw.get().len(),
        text: value,
    })
}

/// Pushes a choice's text fields through their streams (in the order the
/// `Value` path does), flushes it when finished, and records the edits.
fn apply(
    c: &Choice,
    streams: &mut Streams,
    rules: &MaskRules,
    counts: &mut [u32],
    whole: bool,
    edits: &mut Vec<Edit>,
) {
    let mut push = |key, s: &str| streams.push_field(key, s, rules, counts, whole);
    let mut values: [Option<String>; 4] = Default::default();
    for (i, (_, field)) in TEXT_FIELDS.iter().enumerate() {
        if let Some(Slot { text: Some(s), .. }) = &c.fields[i] {
            values[i] = Some(push(StreamKey::new(c.idx, *field), s));
        }
    }
    let mut text = None;
    if let Some(Slot { text: Some(s), .. }) = &c.text {
        text = Some(push(StreamKey::new(c.idx, Field::Text), s));
    }
    // Fields the flush creates, in the order it creates them.
    let mut new_in_container: Vec<(&str, String)> = Vec::new();
    let mut new_in_choice: Vec<NewKey> = Vec::new();
    if whole || c.finished {
        for (key, rest) in streams.flush(rules, counts, |k| k.choice == c.idx) {
            if key.field == Field::Text {
                if c.text.is_some() {
                    text.get_or_insert_with(String::new).push_str(&rest);
                } else {
                    new_in_choice.push(NewKey::Text(rest));
                }
                continue;
            }
            let i = field_index(key.field).expect("checked before any push");
            if c.fields[i].is_some() {
                values[i].get_or_insert_with(String::new).push_str(&rest);
            } else {
                if c.container.is_none() && new_in_container.is_empty() {
                    new_in_choice.push(NewKey::Container);
                }
                new_in_container.push((TEXT_FIELDS[i].0, rest));
            }
        }
    }
    for (slot, value) in c.fields.iter().zip(values).chain([(&c.text, text)]) {
        if let (Some(slot), Some(v)) = (slot, value) {
            if slot.text.as_deref() != Some(v.as_str()) {
                edits.push(Edit {
                    at: slot.start,
                    end: slot.end,
                    bytes: json_string(&v),
                });
            }
        }
    }
    let fields = object_body(new_in_container.iter().map(|(k, v)| (*k, json_string(v))));
    let created = match c.container {
        Some(close) => {
            if !new_in_container.is_empty() {
                edits.push(insert(close, fields));
            }
            Vec::new()
        }
        // The flush created the container: its fields go in with it.
        None => fields,
    };
    push_choice_keys(c, new_in_choice, created, edits);
}

enum NewKey {
    Text(String),
    /// The container, created by a flush into a choice that had none.
    Container,
}

fn push_choice_keys(c: &Choice, keys: Vec<NewKey>, container: Vec<u8>, edits: &mut Vec<Edit>) {
    if keys.is_empty() {
        return;
    }
    let mut container = Some(container);
    let entries = keys.into_iter().map(|k| match k {
        NewKey::Text(t) => ("text", json_string(&t)),
        NewKey::Container => {
            let mut obj = b"{".to_vec();
            obj.extend(container.take().unwrap_or_default());
            obj.push(b'}');
            (c.container_name, obj)
        }
    });
    let body = object_body(entries.collect::<Vec<_>>());
    edits.push(insert(c.close, body));
}

/// `"k":v,"k":v` for the entries.
fn object_body<'k>(entries: impl IntoIterator<Item = (&'k str, Vec<u8>)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend(json_string(k));
        out.push(b':');
        out.extend(v);
    }
    out
}

/// Inserts object entries before an object's closing brace.
fn insert(close: Close, body: Vec<u8>) -> Edit {
    let mut bytes = Vec::with_capacity(body.len() + 1);
    if !close.empty {
        bytes.push(b',');
    }
    bytes.extend(body);
    Edit {
        at: close.at,
        end: close.at,
        bytes,
    }
}

fn json_string(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    crate::json::write_str(&mut out, s);
    out
}

/// `Some` when the raw value holds no string value at any depth (keys may
/// be anything): the `Value` path would have nothing in it to mask.
fn no_strings(raw: &RawValue) -> Option<()> {
    serde_json::from_str::<NoStrings>(raw.get())
        .ok()
        .map(|_| ())
}

struct NoStrings;

impl<'de> Deserialize<'de> for NoStrings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NoStrings;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value without strings")
            }
            fn visit_bool<E>(self, _: bool) -> Result<NoStrings, E> {
                Ok(NoStrings)
            }
            fn visit_i64<E>(self, _: i64) -> Result<NoStrings, E> {
                Ok(NoStrings)
            }
            fn visit_u64<E>(self, _: u64) -> Result<NoStrings, E> {
                Ok(NoStrings)
            }
            fn visit_f64<E>(self, _: f64) -> Result<NoStrings, E> {
                Ok(NoStrings)
            }
            fn visit_unit<E>(self) -> Result<NoStrings, E> {
                Ok(NoStrings)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoStrings, A::Error> {
                while seq.next_element::<NoStrings>()?.is_some() {}
                Ok(NoStrings)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoStrings, A::Error> {
                while map.next_entry::<IgnoredAny, NoStrings>()?.is_some() {}
                Ok(NoStrings)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::super::openai;
    use super::*;
    use crate::mask::detect::{Detector, BUILTIN};
    use crate::mask::replace::Style;
    use proptest::prelude::*;
    use serde_json::Value;
    use std::sync::{Arc, OnceLock};

    fn rules() -> &'static MaskRules {
        static RULES: OnceLock<MaskRules> = OnceLock::new();
        RULES.get_or_init(|| {
            let det = Detector::new(&BUILTIN, &[]).expect("built-in detector compiles");
            MaskRules::uniform(Arc::new(det), Style::Label, 16 * 1024)
        })
    }

    /// What each path did with a sequence of objects: every output object
    /// (compact JSON, keys in their order), the counts, what the streams
    /// still held at the end, and how many objects the fast path took.
    #[derive(Debug, PartialEq)]
    struct Run {
        objects: Vec<String>,
        counts: Vec<u32>,
        left: Vec<(StreamKey, String)>,
        spliced: usize,
    }

    fn run(objects: &[&str], whole: bool, fast: bool) -> Run {
        let r = rules();
        let mut streams = Streams::default();
        let mut counts = vec![0; r.entity_count()];
        let mut run = Run {
            objects: Vec::new(),
            counts: Vec::new(),
            left: Vec::new(),
            spliced: 0,
        };
        for o in objects {
            let mut out = Vec::new();
            let v: Value =
                if fast && process(o.as_bytes(), &mut streams, r, &mut counts, whole, &mut out) {
                    run.spliced += 1;
                    serde_json::from_slice(&out).unwrap_or_else(|e| {
                        panic!(
                            "spliced output is not JSON ({e}): {}",
                            String::from_utf8_lossy(&out)
                        )
                    })
                } else {
                    let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(o) else {
                        panic!("test object is not a JSON object: {o}");
                    };
                    openai::process(&mut obj, &mut streams, r, &mut counts, whole);
                    Value::Object(obj)
                };
            run.objects.push(serde_json::to_string(&v).unwrap());
        }
        run.counts = counts;
        run.left = streams.flush(r, &mut vec![0; r.entity_count()], |_| true);
        run
    }

    /// The fast path gives what the `Value` path gives; returns how many
    /// objects it took.
    fn same(objects: &[&str], whole: bool) -> usize {
        let slow = run(objects, whole, false);
        let fast = run(objects, whole, true);
        assert_eq!(
            (&fast.objects, &fast.counts, &fast.left),
            (&slow.objects, &slow.counts, &slow.left),
            "for {objects:#?}"
        );
        fast.spliced
    }

    fn chunk(delta: &str, finish: &str) -> String {
        format!(
            r#"{{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]}}"#
        )
    }

    #[test]
    fn a_stream_split_inside_pii_is_spliced_and_agrees() {
        let events = [
            chunk(r#"{"role":"assistant","content":""}"#, "null"),
            chunk(r#"{"content":"mail jane.d"}"#, "null"),
            chunk(r#"{"content":"oe@example.com or call +1 415"}"#, "null"),
            chunk(r#"{"content":"-555-0132 now"}"#, "null"),
            // The finish event has no content: the flush creates it.
            chunk("{}", r#""stop""#),
        ];
        let events: Vec<&str> = events.iter().map(String::as_str).collect();
        assert_eq!(same(&events, false), events.len());
        let fast = run(&events, false, true);
        let text: String = fast.objects.concat();
        assert!(!text.contains("jane") && !text.contains("0132"), "{text}");
        assert_eq!(fast.counts.iter().sum::<u32>(), 2);
    }

    #[test]
    fn flushes_create_missing_fields_and_containers_in_order() {
        let cases: [&[&str]; 6] = [
            // Held text flushed into a null content.
            &[
                r#"{"choices":[{"delta":{"content":"reach jane@ex"}}]}"#,
                r#"{"choices":[{"delta":{"content":null},"finish_reason":"stop"}]}"#,
            ],
            // No container at all in the finish event.
            &[
                r#"{"choices":[{"index":0,"delta":{"content":"a +1 415","reasoning_content":"x@y"}}]}"#,
                r#"{"choices":[{"index":0,"finish_reason":"length"}]}"#,
            ],
            // Completions `text`, absent from the finish event.
            &[
                r#"{"object":"text_completion","choices":[{"index":0,"text":"id EMP-1"}]}"#,
                r#"{"choices":[{"index":0,"finish_reason":"stop"}]}"#,
            ],
            // Two choices interleaved, one ends first; usage at the end.
            &[
                r#"{"choices":[{"index":0,"delta":{"content":"a@b"}},{"index":1,"delta":{"content":"4111 1111"}}]}"#,
                r#"{"choices":[{"index":1,"delta":{"content":" 1111 1111"},"finish_reason":"stop"}]}"#,
                r#"{"choices":[{"index":0,"delta":{"content":".com"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4,"details":{"cached":0}}}"#,
            ],
            // Empty objects and odd whitespace.
            &[
                r#" { "choices" : [ { "delta" : { "content" : "x@exam" } } ] } "#,
                r#"{"choices":[{"index":0}], "created": 1.50}"#,
                r#"{"choices":[ {"finish_reason":"stop", "delta":{ }} ]}"#,
            ],
            // Escapes in the text, in and out.
            &[
                r#"{"choices":[{"delta":{"content":"caf\u00e9 \"q\" \\ mail: j\u0040x.io\n"}}]}"#,
                r#"{"choices":[{"delta":{"content":"\ud83d\ude00"},"finish_reason":"stop"}]}"#,
            ],
        ];
        for events in cases {
            assert_eq!(same(events, false), events.len(), "{events:#?}");
        }
    }

    #[test]
    fn a_whole_response_is_spliced_and_agrees() {
        let bodies = [
            r#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Write to jane.doe@example.com, card 4111 1111 1111 1111.","tool_calls":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"total_tokens":20},"system_fingerprint":"fp"}"#,
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"no, +1 415-555-0132"},"finish_reason":"stop"}]}"#,
            r#"{"choices":[{"text":"ssn 123-45-6789","index":0},{"text":"","index":1}]}"#,
            r#"{"choices":[]}"#,
        ];
        for b in bodies {
            assert_eq!(same(&[b], true), 1, "{b}");
        }
    }

    #[test]
    fn shapes_it_does_not_handle_are_declined_untouched() {
        let declined = [
            // Tool calls and logprobs have streams of their own.
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":\"x@y.io\"}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"content":"a"},"logprobs":{"content":[{"token":"a","logprob":0}]}}]}"#,
            // Strings where the `Value` path masks whole values.
            r#"{"choices":[{"delta":{"content":[{"type":"text","text":"x@y.io"}]}}]}"#,
            r#"{"choices":[{"delta":{"content":"a"},"note":"x@y.io"}]}"#,
            r#"{"choices":[{"delta":{"content":"a"}}],"extra":{"who":"x@y.io"}}"#,
            r#"{"choices":[{"message":"x@y.io"}]}"#,
            r#"{"choices":[{"index":"0","delta":{}}]}"#,
            r#"{"choices":{"0":"x@y.io"}}"#,
            r#"{"choices":["x@y.io"]}"#,
            // Both containers, repeated keys, escaped keys, not JSON.
            r#"{"choices":[{"message":{"content":"a"},"delta":{"content":"x@y.io"}}]}"#,
            r#"{"choices":[{"delta":{"content":"a","content":"x@y.io"}}]}"#,
            r#"{"choices":[{"delta":{"cont\u0065nt":"x@y.io"}}]}"#,
            r#"{"object":"no choices"}"#,
            // An empty choice (nowhere found to insert a flush).
            r#"{"choices":[{}]}"#,
            r#"{"choices":[{"delta":{"content":"a"}}]"#,
        ];
        for d in declined {
            let mut streams = Streams::default();
            let r = rules();
            let mut counts = vec![0; r.entity_count()];
            let mut out = Vec::new();
            assert!(
                !process(d.as_bytes(), &mut streams, r, &mut counts, false, &mut out),
                "{d}"
            );
            assert!(out.is_empty() && streams.is_empty() && counts.iter().all(|c| *c == 0));
            // And where it declines, the `Value` path leaves no PII either.
            if let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(d) {
                openai::process(&mut obj, &mut streams, r, &mut counts, true);
                let text = serde_json::to_string(&obj).unwrap();
                assert!(!text.contains("x@y.io"), "{text}");
            }
        }
    }

    #[test]
    fn repeated_keys_decline_past_the_inline_key_slots() {
        let many = |n: usize| (0..n).map(|i| format!("\"k{i}\":{i},")).collect::<String>();
        let choices = r#""choices":[{"delta":{"content":"a"}}]"#;
        let run = |d: &str| {
            let r = rules();
            let mut counts = vec![0; r.entity_count()];
            let mut out = Vec::new();
            process(
                d.as_bytes(),
                &mut Streams::default(),
                r,
                &mut counts,
                false,
                &mut out,
            )
        };
        let n = 2 * INLINE_KEYS;
        // Distinct keys, more than fit inline: taken.
        assert!(run(&format!("{{{}{choices}}}", many(n))));
        // A repeat of an inline key, and of a spilled one, after the spill.
        for dup in [1, INLINE_KEYS + 3] {
            let d = format!("{{{}{choices},\"k{dup}\":0}}", many(n));
            assert!(!run(&d), "{d}");
        }
    }

    #[test]
    fn a_stream_opened_on_the_value_path_keeps_it_at_the_flush() {
        // Tool-call arguments held back by the `Value` path: the plain finish
        // event must go there too, to put them back into a tool call.
        let events = [
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"to\":\"jane@ex"}}]}}]}"#,
            r#"{"choices":[{"delta":{"content":"ok"}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
        ];
        assert_eq!(same(&events, false), 1, "only the middle event is spliced");
    }

    const PIECES: &[&str] = &[
        "jane.doe@",
        "example.com",
        " +1 415-",
        "555-0132",
        " 4111 1111 ",
        "1111 1111",
        " ssn 123-",
        "45-6789",
        " hello ",
        "world. ",
        "\n",
        "é\"\\",
        " EMP-",
        "x@y",
        ".io ",
        "",
    ];

    fn piece() -> impl Strategy<Value = String> {
        prop::sample::select(PIECES).prop_map(|p| serde_json::to_string(p).unwrap())
    }

    fn delta() -> impl Strategy<Value = String> {
        prop_oneof![
            piece().prop_map(|p| format!(r#"{{"content":{p}}}"#)),
            piece().prop_map(|p| format!(r#"{{"role":"assistant","content":{p}}}"#)),
            (piece(), piece())
                .prop_map(|(a, b)| format!(r#"{{"reasoning_content":{a},"content":{b}}}"#)),
            piece().prop_map(|p| format!(r#"{{"refusal":{p},"content":null}}"#)),
            Just("{}".to_string()),
            Just(r#"{"content":null}"#.to_string()),
        ]
    }

    fn choice() -> impl Strategy<Value = String> {
        let finish = prop::sample::select(&["null", r#""stop""#, r#""length""#][..]);
        (0u64..3, delta(), piece(), finish, 0..4u8).prop_map(|(i, d, p, f, shape)| match shape {
            0 => format!(r#"{{"index":{i},"delta":{d},"finish_reason":{f}}}"#),
            1 => format!(r#"{{"index":{i},"finish_reason":{f}}}"#),
            2 => format!(r#"{{"index":{i},"text":{p},"finish_reason":{f}}}"#),
            _ => format!(r#"{{"delta":{d},"logprobs":null,"finish_reason":{f}}}"#),
        })
    }

    fn object() -> impl Strategy<Value = String> {
        (prop::collection::vec(choice(), 0..3), any::<bool>()).prop_map(|(cs, usage)| {
            let usage = if usage {
                r#","usage":{"completion_tokens":2}"#
            } else {
                ""
            };
            format!(
                r#"{{"id":"c","object":"chat.completion.chunk","choices":[{}]{usage}}}"#,
                cs.join(",")
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn random_streams_agree_with_the_value_path(events in prop::collection::vec(object(), 1..12)) {
            let events: Vec<&str> = events.iter().map(String::as_str).collect();
            // Every generated shape is one the fast path handles.
            prop_assert_eq!(same(&events, false), events.len());
        }

        #[test]
        fn random_whole_responses_agree_with_the_value_path(o in object()) {
            prop_assert_eq!(same(&[o.replace("delta", "message").as_str()], true), 1);
        }
    }
}
