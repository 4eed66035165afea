//! Split invariance, the core property of streaming masking: for random texts
//! with embedded PII, lookalikes and non-ASCII text, and random splits (at
//! char boundaries for the masker; at arbitrary bytes — inside UTF-8
//! characters and inside JSON escapes — for the codecs), the client receives
//! exactly what masking the whole text at once gives, and no PII value
//! survives.

use modelgate::mask::codec::ResponseMasker;
use modelgate::mask::detect::{Detector, BUILTIN};
use modelgate::mask::replace::Style;
use modelgate::mask::stream::{MaskRules, StreamMasker};
use proptest::prelude::*;
use serde_json::Value;
use std::sync::Arc;

const PII: &[&str] = &[
    "jane.doe@example.com",
    "j.smith+billing@mail.example.co.uk",
    "+1 415-555-0132",
    "(415) 555-0132",
    "+44 20 7946 0958",
    "4111 1111 1111 1111",
    "5500-0000-0000-0004",
    "378282246310005",
    "123-45-6789",
    "DE89 3704 0044 0532 0130 00",
    "GB82WEST12345698765432",
    "10.20.30.40",
    "2001:db8::8a2e:370:7334",
    "AKIAIOSFODNN7EXAMPLE",
    "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",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "EMP-123456",
];

const FILLER: &[&str] = &[
    "Sure",
    "happy to help",
    "the order #A-10023-77 shipped",
    "version 1.2.3",
    "on 2024-01-15",
    "price $1,234.56",
    "ISBN 978-3-16-148410-0",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "sha d41d8cd98f00b204e9800998ecf8427e",
    "card 4111 1111 1111 1112 fails Luhn",
    "café",
    "naïve résumé",
    "日本語のテキスト",
    "emoji 😀🎉",
    "a \"quoted\" word",
    "back\\slash",
    "tab\there",
    "line\nbreak",
    "@",
    "x@",
];

const SEPARATORS: &[&str] = &[" and ", ". ", "\n", ", then ", " — "];

/// Compiled once: building the automata is start-up work, not per-case work.
fn rules() -> Arc<MaskRules> {
    static RULES: std::sync::OnceLock<Arc<MaskRules>> = std::sync::OnceLock::new();
    RULES.get_or_init(build_rules).clone()
}

fn build_rules() -> Arc<MaskRules> {
    let custom = vec![("EMPLOYEE_ID".to_string(), "EMP-[0-9]{6}".to_string())];
    let detector = Arc::new(Detector::new(&BUILTIN, &custom).unwrap());
    Arc::new(MaskRules::uniform(detector, Style::Label, 16 * 1024))
}

/// A text and the PII values it contains.
fn text() -> impl Strategy<Value = (String, Vec<&'static str>)> {
    prop::collection::vec(
        (
            any::<bool>(),
            0..PII.len(),
            0..FILLER.len(),
            0..SEPARATORS.len(),
        ),
        1..14,
    )
    .prop_map(|parts| {
        let mut s = String::new();
        let mut pii = Vec::new();
        for (is_pii, p, f, sep) in parts {
            if is_pii {
                s.push_str(PII[p]);
                pii.push(PII[p]);
            } else {
                s.push_str(FILLER[f]);
            }
            s.push_str(SEPARATORS[sep]);
        }
        (s, pii)
    })
}

/// Cut points (sorted, deduplicated) in 0..=len.
fn cuts(len: usize, raw: &[usize]) -> Vec<usize> {
    let mut c: Vec<usize> = raw.iter().map(|r| r % (len + 1)).collect();
    c.push(0);
    c.push(len);
    c.sort_unstable();
    c.dedup();
    c
}

fn char_cuts(s: &str, raw: &[usize]) -> Vec<usize> {
    cuts(s.len(), raw)
        .into_iter()
        .filter(|c| s.is_char_boundary(*c))
        .collect()
}

/// Reads the streamed text out of one output event.
type TextOf = fn(&Value) -> Option<String>;

fn masked_whole(text: &str) -> String {
    let r = rules();
    r.mask_all(text, &mut vec![0; r.entity_count()])
}

