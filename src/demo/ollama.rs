//! Ollama `/api/chat` and `/api/generate`. Ollama streams by default: NDJSON, one
//! object per piece (`message.content` for chat, `response` for generate) with
//! `"done": false`, then a final object with empty text, `"done": true`,
//! `"done_reason": "stop"` and the counts. `"stream": false` gives that final object
//! alone, carrying the whole text.

use super::{count_tokens, model_of, prompt_tokens, text_of, Reply};
use bytes::Bytes;
use serde_json::{json, Value};

/// Ollama's timestamps are wall-clock; a fixed one keeps answers reproducible.
const CREATED_AT: &str = "2024-01-01T00:00:00Z";

/// The answer to one `/api/chat` (`chat`) or `/api/generate` request.
pub(super) fn reply(body: &Value, chat: bool, pieces: &[String]) -> Reply {
    let model = model_of(body);
    let prompt_eval_count = if chat {
        prompt_tokens(body)
    } else {
        count_tokens(&body.get("prompt").map(text_of).unwrap_or_default())
    };
    let object = |text: &str| {
        let mut v = json!({"model": model, "created_at": CREATED_AT});
        if chat {
            v["message"] = json!({"role": "assistant", "content": text});
        } else {
            v["response"] = json!(text);
        }
        v["done"] = json!(false);
        v
    };
    let last = |text: &str| {
        let mut v = object(text);
        v["done"] = json!(true);
        v["done_reason"] = json!("stop");
        v["total_duration"] = json!(1_000_000 * (pieces.len() as u64 + 1));
        v["prompt_eval_count"] = json!(prompt_eval_count);
        v["eval_count"] = json!(count_tokens(&pieces.concat()));
        v
    };
    if body.get("stream").and_then(Value::as_bool) == Some(false) {
        return Reply::Json(last(&pieces.concat()));
    }
    let mut events: Vec<Bytes> = pieces.iter().map(|p| ndjson_line(&object(p))).collect();
    events.push(ndjson_line(&last("")));
    Reply::Stream {
        content_type: "application/x-ndjson",
        events,
        tail: b"",
    }
}

fn ndjson_line(v: &Value) -> Bytes {
    Bytes::from(format!("{v}\n"))
}

#[cfg(test)]
mod tests {
    use super::super::{split_answer, ANSWER};
    use super::*;

    /// The lines of a streamed reply, each parsed.
    fn lines(r: Reply) -> Vec<Value> {
        let Reply::Stream {
            content_type,
            events,
            tail,
        } = r
        else {
            panic!("streamed");
        };
        assert_eq!(content_type, "application/x-ndjson");
        assert!(tail.is_empty());
        let all: Vec<u8> = events.concat();
        assert_eq!(all.iter().filter(|b| **b == b'\n').count(), events.len());
        let text = std::str::from_utf8(&all).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn chat_streams_by_default_and_reassembles_the_answer() {
        let body = json!({"model": "llama3", "messages": [{"role": "user", "content": "hi you"}]});
        let pieces = split_answer(ANSWER);
        let lines = lines(reply(&body, true, &pieces));
        assert_eq!(lines.len(), pieces.len() + 1);
        let text: String = (lines.iter())
            .map(|l| l["message"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(text, ANSWER);
        for l in &lines[..pieces.len()] {
            assert_eq!(l["done"], false);
            assert_eq!(l["model"], "llama3");
            assert_eq!(l["created_at"], CREATED_AT);
            assert_eq!(l["message"]["role"], "assistant");
        }
        let last = lines.last().unwrap();
        assert_eq!(last["done"], true);
        assert_eq!(last["done_reason"], "stop");
        assert_eq!(last["message"]["content"], "");
        assert_eq!(last["prompt_eval_count"], 2);
        assert_eq!(last["eval_count"], count_tokens(ANSWER));
        assert!(last["total_duration"].as_u64().unwrap() > 0);
    }

    #[test]
    fn generate_streams_response_pieces() {
        let body = json!({"model": "llama3", "prompt": "a b c", "stream": true});
        let lines = lines(reply(&body, false, &split_answer(ANSWER)));
        let text: String = lines
            .iter()
            .map(|l| l["response"].as_str().unwrap())
            .collect();
        assert_eq!(text, ANSWER);
        assert!(lines.iter().all(|l| l.get("message").is_none()));
        let last = lines.last().unwrap();
        assert_eq!(
            (&last["done"], &last["response"]),
            (&json!(true), &json!(""))
        );
        assert_eq!(last["prompt_eval_count"], 3);
    }

    #[test]
    fn stream_false_gives_one_whole_object() {
        let pieces = split_answer(ANSWER);
        let Reply::Json(chat) = reply(&json!({"stream": false}), true, &pieces) else {
            panic!("whole");
        };
        assert_eq!(chat["message"]["content"], ANSWER);
        assert_eq!(chat["done"], true);
        assert_eq!(chat["done_reason"], "stop");
        let Reply::Json(gen) = reply(&json!({"stream": false}), false, &pieces) else {
            panic!("whole");
        };
        assert_eq!(gen["response"], ANSWER);
        assert_eq!(gen["eval_count"], count_tokens(ANSWER));
    }
}
