//! Codecs: per wire format, turn a response body into logical text streams,
//! mask them, and re-encode, so masking sees text rather than raw bytes.
//!
//! | Content-Type | Codec |
//! |---|---|
//! | `text/event-stream` | [`sse`]: OpenAI chat/completions chunks, Anthropic Messages events, any other JSON shape by JSON path ([`generic`]), plain `data:` text |
//! | `application/x-ndjson`, `application/jsonl` | [`ndjson`]: Ollama `/api/chat`, `/api/generate` |
//! | `application/json` | whole body, buffered (bounded), every text field masked |
//! | other `text/*`, unknown or missing | plain text, one stream |
//! | `image/*`, `audio/*`, `video/*`, `application/octet-stream`, archives | not masked (binary) |

mod anthropic;
pub mod fields;
mod frames;
mod generic;
mod ndjson;
mod openai;
mod splice;
pub(crate) mod sse;

use super::stream::{MaskRules, StreamMasker};
use serde_json::Value;
use std::sync::Arc;

/// Masks one response body, chunk by chunk.
pub struct ResponseMasker {
    codec: Codec,
    rules: Arc<MaskRules>,
    /// Per-entity counts, indexed like `Detector::names()`.
    pub counts: Vec<u32>,
}

enum Codec {
    Sse(sse::SseCodec),
    Ndjson(ndjson::NdjsonCodec),
    Json {
        buf: Vec<u8>,
        limit: usize,
    },
    Text {
        stream: StreamMasker,
        partial: Vec<u8>,
    },
}

/// A response that cannot be masked safely (its bytes must not reach the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskError {
    /// A JSON body larger than the buffering limit.
    JsonTooLarge(usize),
    /// An SSE event or NDJSON line larger than the limit (never terminated).
    EventTooLarge(usize),
}

impl std::fmt::Display for MaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaskError::JsonTooLarge(limit) => write!(
                f,
                "JSON response larger than {limit} bytes cannot be masked"
            ),
            MaskError::EventTooLarge(limit) => write!(
                f,
                "stream event or line larger than {limit} bytes cannot be masked"
            ),
        }
    }
}

impl ResponseMasker {
    /// The masker for a response of type `content_type`, or `None` when that
    /// type is not masked. `json_limit` bounds buffering of JSON bodies.
    pub fn for_content_type(
        content_type: &str,
        rules: Arc<MaskRules>,
        json_limit: usize,
    ) -> Option<Self> {
        let ct = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let codec = match ct.as_str() {
            "text/event-stream" => Codec::Sse(sse::SseCodec::new(json_limit)),
            "application/x-ndjson"
            | "application/jsonl"
            | "application/jsonlines"
            | "application/ndjson" => Codec::Ndjson(ndjson::NdjsonCodec::new(json_limit)),
            "application/json" => Codec::Json {
                buf: Vec::new(),
                limit: json_limit,
            },
            t if t.ends_with("+json") => Codec::Json {
                buf: Vec::new(),
                limit: json_limit,
            },
            t if is_binary(t) => return None,
            // Text, and anything unknown or missing: fail closed, mask as text.
            _ => Codec::Text {
                stream: StreamMasker::new(),
                partial: Vec::new(),
            },
        };
        let counts = vec![0; rules.entity_count()];
        Some(ResponseMasker {
            codec,
            rules,
            counts,
        })
    }

    /// Masks `chunk` (the last one when `end`), appending output to `out`.
    pub fn feed(&mut self, chunk: &[u8], end: bool, out: &mut Vec<u8>) -> Result<(), MaskError> {
        let rules = &*self.rules;
        let counts = &mut self.counts;
        match &mut self.codec {
            Codec::Sse(c) => {
                c.feed(chunk, rules, counts, out)?;
                if end {
                    c.finish(rules, counts, out);
                }
            }
            Codec::Ndjson(c) => {
                c.feed(chunk, rules, counts, out)?;
                if end {
                    c.finish(rules, counts, out);
                }
            }
            Codec::Json { buf, limit } => {
                if buf.len() + chunk.len() > *limit {
                    return Err(MaskError::JsonTooLarge(*limit));
                }
                buf.extend_from_slice(chunk);
                if end {
                    mask_json_body(buf, rules, counts, out);
                }
            }
            Codec::Text { stream, partial } => {
                partial.extend_from_slice(chunk);
                let text = take_utf8(partial);
                let mut s = String::new();
                stream.push(rules, &text, &mut s, counts);
                if end {
                    if !partial.is_empty() {
                        let rest = String::from_utf8_lossy(partial).into_owned();
                        stream.push(rules, &rest, &mut s, counts);
                        partial.clear();
                    }
                    stream.finish(rules, &mut s, counts);
                }
                out.extend_from_slice(s.as_bytes());
            }
        }
        Ok(())
    }

