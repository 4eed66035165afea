//! Server-sent events: splits the byte stream into events (bytes of an
//! incomplete event wait for the rest), masks each event's JSON `data`
//! (OpenAI chunks by `choices`, Anthropic events by `type`, anything else as
//! whole values), and writes it back with its other lines (`event:`, `id:`,
//! comments) in order. One event in gives one event out (plus, at a stream's
//! end, one carrying text that was still held back).

use super::fields::*;
use super::{anthropic, openai};
use crate::mask::stream::MaskRules;
use serde_json::{Map, Value};

#[derive(Default)]
pub struct SseCodec {
    pending: Vec<u8>,
    streams: Streams,
    /// `id`, `model`... of the last OpenAI chunk, for synthesised chunks.
    envelope: Option<Map<String, Value>>,
    anthropic: bool,
}

impl SseCodec {
    pub fn feed(&mut self, chunk: &[u8], rules: &MaskRules, counts: &mut [u32], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        while let Some((end, next)) = event_end(&self.pending[start..]) {
            let event = self.pending[start..start + end].to_vec();
            self.event(&event, rules, counts, out);
            start += next;
        }
        self.pending.drain(..start);
    }

    /// End of the body: a trailing unterminated event is processed, and held
    /// text is released in a final event.
    pub fn finish(&mut self, rules: &MaskRules, counts: &mut [u32], out: &mut Vec<u8>) {
        if !self.pending.iter().all(u8::is_ascii_whitespace) {
            let event = std::mem::take(&mut self.pending);
            self.event(&event, rules, counts, out);
        }
        self.pending.clear();
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
            for ev in anthropic::flush_events(&mut self.streams, rules, counts, |_| true) {
                write_event(out, &[b"event: content_block_delta".as_slice()], Some(&ev));
            }
        } else {
            let leftovers = self.streams.flush(rules, counts, |_| true);
            if !leftovers.is_empty() {
                let env = self.envelope.clone().unwrap_or_default();
                let ev = Value::Object(openai::synthesize(&env, leftovers));
                write_event(out, &[], Some(&ev));
            }
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
            out.extend_from_slice(raw);
            out.extend_from_slice(b"\n\n");
            return;
        }
        if data == b"[DONE]" {
            self.flush_all(rules, counts, out);
            write_raw_event(out, &others, &data);
            return;
        }
        match serde_json::from_slice::<Value>(&data) {
            Ok(Value::Object(mut obj)) => {
                if obj.contains_key("choices") {
                    let env: Map<String, Value> = openai::ENVELOPE
                        .iter()
                        .filter_map(|k| obj.get(*k).map(|v| (k.to_string(), v.clone())))
                        .collect();
                    self.envelope = Some(env);
                    openai::process(&mut obj, &mut self.streams, rules, counts, false);
                } else if obj.get("type").is_some_and(Value::is_string) {
                    self.anthropic = true;
                    for ev in anthropic::process(&mut obj, &mut self.streams, rules, counts) {
                        write_event(out, &[b"event: content_block_delta".as_slice()], Some(&ev));
                    }
                } else {
                    for (k, v) in obj.iter_mut() {
                        if !STRUCTURAL.contains(&k.as_str()) {
                            mask_leaves(v, rules, counts, &|_| false);
                        }
                    }
                }
                write_event(out, &others, Some(&Value::Object(obj)));
            }
            Ok(mut other) => {
                mask_leaves(&mut other, rules, counts, &|_| false);
                write_event(out, &others, Some(&other));
            }
            Err(_) => {
                // Not JSON: the data is text; masked as a whole.
                let text = String::from_utf8_lossy(&data);
                let masked = rules.mask_all(&text, counts);
                write_raw_event(out, &others, masked.as_bytes());
            }
        }
    }
}

/// End of the first event in `buf`: (length of the event, bytes to skip).
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
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