/// One frame per random token piece of `text`: `frame` with `{TEXT}` replaced
/// by the piece as a JSON string literal.
fn frames(text: &str, tokens: &[usize], frame: &str) -> String {
    char_cuts(text, tokens)
        .windows(2)
        .map(|w| frame.replace("{TEXT}", &json_str(&text[w[0]..w[1]])))
        .collect()
}

fn assert_no_pii(out: &str, pii: &[&str]) {
    for p in pii {
        assert!(!out.contains(p), "PII `{p}` survived in {out:?}");
    }
}

/// JSON string literal with every non-ASCII char as `\uXXXX` (surrogate pairs
/// included), so byte splits land inside escapes.
fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

/// Feeds `body` to a masker of type `ct`, split at `raw` byte cuts.
fn run_codec(ct: &str, body: &[u8], raw: &[usize]) -> Vec<u8> {
    let mut m = ResponseMasker::for_content_type(ct, rules(), 1 << 24).unwrap();
    let c = cuts(body.len(), raw);
    let mut out = Vec::new();
    for w in c.windows(2) {
        let end = w[1] == body.len();
        m.feed(&body[w[0]..w[1]], end, &mut out).unwrap();
    }
    if body.is_empty() {
        m.feed(b"", true, &mut out).unwrap();
    }
    out
}

