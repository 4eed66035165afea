//! Server-sent events: splits the byte stream into events (bytes of an
//! incomplete event wait for the rest), masks each event's JSON `data`
//! (OpenAI chunks by `choices`, Anthropic events by `type`, anything else as
//! whole values), and writes it back with its other lines (`event:`, `id:`,
//! comments) in order. One event in gives one event out (plus, at a stream's
//! end, one carrying text that was still held back).

use super::fields::*;
use super::frames::Framer;
use super::generic::Generic;
use super::{anthropic, openai, splice, MaskError};
use crate::mask::stream::MaskRules;
use serde_json::{Map, Value};

/// Anthropic Messages event types (others with a `type` are generic).
pub const ANTHROPIC_TYPES: [&str; 8] = [
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
];

/// Stream key of non-JSON `data:` text.
const RAW: StreamKey = StreamKey {
    choice: u64::MAX - 1,
    field: Field::Text,
    sub: 0,
};

#[derive(Default)]
pub struct SseCodec {
    framer: Framer,
    generic: Generic,
    streams: Streams,
    /// `id`, `model`... of the first OpenAI chunk, for synthesised chunks.
    envelope: Option<Map<String, Value>>,
    anthropic: bool,
}

impl SseCodec {
    /// A codec refusing events/lines longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        SseCodec {
            // A blank-line terminator may straddle two chunks.
            framer: Framer::new(limit, 3, event_end),
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
        for event in self.framer.feed(chunk)? {
            self.event(&event, rules, counts, out);
        }
        Ok(())
    }

    /// End of the body: a trailing unterminated event is processed, and held
    /// text is released in a final event.
    pub fn finish(&mut self, rules: &MaskRules, counts: &mut [u32], out: &mut Vec<u8>) {
        let rest = self.framer.take_rest();
        if !rest.iter().all(u8::is_ascii_whitespace) {
            self.event(&rest, rules, counts, out);
        }
        self.flush_all(rules, counts, out);
    }

    pub fn overflows(&self) -> u32 {
        self.streams.overflows()
    }

    fn flush_all(&mut self, rules: &MaskRules, counts: &mut [u32], out: &mut Vec<u8>) {
        if self.streams.is_empty() {
            return;
        }
        if self.anthropic {
            for ev in anthropic::flush_events(&mut self.streams, rules, counts, |k| {
                k.choice != u64::MAX && k.choice != RAW.choice
            }) {
                write_event(out, &[b"event: content_block_delta".as_slice()], Some(&ev));
            }
        }
        let openai_left = self
            .streams
            .flush(rules, counts, |k| k.field != Field::Path && *k != RAW);
        if !openai_left.is_empty() {
            let env = self.envelope.clone().unwrap_or_default();
            let ev = Value::Object(openai::synthesize(&env, openai_left));
            write_event(out, &[], Some(&ev));
        }
        for ev in self.generic.flush_all(&mut self.streams, rules, counts) {
            write_event(out, &[], Some(&ev));
        }
        for (_, text) in self.streams.flush(rules, counts, |k| *k == RAW) {
            write_raw_event(out, &[], text.as_bytes());
        }
    }

    fn event(&mut self, raw: &[u8], rules: &MaskRules, counts: &mut [u32], out: &mut Vec<u8>) {
        let mut others: Vec<&[u8]> = Vec::new();
        let mut data: Vec<u8> = Vec::new();
        let mut has_data = false;
        for line in raw.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(rest) = line.strip_prefix(b"data:") {
                if has_data {
                    data.push(b'\n');
                }
                data.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
                has_data = true;
            } else if !line.is_empty() {
                others.push(line);
            }
        }
        if !has_data {
            // Comments and unknown fields: whatever they say is masked too.
            let text = String::from_utf8_lossy(raw);
            out.extend_from_slice(rules.mask_all(&text, counts).as_bytes());
            out.extend_from_slice(b"\n\n");
            return;
        }
        if data == b"[DONE]" {
            self.flush_all(rules, counts, out);
            write_raw_event(out, &others, &data);
            return;
        }
        // After the first chunk (whose envelope is kept), a plain OpenAI
        // chunk is spliced, with no `Value` tree.
        if self.envelope.is_some() {
            let mut json = Vec::with_capacity(data.len() + 16);
            if splice::process(&data, &mut self.streams, rules, counts, false, &mut json) {
                write_raw_event(out, &others, &json);
                return;
            }
        }
        match serde_json::from_slice::<Value>(&data) {
            Ok(Value::Object(mut obj)) => {
                if obj.contains_key("choices") {
                    // For a synthesised final chunk; ids and model stay the
                    // same through a stream, so the first chunk's serve.
                    if self.envelope.is_none() {
                        let env: Map<String, Value> = openai::ENVELOPE
                            .iter()
                            .filter_map(|k| obj.get(*k).map(|v| (k.to_string(), v.clone())))
                            .collect();
                        self.envelope = Some(env);
                    }
                    openai::process(&mut obj, &mut self.streams, rules, counts, false);
                    write_event(out, &others, Some(&Value::Object(obj)));
                } else if obj
                    .get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| ANTHROPIC_TYPES.contains(&t))
                {
                    self.anthropic = true;
                    for ev in anthropic::process(&mut obj, &mut self.streams, rules, counts) {
                        write_event(out, &[b"event: content_block_delta".as_slice()], Some(&ev));
                    }
                    write_event(out, &others, Some(&Value::Object(obj)));
                } else {
                    self.generic_event(Value::Object(obj), &others, rules, counts, out);
                }
            }
            // Strings and arrays have JSON paths; a bare number, bool or
            // null in a text stream is most likely text that parses as JSON.
            Ok(other @ (Value::String(_) | Value::Array(_))) => {
                self.generic_event(other, &others, rules, counts, out)
            }
            Ok(_) | Err(_) => {
                // Not JSON: the data is text, one stream across events.
                let text = String::from_utf8_lossy(&data);
                let released = self.streams.push(RAW, &text, rules, counts);
                write_raw_event(out, &others, released.as_bytes());
            }
        }
    }

    fn generic_event(
        &mut self,
        mut v: Value,
        others: &[&[u8]],
        rules: &MaskRules,
        counts: &mut [u32],
        out: &mut Vec<u8>,
    ) {
        for ev in self
            .generic
            .process(&mut v, &mut self.streams, rules, counts)
        {
            write_event(out, others, Some(&ev));
        }
        write_event(out, others, Some(&v));
    }
}

/// End of the first event in `buf`, searching from `from`: (length of the
/// event, bytes to skip).
fn event_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

fn write_event(out: &mut Vec<u8>, others: &[&[u8]], data: Option<&Value>) {
    let json = data.map(|d| serde_json::to_vec(d).expect("a Value serialises"));
    write_raw_event(out, others, json.as_deref().unwrap_or(b""));
}

fn write_raw_event(out: &mut Vec<u8>, others: &[&[u8]], data: &[u8]) {
    for line in others {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        let _ = i;
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
}
