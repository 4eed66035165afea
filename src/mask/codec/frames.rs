//! Cutting a body into frames (SSE events, NDJSON lines) as chunks arrive:
//! bytes of an unfinished frame wait for the rest, each byte is searched
//! once, and a frame that never ends cannot grow memory past a bound.

use super::MaskError;

/// Finds the first frame end in `buf` at or after `from`: (frame length,
/// bytes to consume including the terminator).
pub type FindEnd = fn(&[u8], usize) -> Option<(usize, usize)>;

#[derive(Default)]
pub struct Framer {
    pending: Vec<u8>,
    /// Bytes of `pending` already searched.
    scanned: usize,
    limit: usize,
    /// How far back a terminator may start before the unsearched bytes.
    lookback: usize,
    find: Option<FindEnd>,
}

impl Framer {
    pub fn new(limit: usize, lookback: usize, find: FindEnd) -> Self {
        Framer {
            limit,
            lookback,
            find: Some(find),
            ..Default::default()
        }
    }

    /// Adds `chunk`; returns the frames it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, MaskError> {
        let find = self.find.expect("built with new");
        self.pending.extend_from_slice(chunk);
        let mut frames = Vec::new();
        let mut start = 0;
        let mut from = self.scanned.saturating_sub(self.lookback);
        while let Some((len, next)) = find(&self.pending[start..], from) {
            frames.push(self.pending[start..start + len].to_vec());
            start += next;
            from = 0;
        }
        self.pending.drain(..start);
        self.scanned = self.pending.len();
        if self.pending.len() > self.limit {
            return Err(MaskError::EventTooLarge(self.limit));
        }
        Ok(frames)
    }

    /// The unterminated rest, at the end of the body.
    pub fn take_rest(&mut self) -> Vec<u8> {
        self.scanned = 0;
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(buf: &[u8], from: usize) -> Option<(usize, usize)> {
        buf[from..]
            .iter()
            .position(|b| *b == b'\n')
            .map(|i| (from + i, from + i + 1))
    }

    #[test]
    fn frames_across_chunks_and_bounded() {
        let mut f = Framer::new(8, 0, lines);
        assert_eq!(f.feed(b"ab").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(
            f.feed(b"c\nd\ne").unwrap(),
            vec![b"abc".to_vec(), b"d".to_vec()]
        );
        assert_eq!(f.take_rest(), b"e".to_vec());
        assert!(f.feed(b"123456789").is_err());
    }
}
