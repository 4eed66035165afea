//! What an audit record holds, in two halves: the cheap in-memory form the
//! proxy fills and queues ([`Call`], [`Outcome`], [`Capture`]) and the JSON
//! the writer encodes from it, off the request path ([`Encoder`]): response
//! text reassembled from the captured stream, bodies masked and capped.

use super::reassemble::{reassemble, Reassembled};
use crate::config::BodyMode;
use crate::identity::Client;
use crate::json::{self, Object};
use crate::mask::stream::MaskRules;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use std::io::Write as _;
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

/// The stored request body: as JSON when it is JSON, else a string.
struct StoredRequest<'a> {
    bytes: u64,
    truncated: bool,
    body: Option<&'a RawValue>,
}

/// The stored answer (`bodies: none`: none of the text fields).
struct StoredResponse {
    truncated: bool,
    text: Option<String>,
    reasoning: Option<String>,
    refusal: Option<String>,
    tool_calls: Vec<super::reassemble::ToolCall>,
    more_choices: Vec<String>,
}

impl Encoder {
    /// Writes a call record: `{"kind":<kind>,` the call's common fields,
    /// then the fields `rest` writes (at least one).
    ///
    /// Records are written by hand (keys as literals, strings through
    /// [`json::write_str`]), not by serde_json: its writer escaped every
    /// key byte by byte and was the writer thread's largest cost after the
    /// hash chain in the full JSON profile. `testdata/call_records.jsonl`
    /// pins the bytes serde_json wrote.
    fn record(
        &self,
        kind: &'static str,
        c: &Call,
        out: &mut Vec<u8>,
        rest: impl FnOnce(&mut Object),
    ) {
        let common = c.stored_common.get_or_init(|| {
            let mut buf = Vec::with_capacity(256);
            let mut o = Object::start(&mut buf);
            o.str("id", &c.id);
            // Written in place: RFC 3339 needs no escaping.
            let ts = o.key("ts");
            write!(ts, "\"{}\"", humantime::format_rfc3339_millis(c.started))
                .expect("writing to a Vec");
            write_client(o.key("client"), c.client.as_deref());
            if let Some(tls) = c.tls.as_deref() {
                o.serde("tls", tls);
            }
            o.str("method", &c.method);
            o.str("path", &c.path);
            o.opt_str("route", c.route.as_deref());
            o.opt_str("pool", c.pool.as_deref());
            o.opt_str("model", c.model.as_deref());
            o.end();
            buf[1..buf.len() - 1].into()
        });
        out.extend_from_slice(b"{\"kind\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",");
        out.extend_from_slice(common);
        let mut o = Object::resume(out);
        rest(&mut o);
        o.end();
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
            actor: Box<RawValue>,
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
        let mut actor = Vec::new();
        write_client(&mut actor, s.actor.as_deref());
        let actor = String::from_utf8(actor).expect("JSON is UTF-8");
        let rec = StepJson {
            kind: "approval",
            event: s.event,
            id: &s.approval.id,
            ts: humantime::format_rfc3339_millis(s.at).to_string(),
            actor: RawValue::from_string(actor).expect("a client is JSON"),
            call_id: s.call_id.as_deref(),
            note: s.note.as_deref(),
            approval,
        };
        serde_json::to_writer(out, &rec).expect("records serialise");
    }

    pub fn begin(&self, call: &Call, out: &mut Vec<u8>) {
        let request = self.request(call);
        self.record("begin", call, out, |o| {
            self.write_request(o.key("request"), &request)
        });
    }

    /// Also returns the answer as reassembled (for drift statistics).
    pub fn end(&self, call: &Call, o: &Outcome, out: &mut Vec<u8>) -> Reassembled {
        let r = if self.bodies == BodyMode::None && o.response.tail.is_empty() {
            // Usage and metadata still come from the body.
            reassemble(&o.content_type, &o.response.head, &[])
        } else {
            reassemble(&o.content_type, &o.response.head, &o.response.tail)
        };
        let request = self.request(call);
        let response = self.response(o, &r);
        self.record("call", call, out, |rec| {
            rec.opt_str("host", o.host.as_deref());
            rec.uint("status", u64::from(o.status));
            rec.serde("decision", &o.decision);
            if let Some(error) = &o.error {
                rec.serde("error", error);
            }
            rec.serde("ttfb_ms", &o.ttfb.map(millis));
            if let Some(ttft) = o.ttft {
                rec.serde("ttft_ms", &millis(ttft));
            }
            rec.serde("duration_ms", &millis(o.duration));
            if let Some(usage) = &r.usage {
                rec.serde("usage", usage);
            }
            rec.some_str("finish_reason", r.finish_reason.as_deref());
            rec.some_str("upstream_model", r.model.as_deref());
            rec.some_str("system_fingerprint", r.system_fingerprint.as_deref());
            let mut masked = Object::start(rec.key("masked"));
            write_counts(masked.key("request"), &o.request_masks);
            write_counts(masked.key("response"), &o.response_masks);
            masked.end();
            self.write_request(rec.key("request"), &request);
            let mut resp = Object::start(rec.key("response"));
            resp.uint("bytes", o.response.total());
            resp.str("content_type", &o.content_type);
            resp.str("stored", self.stored());
            resp.bool("truncated", response.truncated);
            resp.some_str("text", response.text.as_deref());
            resp.some_str("reasoning", response.reasoning.as_deref());
            resp.some_str("refusal", response.refusal.as_deref());
            if !response.tool_calls.is_empty() {
                resp.serde("tool_calls", &response.tool_calls);
            }
            if !response.more_choices.is_empty() {
                resp.serde("more_choices", &response.more_choices);
            }
            resp.end();
        });
        r
    }

    fn stored(&self) -> &'static str {
        match self.bodies {
            BodyMode::Masked => "masked",
            BodyMode::Raw => "raw",
            BodyMode::None => "none",
        }
    }

