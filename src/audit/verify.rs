//! `modelgate audit verify FILE...`: checks a hash chain across files (in
//! chain order, whatever order they are given in) and reports the first
//! record that breaks it: a line that is not a sealed record, a hash that
//! does not match the record's bytes, a `prev` that does not match the
//! record before (one was deleted, inserted or edited), a gap in `seq`.
//!
//! A torn last line (a crash mid-write) at the very end is reported but is
//! not a failure; the writer moves it aside when it starts again. Records
//! before the first file given cannot be checked: the report says where the
//! checked chain starts.

use super::chain::{self, ChainKey, GENESIS};
use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

#[derive(Debug, Default)]
pub struct Report {
    pub files: usize,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Whether the first record is the chain's first (its `prev` is genesis).
    pub from_genesis: bool,
    /// `call` records.
    pub calls: u64,
    /// `begin` records with no `call` record after them (calls cut short
    /// by a crash, or still in flight).
    pub unfinished: u64,
    /// Writer restarts after which a torn line had been moved aside.
    pub restarts: u64,
    /// The chain ends with a `shutdown` record (a clean stop).
    pub clean_end: bool,
    /// A torn last line: the file and its length.
    pub torn_tail: Option<(PathBuf, usize)>,
}

#[derive(Debug)]
pub struct Broken {
    pub path: PathBuf,
    /// 1-based line number.
    pub line: u64,
    pub seq: Option<u64>,
    pub reason: String,
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, " (record {seq})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Verifies the chain through `paths`.
pub fn verify(paths: &[PathBuf], key: &ChainKey) -> Result<Report, Broken> {
    let mut files = Vec::new();
    for p in paths {
        let first = first_seq(p).map_err(|e| Broken {
            path: p.clone(),
            line: 0,
            seq: None,
            reason: format!("cannot read: {e}"),
        })?;
        files.push((first.unwrap_or(u64::MAX), p.clone()));
    }
    // Chain order; an empty file (no records) sorts last.
    files.sort_by_key(|(seq, _)| *seq);
    let mut st = State {
        report: Report {
            files: files.len(),
            ..Default::default()
        },
        prev: None,
        open_begins: HashSet::new(),
        key,
    };
    let last = files.len().saturating_sub(1);
    for (i, (_, path)) in files.iter().enumerate() {
        st.file(path, i == last)?;
    }
    st.report.unfinished = st.open_begins.len() as u64;
    Ok(st.report)
}

struct State<'a> {
    report: Report,
    /// (seq, hash) of the last record checked.
    prev: Option<(u64, [u8; 32])>,
    open_begins: HashSet<String>,
    key: &'a ChainKey,
}

impl State<'_> {
    fn file(&mut self, path: &Path, is_last: bool) -> Result<(), Broken> {
        let broken = |line: u64, seq: Option<u64>, reason: String| Broken {
            path: path.to_path_buf(),
            line,
            seq,
            reason,
        };
        let f = File::open(path).map_err(|e| broken(0, None, format!("cannot open: {e}")))?;
        let mut reader = BufReader::with_capacity(1 << 20, f);
        let mut line = Vec::new();
        let mut n = 0u64;
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| broken(n + 1, None, format!("cannot read: {e}")))?;
            if read == 0 {
                return Ok(());
            }
            n += 1;
            if line.last() != Some(&b'\n') {
                if is_last {
                    self.report.torn_tail = Some((path.to_path_buf(), line.len()));
                    return Ok(());
                }
                return Err(broken(
                    n,
                    None,
                    format!(
                        "a torn line ({} bytes without a newline) inside the chain",
                        line.len()
                    ),
                ));
            }
            line.pop();
            self.record(&line)
                .map_err(|(seq, reason)| broken(n, seq, reason))?;
        }
    }

    fn record(&mut self, line: &[u8]) -> Result<(), (Option<u64>, String)> {
        let sealed = chain::open(line).map_err(|e| (None, e))?;
        let seq = sealed.head.seq;
        if self.key.digest(&chain::hashed_part(line)) != sealed.hash {
            return Err((
                Some(seq),
                "hash does not match the record's content: it was edited (or the chain is keyed and the key given is wrong)".into(),
            ));
        }
        match self.prev {
            None => {
                self.report.first_seq = Some(seq);
                self.report.from_genesis = sealed.prev == GENESIS && seq == 1;
            }
            Some((prev_seq, prev_hash)) => {
                if sealed.prev != prev_hash {
                    return Err((
                        Some(seq),
                        format!("prev does not match the hash of record {prev_seq} before it: a record was deleted, inserted or altered here"),
                    ));
                }
                if seq != prev_seq + 1 {
                    return Err((
                        Some(seq),
                        format!("sequence jumps from {prev_seq} to {seq}"),
                    ));
                }
            }
        }
        self.prev = Some((seq, sealed.hash));
        self.report.records += 1;
        self.report.last_seq = Some(seq);
        let id = sealed.head.id.unwrap_or_default();
        match sealed.head.kind.as_str() {
            "begin" => {
                self.open_begins.insert(id);
            }
            "call" => {
                self.report.calls += 1;
                self.open_begins.remove(&id);
            }
            "start" if line_has_torn(line) => self.report.restarts += 1,
            _ => {}
        }
        self.report.clean_end = sealed.head.kind == "shutdown";
        Ok(())
    }
}

fn line_has_torn(line: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| {
            v.get("torn")
                .and_then(|t| t.as_array())
                .map(|a| !a.is_empty())
        })
        .unwrap_or(false)
}

/// The sequence number of a file's first record (`None`: no records).
fn first_seq(path: &Path) -> io::Result<Option<u64>> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(chain::open(&line).ok().map(|s| s.head.seq))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (Some(first), Some(last)) = (self.first_seq, self.last_seq) else {
            return write!(f, "no records in {} file(s)", self.files);
        };
        writeln!(
            f,
            "OK: {} records (seq {first}..{last}) in {} file(s); {} calls complete, {} begun without an end record",
            self.records, self.files, self.calls, self.unfinished
        )?;
        if !self.from_genesis {
            writeln!(
                f,
                "note: the chain checked starts at record {first}; earlier records were not given"
            )?;
        }
        if self.restarts > 0 {
            writeln!(
                f,
                "note: {} restart(s) after a crash moved a torn line aside",
                self.restarts
            )?;
        }
        if let Some((p, n)) = &self.torn_tail {
            writeln!(
                f,
                "warning: {} ends with a torn line of {n} bytes (a crash mid-write); the writer moves it aside on restart",
                p.display()
            )?;
        }
        if self.clean_end {
            write!(f, "the chain ends with a clean shutdown")
        } else {
            write!(
                f,
                "the chain does not end with a shutdown record: the writer is running, crashed, or records after {last} are missing"
            )
        }
    }
}
