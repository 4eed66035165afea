//! What an audit record holds, in two halves: the cheap in-memory form the
//! proxy fills and queues ([`Call`], [`Outcome`], [`Capture`]) and the JSON
//! the writer encodes from it, off the request path ([`Encoder`]): response
//! text reassembled from the captured stream, bodies masked and capped.

use super::reassemble::{reassemble, Reassembled};
use crate::config::BodyMode;
use crate::identity::Client;
use crate::mask::stream::MaskRules;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// A call as known when the gateway decides to forward it; shared by its
/// `begin` and `call` records.
pub struct Call {
    pub id: String,
    pub started: SystemTime,
    pub client: Option<Arc<Client>>,
    /// The client connection's TLS (HTTPS listeners only).
    pub tls: Option<Arc<crate::tls::listener::TlsInfo>>,
    pub method: String,
    pub path: String,
    pub route: Option<Arc<str>>,
    pub pool: Option<Arc<str>>,
    pub model: Option<String>,
    /// The request body as forwarded (already masked when the route masks prompts).
    pub request_body: Bytes,
    /// The body as stored (masked, capped, as JSON) and whether it was cut:
    /// made once by the writer, for the `begin` and the `call` record.
    pub stored_request: OnceLock<(Option<Box<RawValue>>, bool)>,
    /// The fields both records start with after their `kind` (`"id":…`
    /// to `"model":…`, no braces): encoded once, by the writer.
    pub stored_common: OnceLock<Box<[u8]>>,
}

/// The policy decision taken on a call.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Decision {
    /// `allow`, `deny` or `refused` (not forwarded for a gateway reason).
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The approval request a `require_approval` rule's call went through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRef>,
}

/// A call's approval request, as its `call` record names it.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalRef {
    pub id: String,
    /// `pending` (a ticket was issued), `used`, `denied` or `expired`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
}

/// An error the call ended with.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorInfo {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub message: String,
    /// The internal error (may name hosts): for the audit trail and logs only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Per-entity mask counts and the rules they index into.
#[derive(Default)]
pub struct Masks {
    pub rules: Option<Arc<MaskRules>>,
    pub counts: Vec<u32>,
}

/// How a call ended.
pub struct Outcome {
    pub host: Option<String>,
    pub status: u16,
    pub content_type: String,
    pub response: Capture,
    pub ttfb: Option<Duration>,
    /// From sending the request upstream (after any approval hold) to the
    /// first response body byte sent to the client.
    pub ttft: Option<Duration>,
    pub duration: Duration,
    pub decision: Decision,
    pub error: Option<ErrorInfo>,
    pub request_masks: Masks,
    pub response_masks: Masks,
    /// The response was masked with every entity the audit masks.
    pub response_fully_masked: bool,
}

/// One queued record.
pub enum Entry {
    /// Queued before the call is forwarded.
    Begin(Arc<Call>),
    /// Queued when the call is over (forwarded or not).
    End(Arc<Call>, Box<Outcome>),
    /// A step of an approval request (requested, approved, denied, expired, used).
    Approval(Box<ApprovalStep>),
    /// A `drift_alert` record, whole (made by `crate::drift`).
    Drift(Box<serde_json::Value>),
}

/// One step of an approval request, as the audit trail records it.
pub struct ApprovalStep {
    /// `requested`, `approved`, `denied`, `expired` or `used`.
    pub event: &'static str,
    pub at: SystemTime,
    /// Who took the step: the approver, or the requester's call; `None`
    /// for the gateway itself (expiry).
    pub actor: Option<Arc<Client>>,
    /// The call (request id) the step happened in, if any.
    pub call_id: Option<String>,
    /// Why, where the event alone does not say (e.g. `hold timed out`).
    pub note: Option<String>,
    /// The request after the step (its summary is masked).
    pub approval: crate::approval::store::Approval,
}

/// Bytes of a stream's end kept once the capture is full (for usage and
/// finish reason, which come last).
const TAIL: usize = 16 * 1024;

/// The response bytes sent to the client: the first `limit` bytes, and the
/// last bytes once that overflows. One copy per chunk, no parsing: the
/// writer reassembles the text.
#[derive(Default)]
pub struct Capture {
    head: Vec<u8>,
    tail: Vec<u8>,
    limit: usize,
    total: u64,
    /// When the first bytes were pushed.
    first: Option<std::time::Instant>,
}

