//! Anthropic Messages API, `/v1/messages`: a whole `message` object, or
//! (`"stream": true`) SSE events with `event:` lines in Anthropic's exact order:
//! `message_start`, `content_block_start`, one `content_block_delta` per piece,
//! `content_block_stop`, `message_delta`, `message_stop`. No `ping` events.

use super::{count_tokens, model_of, prompt_tokens, Reply};
use bytes::Bytes;
use serde_json::{json, Value};

/// The answer to one Messages request.
pub(super) fn reply(body: &Value, id: u64, pieces: &[String]) -> Reply {
    let model = model_of(body);
    let input_tokens = prompt_tokens(body);
    let output_tokens = count_tokens(&pieces.concat());
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let message = |content: Value, stop_reason: Value, output_tokens: usize| {
        json!({
            "id": format!("msg_demo_{id}"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        })
    };
    if !stream {
        let content = json!([{"type": "text", "text": pieces.concat()}]);
        return Reply::Json(message(content, json!("end_turn"), output_tokens));
    }
    let mut events = Vec::with_capacity(pieces.len() + 5);
    events.push(json!({"type": "message_start", "message": message(json!([]), Value::Null, 1)}));
    events.push(json!({
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }));
    for p in pieces {
        events.push(json!({
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": p},
        }));
    }
    events.push(json!({"type": "content_block_stop", "index": 0}));
    events.push(json!({
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null},
        "usage": {"output_tokens": output_tokens},
    }));
    events.push(json!({"type": "message_stop"}));
    Reply::Stream {
        content_type: "text/event-stream",
        events: events.iter().map(named_event).collect(),
        tail: b"",
    }
}

/// One SSE event named after its `type`, carrying `v` as JSON.
fn named_event(v: &Value) -> Bytes {
    let kind = v["type"].as_str().expect("every event has a type");
    Bytes::from(format!("event: {kind}\ndata: {v}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::super::{split_answer, ANSWER};
    use super::*;

    fn body(stream: bool) -> Value {
        json!({
            "model": "claude-demo",
            "max_tokens": 100,
            "stream": stream,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "How do I reach support?"}],
        })
    }

    #[test]
    fn whole_message() {
        let Reply::Json(m) = reply(&body(false), 4, &split_answer(ANSWER)) else {
            panic!("not streamed");
        };
        assert_eq!(
            m,
            json!({
                "id": "msg_demo_4",
                "type": "message",
                "role": "assistant",
                "model": "claude-demo",
                "content": [{"type": "text", "text": ANSWER}],
                "stop_reason": "end_turn",
                "stop_sequence": null,
                "usage": {"input_tokens": 7, "output_tokens": count_tokens(ANSWER)},
            })
        );
    }

    #[test]
    fn stream_has_anthropics_event_sequence_and_reassembles_the_answer() {
        let pieces = split_answer(ANSWER);
        let Reply::Stream {
            content_type,
            events,
            tail,
        } = reply(&body(true), 5, &pieces)
        else {
            panic!("streamed");
        };
        assert_eq!(content_type, "text/event-stream");
        assert!(tail.is_empty(), "no [DONE] in Anthropic streams");
        let mut names = Vec::new();
        let mut text = String::new();
        for ev in &events {
            let ev = std::str::from_utf8(ev).unwrap();
            let (name_line, rest) = ev.split_once('\n').unwrap();
            let name = name_line.strip_prefix("event: ").unwrap();
            let data = rest.strip_prefix("data: ").unwrap().strip_suffix("\n\n");
            let v: Value = serde_json::from_str(data.unwrap()).unwrap();
            assert_eq!(v["type"], name, "event name matches the data type");
            if name == "content_block_delta" {
                assert_eq!(v["index"], 0);
                assert_eq!(v["delta"]["type"], "text_delta");
                text.push_str(v["delta"]["text"].as_str().unwrap());
            }
            if name == "message_start" {
                assert_eq!(v["message"]["id"], "msg_demo_5");
                assert_eq!(v["message"]["content"], json!([]));
                assert_eq!(v["message"]["usage"]["input_tokens"], 7);
            }
            if name == "message_delta" {
                assert_eq!(
                    v,
                    json!({
                        "type": "message_delta",
                        "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                        "usage": {"output_tokens": count_tokens(ANSWER)},
                    })
                );
            }
            names.push(name.to_string());
        }
        assert_eq!(text, ANSWER);
        let mut expected = vec!["message_start", "content_block_start"];
        expected.extend(std::iter::repeat_n("content_block_delta", pieces.len()));
        expected.extend(["content_block_stop", "message_delta", "message_stop"]);
        assert_eq!(names, expected);
    }
}
