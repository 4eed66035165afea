//! Request intake: reading the whole client body (bounded in size and time)
//! before anything is sent upstream, and probing it for the `model` field.
//!
//! The body is read up front because routing needs `model` before an upstream
//! is chosen, and later stages (policy, approval, audit) need the whole
//! request. It is replayed upstream by `request_body_filter`
//! (see vendor/PATCHES.md for why that needs a patched pingora-proxy).

use crate::errors::ClientError;
use bytes::{Bytes, BytesMut};
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use serde::Deserialize;
use std::borrow::Cow;
use std::time::Duration;

/// Reads the request body, refusing more than `limit` bytes (413) or a body
/// that takes longer than `timeout` to arrive (408).
pub async fn read_body(
    session: &mut Session,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ClientError> {
    if let Some(len) = declared_length(session.req_header()) {
        if len > limit {
            return Err(ClientError::too_large(limit));
        }
    }
    // The client waits for a go-ahead before sending the body; the body is
    // read here, so the go-ahead comes from here too (and `Expect` is not
    // forwarded: the upstream gets the body at once).
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects_continue {
        session
            .req_header_mut()
            .remove_header(&http::header::EXPECT);
        if let Err(e) = session.as_downstream_mut().write_continue_response().await {
            log::debug!("could not send 100 Continue: {e}");
        }
    }
    // One clock read for the whole body: `timeout_at` reads none when the
    // read is ready at once (a body that came with its header), where
    // `timeout(remaining)` took two per chunk.
    let deadline = tokio::time::Instant::now() + timeout;
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut total = 0usize;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, session.read_request_body()).await {
            Err(_) => {
                return Err(ClientError::new(
                    408,
                    "invalid_request_error",
                    Some("request_timeout"),
                    "The request body was not received in time.",
                ))
            }
            Ok(Err(e)) => {
                log::debug!("reading request body failed: {e}");
                return Err(ClientError::bad_request(
                    "The request body could not be read (malformed framing or connection error).",
                ));
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk,
        };
        total += chunk.len();
        if total > limit {
            return Err(ClientError::too_large(limit));
        }
        // One chunk (the common case) is kept as is; more are concatenated.
        match (&mut first, &mut rest) {
            (None, _) => first = Some(chunk),
            (Some(f), None) => {
                let mut buf = BytesMut::with_capacity(total.max(f.len() * 2));
                buf.extend_from_slice(f);
                buf.extend_from_slice(&chunk);
                rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&chunk),
        }
    }
    Ok(match (first, rest) {
        (_, Some(buf)) => buf.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    })
}

fn declared_length(req: &RequestHeader) -> Option<usize> {
    req.headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// True when the request body is to be read as JSON: declared JSON, or no
/// `Content-Type` at all and a body that starts like a JSON object (servers
/// such as vLLM and Ollama accept those, so the gateway must not skip them).
pub fn is_json(req: &RequestHeader, body: &[u8]) -> bool {
    match req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        Some(ct) => {
            let ct = ct.split(';').next().unwrap_or("").trim();
            ct.eq_ignore_ascii_case("application/json") || ct.ends_with("+json")
        }
        None => body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
    }
}

/// Refuses a path that a model server would read differently from the
/// gateway: percent-escaped unreserved characters (`/v1/%65mbeddings`),
/// empty or dot segments (`//`, `/./`, `/../`). Routes and rules match the
/// path as written, so such a path could slip past a rule that names the
/// decoded one. Escapes of reserved characters (`%2F` in a model id) stay.
pub fn check_path(path: &str) -> Result<(), ClientError> {
    // One pass over the bytes (this runs on every call).
    let b = path.as_bytes();
    let mut bad = false;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'/' => {
                // The segment this slash starts: empty before another slash
                // (`//`), or a dot segment.
                let seg = b[i + 1..].split(|&c| c == b'/').next().unwrap_or_default();
                bad |= (seg.is_empty() && i + 1 < b.len()) || seg == b"." || seg == b"..";
            }
            b'%' => bad |= bad_escape(b, i),
            _ => {}
        }
    }
    if bad {
        return Err(ClientError::bad_request(
            "The request path is not in normal form (escaped letters or digits, or empty or dot segments).",
        ));
    }
    Ok(())
}