fn sse_data(out: &[u8]) -> Vec<Value> {
    let text = String::from_utf8(out.to_vec()).unwrap();
    text.split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_string)
        })
        .filter(|d| d != "[DONE]")
        .map(|d| serde_json::from_str(&d).unwrap())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn stream_masker_is_split_invariant((text, pii) in text(), raw in prop::collection::vec(any::<usize>(), 0..40)) {
        let r = rules();
        let whole = r.mask_all(&text, &mut vec![0; r.entity_count()]);
        assert_no_pii(&whole, &pii);
        let mut m = StreamMasker::new();
        let mut out = String::new();
        let mut counts = vec![0; r.entity_count()];
        let c = char_cuts(&text, &raw);
        for w in c.windows(2) {
            m.push(&r, &text[w[0]..w[1]], &mut out, &mut counts);
            prop_assert!(m.held() <= r.max_holdback);
        }
        m.finish(&r, &mut out, &mut counts);
        prop_assert_eq!(out, whole);
        prop_assert!(counts.iter().sum::<u32>() as usize >= pii.len());
    }

    #[test]
    fn plain_text_is_split_invariant_across_utf8((text, pii) in text(), raw in prop::collection::vec(any::<usize>(), 0..40)) {
        let r = rules();
        let whole = r.mask_all(&text, &mut vec![0; r.entity_count()]);
        let out = run_codec("text/plain; charset=utf-8", text.as_bytes(), &raw);
        let out = String::from_utf8(out).unwrap();
        assert_no_pii(&out, &pii);
        prop_assert_eq!(out, whole);
    }

    #[test]
    fn openai_sse_is_split_invariant(
        (text, pii) in text(),
        tokens in prop::collection::vec(any::<usize>(), 0..60),
        raw in prop::collection::vec(any::<usize>(), 0..80),
    ) {
        let whole = masked_whole(&text);
        let mut body = frames(&text, &tokens, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":{TEXT}},\"finish_reason\":null}]}\n\n");
        body.push_str("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"completion_tokens\":7}}\n\ndata: [DONE]\n\n");
        let events_in = body.matches("data: ").count();
        let out = run_codec("text/event-stream", body.as_bytes(), &raw);
        prop_assert_eq!(String::from_utf8_lossy(&out).matches("data: ").count(), events_in, "cadence kept");
        let data = sse_data(&out);
        let got: String = data.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
        assert_no_pii(&got, &pii);
        prop_assert_eq!(&got, &whole);
        let last = data.last().unwrap();
        prop_assert_eq!(&last["choices"][0]["finish_reason"], "stop");
        prop_assert_eq!(&last["usage"]["completion_tokens"], 7);
        prop_assert!(data.iter().all(|e| e["id"] == "c1"));
    }

    #[test]
    fn openai_sse_closed_early_still_releases_everything(
        (text, pii) in text(),
        tokens in prop::collection::vec(any::<usize>(), 0..60),
        raw in prop::collection::vec(any::<usize>(), 0..80),
    ) {
        let whole = masked_whole(&text);
        let body = frames(&text, &tokens, "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":{TEXT}}}]}\n\n");
        // No finish_reason, no [DONE]: the upstream died.
        let out = run_codec("text/event-stream", body.as_bytes(), &raw);
        let got: String = sse_data(&out).iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
        assert_no_pii(&got, &pii);
        prop_assert_eq!(got, whole);
    }

    #[test]
    fn anthropic_sse_is_split_invariant(
        (text, pii) in text(),
        tokens in prop::collection::vec(any::<usize>(), 0..60),
        raw in prop::collection::vec(any::<usize>(), 0..80),
    ) {
        let whole = masked_whole(&text);
        let mut body = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m1\",\"content\":[]}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
        body.push_str(&frames(&text, &tokens, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":{TEXT}}}\n\n"));
        body.push_str("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        let out = run_codec("text/event-stream", body.as_bytes(), &raw);
        let data = sse_data(&out);
        let got: String = data.iter().filter(|e| e["type"] == "content_block_delta").filter_map(|e| e["delta"]["text"].as_str()).collect();
        assert_no_pii(&got, &pii);
        prop_assert_eq!(got, whole);
        // The flushed remainder comes before the block stops.
        let stop = data.iter().position(|e| e["type"] == "content_block_stop").unwrap();
        prop_assert!(data[stop + 1..].iter().all(|e| e["type"] != "content_block_delta"));
        let out_text = String::from_utf8(out).unwrap();
        prop_assert!(out_text.contains("event: message_stop\n"));
    }

    #[test]
    fn ollama_ndjson_is_split_invariant(
        (text, pii) in text(),
        tokens in prop::collection::vec(any::<usize>(), 0..60),
        raw in prop::collection::vec(any::<usize>(), 0..80),
    ) {
        let whole = masked_whole(&text);
        let mut body = frames(&text, &tokens, "{\"model\":\"llama3\",\"message\":{\"role\":\"assistant\",\"content\":{TEXT}},\"done\":false}\n");
        body.push_str("{\"model\":\"llama3\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"eval_count\":5}\n");
        let lines_in = body.lines().count();
        let out = String::from_utf8(run_codec("application/x-ndjson", body.as_bytes(), &raw)).unwrap();
        prop_assert_eq!(out.lines().count(), lines_in);
        let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let got: String = lines.iter().filter_map(|l| l["message"]["content"].as_str()).collect();
        assert_no_pii(&got, &pii);
        prop_assert_eq!(got, whole);
        prop_assert_eq!(&lines.last().unwrap()["eval_count"], 5);
    }

    #[test]
    fn whole_json_masks_every_field(
        (text, pii) in text(),
    ) {
        let r = rules();
        let whole = r.mask_all(&text, &mut vec![0; r.entity_count()]);
        let body = serde_json::to_vec(&serde_json::json!({
            "id": "c1", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "send", "arguments": text}}
            ]}, "finish_reason": "stop"}],
            "usage": {"total_tokens": 3}
        })).unwrap();
        let out: Value = serde_json::from_slice(&run_codec("application/json", &body, &[7, 300])).unwrap();
        prop_assert_eq!(out["choices"][0]["message"]["content"].as_str().unwrap(), whole.as_str());
        prop_assert_eq!(out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"].as_str().unwrap(), whole.as_str());
        prop_assert_eq!(&out["usage"]["total_tokens"], 3);
        assert_no_pii(&out.to_string(), &pii);
    }

    #[test]
    fn shapes_without_a_codec_of_their_own_are_split_invariant(
        (text, pii) in text(),
        tokens in prop::collection::vec(any::<usize>(), 0..60),
        raw in prop::collection::vec(any::<usize>(), 0..80),
        shape in 0..4usize,
    ) {
        // TGI /generate_stream, llama.cpp /completion, OpenAI Responses API,
        // and plain-text `data:` lines: one stream per JSON path.
        let whole = masked_whole(&text);
        let (frame, last, field): (&str, String, TextOf) = match shape {
            0 => (
                "data: {\"token\":{\"id\":7,\"text\":{TEXT},\"logprob\":-0.1,\"special\":false},\"generated_text\":null}\n\n",
                format!("data: {{\"token\":{{\"id\":2,\"text\":\"\",\"special\":true}},\"generated_text\":{}}}\n\n", json_str(&text)),
                |e| e["token"]["text"].as_str().map(str::to_string),
            ),
            1 => (
                "data: {\"content\":{TEXT},\"stop\":false}\n\n",
                "data: {\"content\":\"\",\"stop\":true,\"tokens_predicted\":9}\n\n".to_string(),
                |e| e["content"].as_str().map(str::to_string),
            ),
            2 => (
                "data: {\"type\":\"response.output_text.delta\",\"item_id\":\"i1\",\"delta\":{TEXT}}\n\n",
                format!("data: {{\"type\":\"response.output_text.done\",\"item_id\":\"i1\",\"text\":{}}}\n\n", json_str(&text)),
                |e| (e["type"] == "response.output_text.delta").then(|| e["delta"].as_str().unwrap().to_string()),
            ),
            _ => ("data: {TEXT}\n\n", String::new(), |_| None),
        };
        let body = if shape == 3 {
            // Plain text data: newlines would start new `data:` lines.
            // (Quotes swapped: a token like `"quoted"` would be a JSON string.)
            let flat = text.replace('\n', " and ").replace('"', "'");
            let mut b = String::new();
            for w in char_cuts(&flat, &tokens).windows(2) {
                b.push_str(&format!("data: {}\n\n", &flat[w[0]..w[1]]));
            }
            b
        } else {
            frames(&text, &tokens, frame) + &last
        };
        let out = run_codec("text/event-stream", body.as_bytes(), &raw);
        let out_text = String::from_utf8(out.clone()).unwrap();
        let got: String = if shape == 3 {
            out_text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).collect()
        } else {
            sse_data(&out).iter().filter_map(field).collect()
        };
        let expected = if shape == 3 { masked_whole(&text.replace('\n', " and ").replace('"', "'")) } else { whole.clone() };
        assert_no_pii(&got, &pii);
        prop_assert_eq!(got, expected);
        if shape == 0 || shape == 2 {
            // The final event's full text is masked too.
            let full = sse_data(&out).last().unwrap().clone();
            let full = full.get("generated_text").or(full.get("text")).unwrap().as_str().unwrap().to_string();
            prop_assert_eq!(full, whole);
        }
    }
}

