//! Completion-token counting for token budgets: reads the token count a
//! model reports in its response (`usage.completion_tokens` in OpenAI JSON
//! and in streams whose client asked for `stream_options.include_usage`,
//! `output_tokens` from Anthropic, `eval_count` from Ollama) as the bytes go
//! by, without parsing frames. Without a reported count, a stream is
//! estimated at one token per SSE event / NDJSON line (models stream about
//! one token per event) and any other body at one token per 4 bytes.
//!
//! Not here: the budgets themselves (`limits`).

use memchr::memmem;

const KEYS: [&[u8]; 3] = [
    b"\"completion_tokens\"",
    b"\"output_tokens\"",
    b"\"eval_count\"",
];
/// Longest `"key" : 123456789` we expect, so a match split across chunks is
/// found in the carried tail.
const CARRY: usize = 48;

/// Watches one response's bytes.
#[derive(Default)]
pub struct UsageMeter {
    carry: Vec<u8>,
    reported: Option<u64>,
    frames: u64,
    bytes: u64,
}

impl UsageMeter {
    pub fn feed(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        self.bytes += chunk.len() as u64;
        let starts_frame = |rest: &[u8]| rest.first() == Some(&b'{') || rest.starts_with(b"data:");
        // The response's first frame, or one starting right after a chunk
        // that ended with a newline.
        if matches!(self.carry.last(), None | Some(b'\n')) && starts_frame(chunk) {
            self.frames += 1;
        }
        self.frames += memchr::memchr_iter(b'\n', chunk)
            .filter(|&i| starts_frame(&chunk[i + 1..]))
            .count() as u64;
        // Across the boundary: only matches starting in the carried tail.
        if !self.carry.is_empty() {
            let from = self.carry.len();
            let mut joint = std::mem::take(&mut self.carry);
            joint.extend_from_slice(&chunk[..chunk.len().min(CARRY)]);
            self.scan(&joint, Some(from));
            // Keep the last CARRY bytes seen, whatever the chunk sizes.
            joint.truncate(from);
            self.carry = joint;
        }
        self.scan(chunk, None);
        let excess = (self.carry.len() + chunk.len()).saturating_sub(CARRY);
        self.carry.drain(..excess.min(self.carry.len()));
        self.carry
            .extend_from_slice(&chunk[chunk.len() - chunk.len().min(CARRY)..]);
    }

    /// Looks for the keys in `hay`; with `Some(limit)`, only at offsets below it.
    fn scan(&mut self, hay: &[u8], limit: Option<usize>) {
        for key in KEYS {
            for at in memmem::find_iter(hay, key) {
                if limit.is_some_and(|l| at >= l) {
                    break;
                }
                if let Some(n) = number_after(&hay[at + key.len()..]) {
                    self.reported = Some(n);
                }
            }
        }
    }

    /// Tokens the model reported, if it did.
    pub fn reported(&self) -> Option<u64> {
        self.reported
    }

    /// Reported tokens, or the estimate when none were reported.
    pub fn completion_tokens(&self) -> u64 {
        self.reported.unwrap_or(if self.frames > 1 {
            self.frames
        } else {
            self.bytes.div_ceil(4)
        })
    }
}

/// `  :  123,` → 123; `None` unless digits end before the slice does.
fn number_after(s: &[u8]) -> Option<u64> {
    let s = s.trim_ascii_start().strip_prefix(b":")?.trim_ascii_start();
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits == s.len() || digits > 18 {
        return None;
    }
    std::str::from_utf8(&s[..digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter_of(pieces: &[&[u8]]) -> UsageMeter {
        let mut m = UsageMeter::default();
        for p in pieces {
            m.feed(p);
        }
        m
    }

    #[test]
    fn finds_usage_in_json_sse_and_ndjson() {
        let json = br#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#;
        assert_eq!(meter_of(&[json]).reported(), Some(12));
        let anthropic = b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\": 37}}\n\n";
        assert_eq!(meter_of(&[anthropic]).reported(), Some(37));
        let ollama = b"{\"done\":true,\"eval_count\":290,\"eval_duration\":1}\n";
        assert_eq!(meter_of(&[ollama]).reported(), Some(290));
    }

    #[test]
    fn a_count_split_anywhere_is_found() {
        let body = b"data: {\"choices\":[]}\n\ndata: {\"usage\":{\"completion_tokens\" : 4096,\"total_tokens\":5000}}\n\ndata: [DONE]\n\n";
        for cut in 1..body.len() {
            let m = meter_of(&[&body[..cut], &body[cut..]]);
            assert_eq!(m.reported(), Some(4096), "cut at {cut}");
        }
        for a in (1..body.len()).step_by(7) {
            for b in (a + 1..body.len()).step_by(5) {
                let m = meter_of(&[&body[..a], &body[a..b], &body[b..]]);
                assert_eq!(m.reported(), Some(4096), "cuts at {a}, {b}");
            }
        }
    }

    #[test]
    fn without_usage_a_stream_is_estimated_by_events() {
        let mut body = Vec::new();
        for i in 0..10 {
            body.extend_from_slice(format!("data: {{\"i\":{i}}}\n\n").as_bytes());
        }
        let m = meter_of(&[&body]);
        assert_eq!(m.reported(), None);
        assert_eq!(m.completion_tokens(), 10);
        // A whole body without usage: one token per 4 bytes.
        let m = meter_of(&[&[b'x'; 400][..]]);
        assert_eq!(m.completion_tokens(), 100);
    }
}
