//! OpenAI `/v1/chat/completions` and `/v1/completions`: a whole `chat.completion` /
//! `text_completion` object, or (`"stream": true`) SSE chunks — a role chunk (chat),
//! one chunk per piece, a `finish_reason` chunk, an optional usage chunk
//! (`stream_options.include_usage`), then `data: [DONE]`.

use super::{count_tokens, model_of, prompt_tokens, text_of, unix_now, Reply};
use bytes::Bytes;
use serde_json::{json, Value};

/// The answer to one (chat) completion request.
pub(super) fn reply(body: &Value, chat: bool, id: u64, name: &str, pieces: &[String]) -> Reply {
    let req = Completion::from_body(body, chat);
    if !req.stream {
        let resp = req.full_response(id, name, &pieces.concat(), &req.usage(pieces));
        return Reply::Json(resp);
    }
    Reply::Stream {
        content_type: "text/event-stream",
        events: req.events(id, name, pieces).iter().map(sse_event).collect(),
        tail: b"data: [DONE]\n\n",
    }
}

/// The parts of a (chat) completion request the demo model looks at.
struct Completion {
    chat: bool,
    model: String,
    stream: bool,
    include_usage: bool,
    prompt_tokens: usize,
}

impl Completion {
    fn from_body(body: &Value, chat: bool) -> Self {
        let prompt_tokens = if chat {
            prompt_tokens(body)
        } else {
            count_tokens(&body.get("prompt").map(text_of).unwrap_or_default())
        };
        Completion {
            chat,
            model: model_of(body),
            stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
            include_usage: body
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            prompt_tokens,
        }
    }

    fn usage(&self, pieces: &[String]) -> Value {
        usage_json(self.prompt_tokens, count_tokens(&pieces.concat()))
    }

    /// The streamed chunk objects, in order (without the final `[DONE]`).
    fn events(&self, id: u64, name: &str, pieces: &[String]) -> Vec<Value> {
        let chunk = ChunkMaker::new(self.chat, id, &self.model, name);
        let mut events = Vec::with_capacity(pieces.len() + 3);
        if self.chat {
            events.push(chunk.piece(json!({"role": "assistant", "content": ""}), None));
        }
        for p in pieces {
            let delta = if self.chat {
                json!({ "content": p })
            } else {
                json!(p)
            };
            events.push(chunk.piece(delta, None));
        }
        let end = if self.chat { json!({}) } else { json!("") };
        events.push(chunk.piece(end, Some("stop")));
        if self.include_usage {
            events.push(chunk.usage(&self.usage(pieces)));
        }
        events
    }

    fn full_response(&self, id: u64, name: &str, text: &str, usage: &Value) -> Value {
        let (object, choice) = if self.chat {
            let message = json!({"role": "assistant", "content": text});
            let choice = json!({"index": 0, "message": message, "finish_reason": "stop"});
            ("chat.completion", choice)
        } else {
            let choice =
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": "stop"});
            ("text_completion", choice)
        };
        json!({
            "id": format!("{}-{id}", id_prefix(self.chat)),
            "object": object,
            "created": unix_now(),
            "model": self.model,
            "system_fingerprint": name,
            "choices": [choice],
            "usage": usage,
        })
    }
}

/// Builds the streamed chunk objects of one response (same id/created/model throughout).
struct ChunkMaker {
    chat: bool,
    base: Value,
}

impl ChunkMaker {
    fn new(chat: bool, id: u64, model: &str, name: &str) -> Self {
        let object = if chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let base = json!({
            "id": format!("{}-{id}", id_prefix(chat)),
            "object": object,
            "created": unix_now(),
            "model": model,
            "system_fingerprint": name,
        });
        ChunkMaker { chat, base }
    }

    /// A chunk with one choice; `delta` is the chat delta object or the completion text.
    fn piece(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        let mut v = self.base.clone();
        v["choices"] = if self.chat {
            json!([{"index": 0, "delta": delta, "finish_reason": finish_reason}])
        } else {
            json!([{"index": 0, "text": delta, "logprobs": null, "finish_reason": finish_reason}])
        };
        v
    }

    fn usage(&self, usage: &Value) -> Value {
        let mut v = self.base.clone();
        v["choices"] = json!([]);
        v["usage"] = usage.clone();
        v
    }
}

fn id_prefix(chat: bool) -> &'static str {
    if chat {
        "chatcmpl-demo"
    } else {
        "cmpl-demo"
    }
}

fn usage_json(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// One SSE event carrying `v` as JSON.
fn sse_event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::super::{split_answer, ANSWER, DEFAULT_MODEL};
    use super::*;

    #[test]
    fn sse_events_are_json_per_data_line() {
        let body =
            json!({"model": "qwen-demo", "messages": [{"role": "user", "content": "hi there"}]});
        let req = Completion::from_body(&body, true);
        let maker = ChunkMaker::new(true, 7, &req.model, "up-a");
        for p in split_answer(ANSWER) {
            let ev = sse_event(&maker.piece(json!({ "content": p }), None));
            let text = std::str::from_utf8(&ev).unwrap();
            assert!(text.starts_with("data: ") && text.ends_with("\n\n"));
            assert_eq!(text.matches('\n').count(), 2, "one line per event");
            let v: Value = serde_json::from_str(&text[6..text.len() - 2]).unwrap();
            assert_eq!(v["object"], "chat.completion.chunk");
            assert_eq!(v["model"], "qwen-demo");
            assert_eq!(v["system_fingerprint"], "up-a");
            assert_eq!(v["choices"][0]["delta"]["content"], p.as_str());
        }
        let legacy = ChunkMaker::new(false, 1, "demo-model", "x").piece(json!("ab"), Some("stop"));
        assert_eq!(legacy["choices"][0]["text"], "ab");
        assert_eq!(legacy["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn stream_reassembles_the_answer_and_ends_with_done() {
        let body =
            json!({"stream": true, "stream_options": {"include_usage": true}, "messages": []});
        let Reply::Stream { events, tail, .. } = reply(&body, true, 3, "up", &split_answer(ANSWER))
        else {
            panic!("a stream");
        };
        assert_eq!(tail, b"data: [DONE]\n\n");
        let chunks: Vec<Value> = events
            .iter()
            .map(|e| serde_json::from_slice(&e[6..e.len() - 2]).unwrap())
            .collect();
        let text: String = (chunks.iter())
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, ANSWER);
        let n = chunks.len();
        assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            chunks[n - 1]["usage"]["completion_tokens"],
            count_tokens(ANSWER)
        );
        assert!(chunks.iter().all(|c| c["id"] == "chatcmpl-demo-3"));
    }

    #[test]
    fn usage_counts_words() {
        let body = json!({"messages": [{"content": "a b"}, {"content": [{"type": "text", "text": "c d e"}]}]});
        let req = Completion::from_body(&body, true);
        assert_eq!(req.model, DEFAULT_MODEL);
        let u = req.usage(&vec!["tok ".to_string(); 5]);
        assert_eq!(
            u,
            json!({"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10})
        );
        let legacy = Completion::from_body(&json!({"prompt": "x y"}), false);
        assert_eq!(legacy.prompt_tokens, 2);
        let Reply::Json(whole) = reply(&json!({"prompt": "x"}), false, 9, "up", &["ab".into()])
        else {
            panic!("not streamed by default");
        };
        assert_eq!(whole["object"], "text_completion");
        assert_eq!(whole["choices"][0]["text"], "ab");
    }
}