#[test]
fn openai_fields_outside_the_streams_are_masked_too() {
    let body = serde_json::json!({
        "id": "c1", "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "function_call", "message": {
            "role": "assistant",
            "content": [{"type": "text", "text": "mail jane.doe@example.com"}],
            "function_call": {"name": "send", "arguments": "{\"to\": \"bob@example.com\"}"},
            "tool_calls": [{"id": "t1", "type": "custom", "custom": {"name": "x", "input": "call +1 415-555-0132"}},
                           {"id": "t2", "type": "function", "function": {"name": "y", "arguments": {"card": "4111 1111 1111 1111"}}}]
        }}]
    });
    let out = run_codec("application/json", &serde_json::to_vec(&body).unwrap(), &[]);
    let text = String::from_utf8(out).unwrap();
    for pii in [
        "jane.doe@example.com",
        "bob@example.com",
        "415-555-0132",
        "4111 1111 1111 1111",
    ] {
        assert!(!text.contains(pii), "{pii} in {text}");
    }
    assert!(
        text.contains("[EMAIL]") && text.contains("\"id\":\"t1\""),
        "{text}"
    );
}

#[test]
fn unknown_or_missing_content_types_are_masked_as_text_and_binary_passes() {
    let out = run_codec("", b"reach jane.doe@example.com", &[3]);
    assert_eq!(out, b"reach [EMAIL]");
    let out = run_codec("application/x-custom", b"reach jane.doe@example.com", &[]);
    assert_eq!(out, b"reach [EMAIL]");
    assert!(ResponseMasker::for_content_type("image/png", rules(), 1024).is_none());
    assert!(ResponseMasker::for_content_type("application/octet-stream", rules(), 1024).is_none());
}

#[test]
fn an_event_that_never_ends_is_refused_not_buffered_forever() {
    for ct in ["text/event-stream", "application/x-ndjson"] {
        let mut m = ResponseMasker::for_content_type(ct, rules(), 1024).unwrap();
        let mut out = Vec::new();
        let chunk = [b'x'; 600];
        assert!(m.feed(&chunk, false, &mut out).is_ok());
        assert!(m.feed(&chunk, false, &mut out).is_err(), "{ct}");
    }
}
