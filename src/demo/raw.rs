//! `POST /__raw`: the test chooses the exact response bytes, for wire-format tests.
//!
//! Body: `{"status": 200, "headers": {"content-type": "text/event-stream"},
//! "chunks": ["…", [195], "…"], "delay_ms": 10, "close_early": true}`. The answer has
//! that status and those headers, is always chunked (a `content-length` or
//! `transfer-encoding` in `headers` is ignored), and writes each chunk as its own
//! flushed body write, `delay_ms` apart (default: the `x-demo-delay-ms` delay), then
//! ends the body. Nothing is added: no `[DONE]`, no final event. A chunk is a string,
//! or an array of byte values so a test can split a UTF-8 character across writes.
//! `close_early` is accepted for readability of tests that end a stream abruptly; the
//! bytes are the test's own either way. `"abort": true` is a host dying mid-answer: the
//! connection closes after the last chunk without ending the chunked body.

use bytes::Bytes;
use pingora_http::ResponseHeader;
use serde_json::Value;
use std::time::Duration;

/// A parsed `/__raw` request.
pub(super) struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    pub chunks: Vec<Bytes>,
    pub delay: Duration,
    /// Close the connection without ending the body.
    pub abort: bool,
}

impl RawReply {
    /// Parses a `/__raw` body; the error names the offending key.
    pub fn from_body(body: &Value, default_delay: Duration) -> Result<RawReply, String> {
        let status = match body.get("status") {
            None => 200,
            Some(v) => v
                .as_u64()
                .filter(|c| (200..=599).contains(c))
                .ok_or("`status` must be a number from 200 to 599")? as u16,
        };
        let mut headers = Vec::new();
        match body.get("headers") {
            None => {}
            Some(Value::Object(map)) => {
                for (name, value) in map {
                    let value = (value.as_str())
                        .ok_or_else(|| format!("`headers.{name}` must be a string"))?;
                    headers.push((name.to_ascii_lowercase(), value.to_string()));
                }
            }
            Some(_) => return Err("`headers` must be an object of strings".into()),
        }
        let chunks = match body.get("chunks") {
            None => Vec::new(),
            Some(Value::Array(items)) => (items.iter().enumerate())
                .map(|(i, c)| {
                    chunk_bytes(c).ok_or_else(|| {
                        format!("`chunks[{i}]` must be a string or an array of bytes")
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("`chunks` must be an array".into()),
        };
        let delay = match body.get("delay_ms") {
            None => default_delay,
            Some(v) => Duration::from_millis(v.as_u64().ok_or("`delay_ms` must be a number")?),
        };
        if body.get("close_early").is_some_and(|v| !v.is_boolean()) {
            return Err("`close_early` must be a boolean".into());
        }
        let abort = match body.get("abort") {
            None => false,
            Some(v) => v.as_bool().ok_or("`abort` must be a boolean")?,
        };
        Ok(RawReply {
            status,
            headers,
            chunks,
            delay,
            abort,
        })
    }

    /// The response header: the requested status and headers, chunked.
    pub fn header(&self, upstream_name: &str) -> ResponseHeader {
        let mut h = ResponseHeader::build(self.status, Some(self.headers.len() + 2))
            .expect("status checked when parsed");
        let _ = h.insert_header("x-demo-upstream", upstream_name);
        for (name, value) in &self.headers {
            if name != "content-length" && name != "transfer-encoding" {
                let _ = h.append_header(name.clone(), value.as_str());
            }
        }
        let _ = h.insert_header("transfer-encoding", "chunked");
        h
    }
}

/// A chunk: a string's UTF-8 bytes, or an array of byte values.
fn chunk_bytes(v: &Value) -> Option<Bytes> {
    match v {
        Value::String(s) => Some(Bytes::from(s.clone())),
        Value::Array(items) => {
            let bytes = items
                .iter()
                .map(|b| b.as_u64().filter(|b| *b <= 255).map(|b| b as u8));
            bytes.collect::<Option<Vec<u8>>>().map(Bytes::from)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_status_headers_chunks_and_delay() {
        let body = json!({
            "status": 201,
            "headers": {"Content-Type": "text/event-stream", "content-length": "5", "x-a": "b"},
            "chunks": ["data: caf", [195], [169, 10, 10]],
            "delay_ms": 10,
            "close_early": true,
        });
        let r = RawReply::from_body(&body, Duration::from_millis(99)).unwrap();
        assert_eq!(r.delay, Duration::from_millis(10));
        assert_eq!(r.chunks.concat(), "data: café\n\n".as_bytes());
        assert_eq!(r.chunks.len(), 3);
        let h = r.header("up-a");
        assert_eq!(h.status.as_u16(), 201);
        assert_eq!(h.headers["content-type"], "text/event-stream");
        assert_eq!(h.headers["x-a"], "b");
        assert_eq!(h.headers["x-demo-upstream"], "up-a");
        assert_eq!(h.headers["transfer-encoding"], "chunked");
        assert!(h.headers.get("content-length").is_none());
    }

    #[test]
    fn defaults_and_errors() {
        let r = RawReply::from_body(&json!({}), Duration::from_millis(20)).unwrap();
        assert_eq!((r.status, r.chunks.len()), (200, 0));
        assert_eq!(r.delay, Duration::from_millis(20));
        let err = |body: Value| RawReply::from_body(&body, Duration::ZERO).err().unwrap();
        assert!(err(json!({"status": 99})).contains("`status`"));
        assert!(err(json!({"headers": {"a": 1}})).contains("`headers.a`"));
        assert!(err(json!({"chunks": ["ok", [256]]})).contains("`chunks[1]`"));
        assert!(err(json!({"chunks": "x"})).contains("`chunks`"));
        assert!(err(json!({"delay_ms": "1"})).contains("`delay_ms`"));
        assert!(err(json!({"close_early": 1})).contains("`close_early`"));
    }
}