impl Capture {
    pub fn new(limit: usize) -> Self {
        Capture {
            limit,
            ..Default::default()
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        if self.first.is_none() && !chunk.is_empty() {
            self.first = Some(std::time::Instant::now());
        }
        self.total += chunk.len() as u64;
        let room = self.limit - self.head.len();
        if chunk.len() <= room {
            self.head.extend_from_slice(chunk);
            return;
        }
        self.head.extend_from_slice(&chunk[..room]);
        self.tail.extend_from_slice(&chunk[room..]);
        if self.tail.len() > 2 * TAIL {
            self.tail.drain(..self.tail.len() - TAIL);
        }
    }

    /// When the first body bytes went to the client.
    pub fn first_byte(&self) -> Option<std::time::Instant> {
        self.first
    }

    /// Bytes sent in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn overflowed(&self) -> bool {
        self.total > self.head.len() as u64
    }
}

/// Encodes records as JSON objects (before sealing), masking and capping
/// bodies as configured.
pub struct Encoder {
    pub bodies: BodyMode,
    pub max_body: usize,
    /// Every entity, label style: what `bodies: masked` applies.
    pub rules: Arc<MaskRules>,
}

/// Text beyond the cap that is masked too, so that an entity straddling the
/// cut is masked whole before it is cut (longer than any built-in entity).
const MASK_MARGIN: usize = 16 * 1024;

#[derive(Serialize)]
struct ClientJson<'a> {
    name: &'a str,
    groups: &'a [String],
    via: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert: Option<&'a crate::identity::cert::PeerIdentity>,
}

#[derive(Serialize)]
struct Common<'a> {
    id: &'a str,
    ts: String,
    client: Option<ClientJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<&'a crate::tls::listener::TlsInfo>,
    method: &'a str,
    path: &'a str,
    route: Option<&'a str>,
    pool: Option<&'a str>,
    model: Option<&'a str>,
}

#[derive(Serialize)]
struct RequestJson<'a> {
    bytes: u64,
    stored: &'static str,
    truncated: bool,
    /// The body itself when it is JSON (and whole), else a string.
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    bytes: u64,
    content_type: &'a str,
    stored: &'static str,
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<super::reassemble::ToolCall>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    more_choices: Vec<String>,
}

#[derive(Serialize)]
struct BeginJson<'a> {
    request: RequestJson<'a>,
}

#[derive(Serialize)]
struct EndJson<'a> {
    host: Option<&'a str>,
    status: u16,
    decision: &'a Decision,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a ErrorInfo>,
    ttfb_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttft_ms: Option<f64>,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a super::reassemble::Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_fingerprint: Option<&'a str>,
    masked: MaskedJson<'a>,
    request: RequestJson<'a>,
    response: ResponseJson<'a>,
}

#[derive(Serialize)]
struct MaskedJson<'a> {
    request: BTreeMap<&'a str, u32>,
    response: BTreeMap<&'a str, u32>,
}

impl Encoder {
    /// Writes a call record: `{"kind":<kind>,` the call's common fields,
    /// then `rest`'s fields (`rest` serialises as a non-empty object).
    fn record(&self, kind: &'static str, c: &Call, rest: &impl Serialize, out: &mut Vec<u8>) {
        let common = c.stored_common.get_or_init(|| {
            let common = Common {
                id: &c.id,
                ts: humantime::format_rfc3339_millis(c.started).to_string(),
                client: c.client.as_deref().map(client_json),
                tls: c.tls.as_deref(),
                method: &c.method,
                path: &c.path,
                route: c.route.as_deref(),
                pool: c.pool.as_deref(),
                model: c.model.as_deref(),
            };
            let json = serde_json::to_vec(&common).expect("records serialise");
            json[1..json.len() - 1].into()
        });
        out.extend_from_slice(b"{\"kind\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",");
        out.extend_from_slice(common);
        let at = out.len();
        serde_json::to_writer(&mut *out, rest).expect("records serialise");
        debug_assert!(out.len() > at + 2 && out[at] == b'{');
        out[at] = b',';
    }

    /// The JSON object of a queued record; for a call's final record, also
    /// its answer as reassembled.
    pub fn encode(&self, entry: &Entry, out: &mut Vec<u8>) -> Option<Reassembled> {
        match entry {
            Entry::Begin(call) => self.begin(call, out),
            Entry::End(call, outcome) => return Some(self.end(call, outcome, out)),
            Entry::Approval(step) => self.approval(step, out),
            Entry::Drift(record) => serde_json::to_writer(out, record).expect("records serialise"),
        }
        None
    }

    /// `{"kind":"approval","event":...,"id":<approval id>,...}`.
    pub fn approval(&self, s: &ApprovalStep, out: &mut Vec<u8>) {
        #[derive(Serialize)]
        struct StepJson<'a> {
            kind: &'static str,
            event: &'static str,
            id: &'a str,
            ts: String,
            actor: Option<ClientJson<'a>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            call_id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            note: Option<&'a str>,
            approval: &'a crate::approval::store::Approval,
        }
        // `bodies: none` keeps prompt text out of the trail: the summary too.
        let stripped;
        let approval = if self.bodies == BodyMode::None {
            stripped = crate::approval::store::Approval {
                summary: String::new(),
                ..s.approval.clone()
            };
            &stripped
        } else {
            &s.approval
        };
        let rec = StepJson {
            kind: "approval",
            event: s.event,
            id: &s.approval.id,
            ts: humantime::format_rfc3339_millis(s.at).to_string(),
            actor: s.actor.as_deref().map(client_json),
            call_id: s.call_id.as_deref(),
            note: s.note.as_deref(),
            approval,
        };
        serde_json::to_writer(out, &rec).expect("records serialise");
    }