    /// The most body bytes this masker will buffer whole (JSON bodies), if any.
    pub fn whole_body_limit(&self) -> Option<usize> {
        match &self.codec {
            Codec::Json { limit, .. } => Some(*limit),
            _ => None,
        }
    }

    /// Times a stream's holdback bound forced an early release.
    pub fn overflows(&self) -> u32 {
        match &self.codec {
            Codec::Sse(c) => c.overflows(),
            Codec::Ndjson(c) => c.overflows(),
            Codec::Text { stream, .. } => stream.overflows,
            Codec::Json { .. } => 0,
        }
    }
}

/// Types that are not text: passed through unmasked.
fn is_binary(ct: &str) -> bool {
    ct.starts_with("image/")
        || ct.starts_with("audio/")
        || ct.starts_with("video/")
        || ct.starts_with("font/")
        || matches!(
            ct,
            "application/octet-stream"
                | "application/pdf"
                | "application/zip"
                | "application/gzip"
                | "application/x-protobuf"
                | "application/grpc"
                | "application/vnd.apache.parquet"
        )
}

/// Decodes the complete UTF-8 at the front of `buf`, replacing each invalid
/// sequence with U+FFFD (as `from_utf8_lossy` does) and leaving an incomplete
/// trailing character in `buf` for the next chunk to complete.
fn take_utf8(buf: &mut Vec<u8>) -> String {
    let mut text = String::with_capacity(buf.len());
    let mut i = 0;
    loop {
        match std::str::from_utf8(&buf[i..]) {
            Ok(s) => {
                text.push_str(s);
                i = buf.len();
                break;
            }
            Err(e) => {
                let valid = i + e.valid_up_to();
                text.push_str(std::str::from_utf8(&buf[i..valid]).expect("validated prefix"));
                match e.error_len() {
                    Some(n) => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        i = valid + n;
                    }
                    None => {
                        i = valid;
                        break;
                    }
                }
            }
        }
    }
    buf.drain(..i);
    text
}

/// A whole JSON response: OpenAI objects field by field, anything else
/// (Anthropic messages, Ollama, errors) string leaf by string leaf. Not JSON:
/// masked as text.
fn mask_json_body(buf: &[u8], rules: &MaskRules, counts: &mut [u32], out: &mut Vec<u8>) {
    if splice::process(
        buf,
        &mut fields::Streams::default(),
        rules,
        counts,
        true,
        out,
    ) {
        return;
    }
    match serde_json::from_slice::<Value>(buf) {
        Ok(Value::Object(mut obj)) if obj.contains_key("choices") => {
            let mut streams = fields::Streams::default();
            openai::process(&mut obj, &mut streams, rules, counts, true);
            out.extend_from_slice(&serde_json::to_vec(&Value::Object(obj)).expect("serialises"));
        }
        Ok(mut v) => {
            fields::mask_leaves(&mut v, rules, counts, &|_| false);
            out.extend_from_slice(&serde_json::to_vec(&v).expect("serialises"));
        }
        Err(_) => out.extend_from_slice(
            rules
                .mask_all(&String::from_utf8_lossy(buf), counts)
                .as_bytes(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_does_not_depend_on_chunking() {
        // Found by the `codecs` fuzz target: an invalid byte followed by a
        // character split across chunks.
        let body = [0xff, 0xd0, 0x92, 0xe2, 0x82, b'I', b'0', 0xc3];
        let mut out = Vec::new();
        assert_eq!(
            take_utf8(&mut body.to_vec()),
            String::from_utf8_lossy(&body[..7])
        );
        for split in 0..=body.len() {
            let mut buf = body[..split].to_vec();
            let mut got = take_utf8(&mut buf);
            buf.extend_from_slice(&body[split..]);
            got.push_str(&take_utf8(&mut buf));
            got.push_str(&String::from_utf8_lossy(&buf));
            out.push(got);
        }
        assert!(out.windows(2).all(|w| w[0] == w[1]), "{out:?}");
        assert_eq!(out[0], String::from_utf8_lossy(&body));
    }
}