    fn write_request(&self, out: &mut Vec<u8>, r: &StoredRequest) {
        let mut o = Object::start(out);
        o.uint("bytes", r.bytes);
        o.str("stored", self.stored());
        o.bool("truncated", r.truncated);
        if let Some(body) = r.body {
            o.key("body").extend_from_slice(body.get().as_bytes());
        }
        o.end();
    }

    fn request<'a>(&self, call: &'a Call) -> StoredRequest<'a> {
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
                    Ok(raw) if memchr::memchr2(b'\n', b'\r', raw.get().as_bytes()).is_none() => raw,
                    Ok(raw) => serde_json::from_str::<serde_json::Value>(raw.get())
                        .ok()
                        .and_then(|v| serde_json::value::to_raw_value(&v).ok())
                        .expect("valid JSON re-encodes"),
                    Err(_) => {
                        let mut quoted = Vec::with_capacity(t.len() + 2);
                        json::write_str(&mut quoted, &t);
                        let quoted = String::from_utf8(quoted).expect("JSON is UTF-8");
                        RawValue::from_string(quoted).expect("a JSON string is JSON")
                    }
                };
                (Some(json), cut)
            }
        });
        StoredRequest {
            bytes: raw.len() as u64,
            truncated: *truncated,
            body: body.as_deref(),
        }
    }

    fn response(&self, o: &Outcome, r: &Reassembled) -> StoredResponse {
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
        StoredResponse {
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

/// `{"name":…,"groups":[…],"via":…,"cert":…}`, or `null`.
fn write_client(out: &mut Vec<u8>, client: Option<&Client>) {
    let Some(cl) = client else {
        out.extend_from_slice(b"null");
        return;
    };
    let mut o = Object::start(out);
    o.str("name", &cl.name);
    let groups = o.key("groups");
    groups.push(b'[');
    for (i, g) in cl.groups.iter().enumerate() {
        if i > 0 {
            groups.push(b',');
        }
        json::write_str(groups, g);
    }
    groups.push(b']');
    o.str("via", cl.via.as_str());
    if let Some(cert) = cl.cert.as_deref() {
        o.serde("cert", cert);
    }
    o.end();
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

/// `{"EMAIL":2,…}`: the entities masked at least once, in name order.
fn write_counts(out: &mut Vec<u8>, m: &Masks) {
    let mut counts: Vec<(&str, u32)> = match &m.rules {
        Some(rules) => rules
            .detector
            .names()
            .iter()
            .zip(&m.counts)
            .filter(|(_, n)| **n > 0)
            .map(|(name, n)| (name.as_str(), *n))
            .collect(),
        None => Vec::new(),
    };
    counts.sort_unstable();
    let mut o = Object::start(out);
    for (name, n) in counts {
        o.uint(name, u64::from(n));
    }
    o.end();
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

    /// The `begin` and `call` records of a call with every optional field
    /// the encoder writes, as two lines: the hand-written encoder must
    /// write what serde_json wrote.
    fn full_call_record(bodies: BodyMode, fully_masked: bool) -> String {
        let enc = encoder(bodies, 1000);
        let cert = crate::identity::cert::PeerIdentity {
            cn: Some("svc \"a\"".into()),
            dns: vec!["svc.internal".into()],
            serial: "0a".into(),
            sha256: "ff".into(),
            ..Default::default()
        };
        let client = Client {
            name: "ops\tteam".into(),
            groups: vec!["admins".into(), "gr\u{e9}upe".into()],
            via: crate::identity::Via::ClientCert,
            label: "ops".into(),
            cert: Some(Arc::new(cert)),
        };
        let tls = crate::tls::listener::TlsInfo {
            listener: "https".into(),
            version: "TLSv1.3",
            cipher: "TLS_AES_128_GCM_SHA256",
            sni: Some("gw.example".into()),
        };
        let call = Call {
            client: Some(Arc::new(client)),
            tls: Some(Arc::new(tls)),
            route: Some("chat".into()),
            pool: Some("gpu".into()),
            model: Some("llama-3".into()),
            started: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            ..test_call(
                "r9",
                "/v1/chat/completions?x=\"1\"",
                r#"{"prompt":"mail bob@corp.com"}"#,
            )
        };
        let body = r#"{"id":"c","model":"llama-3-up","system_fingerprint":"fp_1","choices":[{"index":0,"message":{"role":"assistant","content":"Hi \"there\"\n\u0001 mail bob@corp.com","reasoning_content":"think of bob@corp.com","refusal":"no","tool_calls":[{"id":"t","type":"function","function":{"name":"lookup","arguments":"{\"who\":\"bob@corp.com\"}"}}]},"finish_reason":"tool_calls"},{"index":1,"message":{"role":"assistant","content":"second\tone"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#;
        let mut response = Capture::new(4096);
        response.push(body.as_bytes());
        let n = enc.rules.entity_count();
        let mut request_counts = vec![0; n];
        request_counts[0] = 1;
        let mut response_counts = vec![0; n];
        // In name order CREDIT_CARD, EMAIL, SECRET; not in index order.
        response_counts[0] = 1;
        response_counts[2] = 3;
        response_counts[n - 1] = 2;
        let outcome = Outcome {
            host: Some("10.0.0.7:8000".into()),
            status: 200,
            content_type: "application/json; charset=utf-8".into(),
            response,
            ttfb: Some(Duration::from_micros(1_234_567)),
            ttft: Some(Duration::from_nanos(1_500)),
            duration: Duration::from_secs(2),
            decision: Decision {
                action: "allow",
                reason: Some("rule `big` \"approved\"".into()),
                approval: Some(ApprovalRef {
                    id: "apr_1".into(),
                    status: "used",
                    decided_by: Some("alice".into()),
                }),
            },
            error: Some(ErrorInfo {
                kind: "upstream_error",
                code: None,
                message: "the model \"went\" away".into(),
                detail: Some("10.0.0.7:8000 reset".into()),
            }),
            request_masks: Masks {
                rules: Some(enc.rules.clone()),
                counts: request_counts,
            },
            response_masks: Masks {
                rules: Some(enc.rules.clone()),
                counts: response_counts,
            },
            response_fully_masked: fully_masked,
        };
        let mut out = Vec::new();
        enc.begin(&call, &mut out);
        out.push(b'\n');
        enc.end(&call, &outcome, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// The bytes pinned in `testdata/call_records.jsonl` were written by
    /// the serde_json encoder this one replaced.
    #[test]
    fn a_call_record_is_pinned_to_its_bytes() {
        let mut got = Vec::new();
        for (bodies, fully_masked) in [
            (BodyMode::Masked, false),
            (BodyMode::Masked, true),
            (BodyMode::Raw, false),
            (BodyMode::None, false),
        ] {
            got.extend(
                full_call_record(bodies, fully_masked)
                    .lines()
                    .map(String::from),
            );
        }
        // The fewest fields: no client, route, host, timings, error or body.
        let enc = encoder(BodyMode::Masked, 1000);
        let call = test_call("r10", "/v1/models", "");
        let outcome = Outcome {
            host: None,
            status: 503,
            content_type: String::new(),
            response: Capture::new(0),
            ttfb: None,
            ttft: None,
            duration: Duration::from_micros(10),
            decision: Decision {
                action: "refused",
                ..Default::default()
            },
            error: None,
            request_masks: Masks::default(),
            response_masks: Masks::default(),
            response_fully_masked: false,
        };
        let mut out = Vec::new();
        enc.end(&call, &outcome, &mut out);
        got.push(String::from_utf8(out).unwrap());
        let want: Vec<&str> = include_str!("testdata/call_records.jsonl")
            .lines()
            .collect();
        assert_eq!(got.len(), want.len());
        for (got, want) in got.iter().zip(want) {
            assert_eq!(got, want);
        }
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
        assert!(v["actor"].is_null());
        let v = encode(BodyMode::None);
        assert_eq!(v["approval"]["summary"], "");
        assert_eq!(v["approval"]["rule"], "big");

        let step = ApprovalStep {
            actor: Some(Arc::new(Client {
                name: "alice".into(),
                groups: vec!["approvers".into()],
                via: crate::identity::Via::Jwt,
                label: "jwt:approvers".into(),
                cert: None,
            })),
            ..step
        };
        let mut out = Vec::new();
        encoder(BodyMode::Masked, 1000).approval(&step, &mut out);
        let text = String::from_utf8(out).unwrap();
        let actor = r#""actor":{"name":"alice","groups":["approvers"],"via":"jwt"},"call_id":"c1""#;
        assert!(text.contains(actor), "{text}");
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