    pub fn begin(&self, call: &Call, out: &mut Vec<u8>) {
        let rec = BeginJson {
            request: self.request(call),
        };
        self.record("begin", call, &rec, out);
    }

    /// Also returns the answer as reassembled (for drift statistics).
    pub fn end(&self, call: &Call, o: &Outcome, out: &mut Vec<u8>) -> Reassembled {
        let r = if self.bodies == BodyMode::None && o.response.tail.is_empty() {
            // Usage and metadata still come from the body.
            reassemble(&o.content_type, &o.response.head, &[])
        } else {
            reassemble(&o.content_type, &o.response.head, &o.response.tail)
        };
        let rec = EndJson {
            host: o.host.as_deref(),
            status: o.status,
            decision: &o.decision,
            error: o.error.as_ref(),
            ttfb_ms: o.ttfb.map(millis),
            ttft_ms: o.ttft.map(millis),
            duration_ms: millis(o.duration),
            usage: r.usage.as_ref(),
            finish_reason: r.finish_reason.as_deref(),
            upstream_model: r.model.as_deref(),
            system_fingerprint: r.system_fingerprint.as_deref(),
            masked: MaskedJson {
                request: counts(&o.request_masks),
                response: counts(&o.response_masks),
            },
            request: self.request(call),
            response: self.response(o, &r),
        };
        self.record("call", call, &rec, out);
        r
    }