/// Whether the `%` at `b[i]` escapes an unreserved character or is not
/// followed by two hex digits.
fn bad_escape(b: &[u8], i: usize) -> bool {
    // Two hex digits exactly: `from_str_radix` alone would also take a sign
    // (`%+A`).
    let hex = b
        .get(i + 1..i + 3)
        .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
        .and_then(|h| std::str::from_utf8(h).ok());
    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
        Some(c) => c.is_ascii_alphanumeric() || b"-._~".contains(&c),
        None => true,
    }
}

#[derive(Deserialize)]
struct ModelProbe<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
}

/// The `model` of a JSON body; the whole body must be a valid JSON object.
/// Non-JSON requests (by `Content-Type`) and empty bodies have no model.
pub fn probe_model(req: &RequestHeader, body: &[u8]) -> Result<Option<String>, ClientError> {
    if body.is_empty() || !is_json(req, body) {
        return Ok(None);
    }
    model_of(body).map_err(|e| {
        ClientError::bad_request(format!(
            "The request body is not valid JSON for this API: {e}."
        ))
    })
}

/// The `model` of a JSON body, whatever its `Content-Type`: the exact key's
/// string (or `null`); the whole body must be valid JSON.
pub fn model_of(body: &[u8]) -> Result<Option<String>, serde_json::Error> {
    serde_json::from_slice::<ModelProbe>(body).map(|p| p.model.map(Cow::into_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_req() -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        r.insert_header("content-type", "application/json; charset=utf-8")
            .unwrap();
        r
    }

    #[test]
    fn paths_in_normal_form_only() {
        for ok in [
            "/v1/chat/completions",
            "/v1/models/meta-llama%2FLlama-3",
            "/",
            "/api/x.y",
        ] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/v1/%65mbeddings",
            "/v1//chat",
            "/v1/./chat",
            "/v1/x/../embeddings",
            "/v1/..",
            "/v1/%zz",
            "/v1/%4",
            "/v1/%+A",
            "/v1/%-1",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    /// The first version of `check_path` (its escape check now shared as
    /// `bad_escape`), kept as the oracle for the one-pass one.
    fn check_path_reference(path: &str) -> bool {
        let b = path.as_bytes();
        let mut bad = path.contains("//");
        for seg in path.split('/').skip(1) {
            bad |= seg == "." || seg == "..";
        }
        for (i, _) in path.match_indices('%') {
            bad |= bad_escape(b, i);
        }
        !bad
    }

    proptest::proptest! {
        #[test]
        fn check_path_agrees_with_its_reference(path in "[/.%a-fA-F0-9xz~_+-]{0,24}") {
            proptest::prop_assert_eq!(check_path(&path).is_ok(), check_path_reference(&path));
        }

        #[test]
        fn check_path_agrees_on_any_text(path in "\\PC{0,16}") {
            proptest::prop_assert_eq!(check_path(&path).is_ok(), check_path_reference(&path));
        }
    }

    #[test]
    fn probes_model_and_rejects_malformed_json() {
        let r = json_req();
        let m = probe_model(
            &r,
            br#"{"messages":[{"role":"user","content":"hi"}],"model":"llama-3"}"#,
        );
        assert_eq!(m.unwrap().as_deref(), Some("llama-3"));
        let m = probe_model(&r, br#"{"model":"a\u00e9b"}"#).unwrap();
        assert_eq!(m.as_deref(), Some("aéb"));
        assert_eq!(probe_model(&r, b"{}").unwrap(), None);
        let e = probe_model(&r, br#"{"model": "x", "#).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        assert_eq!(probe_model(&r, br#"{"model": 7}"#).unwrap_err().status, 400);
        assert_eq!(probe_model(&r, b"[1,2]").unwrap_err().status, 400);
        let mut form = RequestHeader::build("POST", b"/x", None).unwrap();
        form.insert_header("content-type", "text/plain").unwrap();
        assert_eq!(probe_model(&form, br#"{"model":"x"}"#).unwrap(), None);
        // No Content-Type: a JSON object body is still JSON (vLLM accepts it).
        let bare = RequestHeader::build("POST", b"/x", None).unwrap();
        assert_eq!(
            probe_model(&bare, b" {\"model\":\"x\"}")
                .unwrap()
                .as_deref(),
            Some("x")
        );
        assert_eq!(probe_model(&bare, b"not json").unwrap(), None);
    }
}