    fn stored(&self) -> &'static str {
        match self.bodies {
            BodyMode::Masked => "masked",
            BodyMode::Raw => "raw",
            BodyMode::None => "none",
        }
    }

    fn request<'a>(&self, call: &'a Call) -> RequestJson<'a> {
        let raw = &call.request_body;
        let (body, truncated) = call.stored_request.get_or_init(|| match self.bodies {
            BodyMode::None => (None, false),
            _ => {
                let head = &raw[..raw.len().min(self.max_body + MASK_MARGIN)];
                let text = std::str::from_utf8(head).map_or_else(
                    |_| String::from_utf8_lossy(head),
                    std::borrow::Cow::Borrowed,
                );
                let (t, cut) = self.store(&text, raw.len() > self.max_body, true);
                // Embedded as JSON when it is JSON: readable, and no escaping.
                // A record is one line: pretty-printed JSON is re-encoded compactly.
                let json = match serde_json::from_str::<Box<RawValue>>(&t) {
                    Ok(raw) if !raw.get().contains(['\n', '\r']) => raw,
                    Ok(raw) => serde_json::from_str::<serde_json::Value>(raw.get())
                        .ok()
                        .and_then(|v| serde_json::value::to_raw_value(&v).ok())
                        .expect("valid JSON re-encodes"),
                    Err(_) => {
                        let quoted = serde_json::to_string(&t).expect("a string serialises");
                        RawValue::from_string(quoted).expect("a JSON string is JSON")
                    }
                };
                (Some(json), cut)
            }
        });
        RequestJson {
            bytes: raw.len() as u64,
            stored: self.stored(),
            truncated: *truncated,
            body: body.as_deref(),
        }
    }

    fn response<'a>(&self, o: &'a Outcome, r: &Reassembled) -> ResponseJson<'a> {
        let mask = !o.response_fully_masked;
        let mut truncated = o.response.overflowed();
        let mut field = |s: &str| -> Option<String> {
            if self.bodies == BodyMode::None || s.is_empty() {
                return None;
            }
            let (t, cut) = self.store(s, false, mask);
            truncated |= cut;
            Some(t)
        };
        let text = field(&r.text).or_else(|| (self.bodies != BodyMode::None).then(String::new));
        let reasoning = field(&r.reasoning);
        let refusal = field(&r.refusal);
        let more_choices = r.more_choices.iter().filter_map(|c| field(c)).collect();
        let tool_calls = if self.bodies == BodyMode::None {
            Vec::new()
        } else {
            r.tool_calls
                .iter()
                .map(|t| super::reassemble::ToolCall {
                    name: t.name.clone(),
                    arguments: field(&t.arguments).unwrap_or_default(),
                })
                .collect()
        };
        ResponseJson {
            bytes: o.response.total(),
            content_type: &o.content_type,
            stored: self.stored(),
            truncated,
            text,
            reasoning,
            refusal,
            tool_calls,
            more_choices,
        }
    }

    /// `text` masked (under `bodies: masked`, when `mask`) and cut to the
    /// cap; also says whether it was cut.
    fn store(&self, text: &str, already_cut: bool, mask: bool) -> (String, bool) {
        let end = floor_char(text, text.len().min(self.max_body + MASK_MARGIN));
        let text = &text[..end];
        let mut s = if self.bodies == BodyMode::Masked && mask {
            let mut sink = vec![0; self.rules.entity_count()];
            self.rules.mask_all(text, &mut sink)
        } else {
            text.to_string()
        };
        let cut = s.len() > self.max_body;
        if cut {
            s.truncate(floor_char(&s, self.max_body));
        }
        (s, cut || already_cut)
    }
}

fn client_json(cl: &Client) -> ClientJson<'_> {
    ClientJson {
        name: &cl.name,
        groups: &cl.groups,
        via: cl.via.as_str(),
        cert: cl.cert.as_deref(),
    }
}

/// The time now, as records write it (`ts`).
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn counts(m: &Masks) -> BTreeMap<&str, u32> {
    let Some(rules) = &m.rules else {
        return BTreeMap::new();
    };
    rules
        .detector
        .names()
        .iter()
        .zip(&m.counts)
        .filter(|(_, n)| **n > 0)
        .map(|(name, n)| (name.as_str(), *n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::detect::{Detector, BUILTIN};
    use crate::mask::replace::Style;

    fn encoder(bodies: BodyMode, max_body: usize) -> Encoder {
        let detector = Arc::new(Detector::new(&BUILTIN, &[]).unwrap());
        Encoder {
            bodies,
            max_body,
            rules: Arc::new(MaskRules::uniform(detector, Style::Label, 16384)),
        }
    }

    /// A call of no client, started at the epoch, with `body`.
    fn test_call(id: &str, path: &str, body: &str) -> Call {
        Call {
            id: id.into(),
            started: SystemTime::UNIX_EPOCH,
            client: None,
            tls: None,
            method: "POST".into(),
            path: path.into(),
            route: None,
            pool: None,
            model: None,
            request_body: Bytes::copy_from_slice(body.as_bytes()),
            stored_request: OnceLock::new(),
            stored_common: OnceLock::new(),
        }
    }

    fn begin_json(enc: &Encoder, body: &str) -> serde_json::Value {
        let call = test_call("r1", "/v1/chat/completions", body);
        let mut out = Vec::new();
        enc.begin(&call, &mut out);
        serde_json::from_slice(&out).unwrap()
    }

    /// The record's bytes, key order included (the common fields are
    /// encoded once per call and spliced in after `kind`).
    #[test]
    fn a_begin_record_is_pinned_to_its_bytes() {
        let enc = encoder(BodyMode::Masked, 1000);
        let call = Call {
            route: Some("r".into()),
            model: Some("m".into()),
            ..test_call("r1", "/v1/chat/completions", r#"{"prompt":"hi"}"#)
        };
        let mut out = Vec::new();
        enc.begin(&call, &mut out);
        let common = r#""id":"r1","ts":"1970-01-01T00:00:00.000Z","client":null,"method":"POST","path":"/v1/chat/completions","route":"r","pool":null,"model":"m""#;
        let request =
            r#""request":{"bytes":15,"stored":"masked","truncated":false,"body":{"prompt":"hi"}}"#;
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(r#"{{"kind":"begin",{common},{request}}}"#)
        );
    }

    #[test]
    fn request_bodies_are_stored_as_json_or_text_masked_and_capped() {
        let enc = encoder(BodyMode::Masked, 1000);
        let v = begin_json(&enc, r#"{"prompt":"mail bob@corp.com"}"#);
        assert_eq!(v["request"]["body"]["prompt"], "mail [EMAIL]");
        assert_eq!(v["request"]["truncated"], false);
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000Z");
        let v = begin_json(&enc, "plain bob@corp.com");
        assert_eq!(v["request"]["body"], "plain [EMAIL]");
        // Pretty-printed JSON must not split the record over several lines.
        let call = r#"{
  "prompt": "mail bob@corp.com",
  "n": 1
}"#;
        let mut out = Vec::new();
        let c = test_call("r2", "/", call);
        encoder(BodyMode::Raw, 1000).begin(&c, &mut out);
        assert!(!out.contains(&b'\n'), "{}", String::from_utf8_lossy(&out));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["request"]["body"]["prompt"], "mail bob@corp.com");

        // Cut bodies are strings, cut after masking: no half entity survives.
        let enc = encoder(BodyMode::Masked, 20);
        let v = begin_json(&enc, r#"{"prompt":"4111 1111 1111 1111 and more text"}"#);
        let body = v["request"]["body"].as_str().unwrap();
        assert_eq!(v["request"]["truncated"], true);
        assert!(body.len() <= 20 && !body.contains("4111"), "{body}");

        let v = begin_json(&encoder(BodyMode::Raw, 1000), r#"{"p":"bob@corp.com"}"#);
        assert_eq!(v["request"]["body"]["p"], "bob@corp.com");
        assert_eq!(v["request"]["stored"], "raw");
        let v = begin_json(&encoder(BodyMode::None, 1000), r#"{"p":"bob@corp.com"}"#);
        assert!(v["request"].get("body").is_none());
        assert_eq!(v["request"]["bytes"], 20);
    }

    #[test]
    fn approval_steps_keep_the_summary_unless_bodies_are_off() {
        let approval: crate::approval::store::Approval =
            serde_json::from_value(serde_json::json!({
                "id": "apr_1", "status": "pending", "mode": "hold", "requester": "bob",
                "requester_via": "api_key", "requester_groups": [], "route": "r", "path": "/",
                "model": null, "rule": "big", "reason": "rule `big`", "summary": "mail [EMAIL]",
                "body_sha256": "00", "request_sha256": "11", "created_at_ms": 1, "expires_at_ms": 2
            }))
            .unwrap();
        let step = ApprovalStep {
            event: "requested",
            at: SystemTime::UNIX_EPOCH,
            actor: None,
            call_id: Some("c1".into()),
            note: None,
            approval,
        };
        let encode = |bodies| {
            let mut out = Vec::new();
            encoder(bodies, 1000).approval(&step, &mut out);
            serde_json::from_slice::<serde_json::Value>(&out).unwrap()
        };
        let v = encode(BodyMode::Masked);
        assert_eq!(
            (v["kind"].as_str(), v["event"].as_str(), v["id"].as_str()),
            (Some("approval"), Some("requested"), Some("apr_1"))
        );
        assert_eq!(v["approval"]["summary"], "mail [EMAIL]");
        assert_eq!(v["call_id"], "c1");
        let v = encode(BodyMode::None);
        assert_eq!(v["approval"]["summary"], "");
        assert_eq!(v["approval"]["rule"], "big");
    }

    #[test]
    fn capture_keeps_head_and_tail() {
        let mut c = Capture::new(10);
        c.push(b"0123456");
        c.push(b"789abc");
        assert_eq!(c.head, b"0123456789");
        assert_eq!(c.tail, b"abc");
        assert!(c.overflowed());
        for _ in 0..5000 {
            c.push(b"0123456789abcdef");
        }
        assert!(c.tail.len() <= 2 * TAIL);
        assert!(c.tail.ends_with(b"0123456789abcdef"));
        assert_eq!(c.total(), 13 + 5000 * 16);
    }
}
