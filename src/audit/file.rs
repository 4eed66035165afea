//! The JSON Lines file sink: appends sealed lines, rotates by size and age,
//! fsyncs on an interval, and on start-up recovers the chain's end from the
//! files it left (moving a torn last line, from a crash mid-write, aside).
//!
//! Files: the current one at `path` (e.g. `audit.jsonl`) and rotated ones
//! beside it named by their first record's sequence number
//! (`audit.00000000000000000001.jsonl`), so names sort in chain order.

use super::chain;
use crate::config::FileSinkConfig;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Where the chain stood when the sink was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Sequence number and hash of the last whole record (0 / GENESIS: none).
    pub seq: u64,
    pub head: [u8; 32],
    /// A torn last line that was cut off: its length and where it was saved.
    pub torn: Option<(usize, PathBuf)>,
}

pub struct FileSink {
    path: PathBuf,
    /// `None` between a rotation's rename and the new file's creation (if
    /// creating it failed, the next write tries again).
    file: Option<File>,
    /// Length of the file's whole records.
    len: u64,
    /// Sequence number of the file's first record.
    first_seq: Option<u64>,
    /// Sequence number of the last record written (0: none).
    last_seq: u64,
    opened: Instant,
    rotate_bytes: u64,
    rotate_interval: Option<Duration>,
    fsync_interval: Duration,
    last_sync: Instant,
    dirty: bool,
}

impl FileSink {
    /// Opens (creating) the file and recovers the chain's end.
    pub fn open(cfg: &FileSinkConfig) -> io::Result<(FileSink, Recovered)> {
        let path = PathBuf::from(&cfg.path);
        let mut file = open_append(&path)?;
        let mut recovered = Recovered::default();
        let mut len = file.metadata()?.len();
        let (last, torn_len) = last_line(&mut file, len)?;
        if torn_len > 0 {
            let saved = save_torn(&path, &mut file, len, torn_len)?;
            len -= torn_len as u64;
            file.set_len(len)?;
            file.sync_all()?;
            log::warn!(
                "audit: {}: cut off a torn last line of {torn_len} bytes (saved to {})",
                path.display(),
                saved.display()
            );
            recovered.torn = Some((torn_len, saved));
        }
        let last = match last {
            Some(line) => Some(line),
            None => match latest_rotated(&path)? {
                Some(prev) => {
                    let mut f = File::open(&prev)?;
                    let l = f.metadata()?.len();
                    last_line(&mut f, l)?.0
                }
                None => None,
            },
        };
        if let Some(line) = last {
            let sealed = chain::open(&line).map_err(|e| {
                io::Error::other(format!(
                    "{}: the last record is damaged ({e}); check it with `modelgate audit verify`",
                    path.display()
                ))
            })?;
            recovered.seq = sealed.head.seq;
            recovered.head = sealed.hash;
        } else {
            recovered.head = chain::GENESIS;
        }
        let first_seq = if len > 0 {
            first_line(&mut file)?
                .and_then(|l| chain::open(&l).ok())
                .map(|s| s.head.seq)
        } else {
            None
        };
        Ok((
            FileSink {
                path,
                file: Some(file),
                len,
                first_seq,
                last_seq: recovered.seq,
                opened: Instant::now(),
                rotate_bytes: cfg.rotate_bytes,
                rotate_interval: cfg.rotate_interval,
                fsync_interval: cfg.fsync_interval,
                last_sync: Instant::now(),
                dirty: false,
            },
            recovered,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sequence number of the last record written.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Appends `batch` (whole sealed lines, records `first_seq..=last_seq`).
    /// On failure the file is cut back to its last whole record, so a retry
    /// cannot leave a torn line behind.
    pub fn write(&mut self, batch: &[u8], first_seq: u64, last_seq: u64) -> io::Result<()> {
        if self.should_rotate(batch.len() as u64) {
            self.rotate()?;
        }
        let len = self.len;
        let file = self.file()?;
        if let Err(e) = file.write_all(batch) {
            let _ = file.set_len(len);
            return Err(e);
        }
        self.len += batch.len() as u64;
        self.first_seq.get_or_insert(first_seq);
        self.last_seq = last_seq;
        self.dirty = true;
        if self.fsync_interval.is_zero() {
            // The batch is written: a retry would append it twice. A failed
            // fsync is logged and retried by the next tick.
            if let Err(e) = self.sync() {
                log::error!("audit: fsync of {} failed: {e}", self.path.display());
            }
        }
        Ok(())
    }

    /// Fsyncs if records are waiting and the interval has passed (or `force`).
    pub fn tick(&mut self, force: bool) -> io::Result<()> {
        if self.dirty && (force || self.last_sync.elapsed() >= self.fsync_interval) {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if let Some(f) = &self.file {
            f.sync_data()?;
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn should_rotate(&self, incoming: u64) -> bool {
        if self.len == 0 {
            return false;
        }
        let by_size = self.rotate_bytes > 0 && self.len + incoming > self.rotate_bytes;
        let by_age = self
            .rotate_interval
            .is_some_and(|i| self.opened.elapsed() >= i);
        by_size || by_age
    }

    /// The current file, (re)created if a rotation left none.
    fn file(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            self.file = Some(open_append(&self.path)?);
        }
        Ok(self.file.as_mut().expect("just set"))
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.sync()?;
        let first = self.first_seq.unwrap_or(0);
        let to = rotated_name(&self.path, first);
        if to.exists() {
            return Err(io::Error::other(format!(
                "cannot rotate to {}: it exists",
                to.display()
            )));
        }
        fs::rename(&self.path, &to)?;
        // Renamed: from here on, a failure must not rename again.
        self.file = None;
        self.len = 0;
        self.first_seq = None;
        self.opened = Instant::now();
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename itself durable.
            File::open(dir)?.sync_all()?;
        }
        log::info!("audit: rotated {} to {}", self.path.display(), to.display());
        self.file().map(|_| ())
    }
}

/// Opens `path` for reading and appending, creating it and its directory.
/// Also the start-up check that a sink's path is writable.
pub fn open_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
}

/// `dir/stem.<seq>.ext` for `dir/stem.ext`.
pub fn rotated_name(path: &Path, first_seq: u64) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{first_seq:020}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{first_seq:020}"),
    };
    path.with_file_name(name)
}

/// The rotated file with the highest sequence number, if any.
fn latest_rotated(path: &Path) -> io::Result<Option<PathBuf>> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let ext = path.extension().map(|e| e.to_string_lossy().to_string());
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(&format!("{stem}.")) else {
            continue;
        };
        let digits = match &ext {
            Some(ext) => rest.strip_suffix(&format!(".{ext}")),
            None => Some(rest),
        };
        let Some(seq) = digits
            .filter(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u64>().ok())
        else {
            continue;
        };
        if best.as_ref().is_none_or(|(b, _)| seq > *b) {
            best = Some((seq, entry.path()));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// The last whole line (without `\n`) and the length of a torn tail (bytes
/// after the last `\n`).
pub fn last_line(file: &mut File, len: u64) -> io::Result<(Option<Vec<u8>>, usize)> {
    const BLOCK: u64 = 64 * 1024;
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = len;
    let mut torn: Option<usize> = None;
    loop {
        let start = pos.saturating_sub(BLOCK);
        let mut block = vec![0; (pos - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block)?;
        block.extend_from_slice(&buf);
        buf = block;
        pos = start;
        if torn.is_none() {
            if let Some(nl) = buf.iter().rposition(|b| *b == b'\n') {
                torn = Some(buf.len() - nl - 1);
            } else if pos == 0 {
                return Ok((None, buf.len()));
            } else {
                continue;
            }
        }
        let end = buf.len() - torn.expect("set above") - 1;
        if let Some(nl) = buf[..end].iter().rposition(|b| *b == b'\n') {
            return Ok((Some(buf[nl + 1..end].to_vec()), torn.unwrap_or(0)));
        }
        if pos == 0 {
            return Ok((Some(buf[..end].to_vec()), torn.unwrap_or(0)));
        }
    }
}

fn first_line(file: &mut File) -> io::Result<Option<Vec<u8>>> {
    file.seek(SeekFrom::Start(0))?;
    let mut out = Vec::new();
    let mut block = [0u8; 8192];
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(nl) = block[..n].iter().position(|b| *b == b'\n') {
            out.extend_from_slice(&block[..nl]);
            return Ok(Some(out));
        }
        out.extend_from_slice(&block[..n]);
    }
}

/// Copies a torn tail to `path.torn-<unix seconds>` before it is cut off.
fn save_torn(path: &Path, file: &mut File, len: u64, torn: usize) -> io::Result<PathBuf> {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".torn-{secs}"));
    let to = PathBuf::from(name);
    let mut bytes = vec![0; torn];
    file.seek(SeekFrom::Start(len - torn as u64))?;
    file.read_exact(&mut bytes)?;
    let mut out = OpenOptions::new().create(true).append(true).open(&to)?;
    out.write_all(&bytes)?;
    out.sync_all()?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(path: &Path) -> FileSinkConfig {
        FileSinkConfig {
            path: path.to_string_lossy().into(),
            rotate_bytes: 0,
            rotate_interval: None,
            fsync_interval: Duration::ZERO,
        }
    }

    fn sealed(chain: &mut chain::Chain, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            chain.seal(format!("{{\"kind\":\"t\",\"i\":{i}}}").as_bytes(), &mut out);
        }
        out
    }

    #[test]
    fn resumes_after_torn_line_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (mut sink, rec) = FileSink::open(&cfg(&path)).unwrap();
        assert_eq!((rec.seq, rec.head), (0, chain::GENESIS));
        let mut chain = chain::Chain::new(chain::ChainKey::Sha256, 0, chain::GENESIS);
        sink.write(&sealed(&mut chain, 3), 1, 3).unwrap();
        drop(sink);
        // A crash mid-write leaves half a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":4,\"prev\":\"ab").unwrap();
        let (mut sink, rec) = FileSink::open(&cfg(&path)).unwrap();
        assert_eq!((rec.seq, rec.head), (3, chain.head));
        let (torn, saved) = rec.torn.unwrap();
        assert_eq!(torn, 19);
        assert_eq!(fs::read(saved).unwrap(), b"{\"seq\":4,\"prev\":\"ab");
        assert!(fs::read(&path).unwrap().ends_with(b"}\n"));

        // Rotation leaves an empty current file; the head is found in the rotated one.
        sink.rotate().unwrap();
        drop(sink);
        assert!(rotated_name(&path, 1).exists());
        let (_, rec) = FileSink::open(&cfg(&path)).unwrap();
        assert_eq!((rec.seq, rec.head), (3, chain.head));
    }

    #[test]
    fn rotates_by_size_and_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let mut c = cfg(&path);
        c.rotate_bytes = 400;
        let (mut sink, _) = FileSink::open(&c).unwrap();
        let mut chain = chain::Chain::new(chain::ChainKey::Sha256, 0, chain::GENESIS);
        for seq in 1..=6 {
            sink.write(&sealed(&mut chain, 1), seq, seq).unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".jsonl"))
            .collect();
        names.sort();
        assert!(names.len() >= 3, "{names:?}");
        assert_eq!(names[0], "a.00000000000000000001.jsonl");
        assert_eq!(names.last().unwrap(), "a.jsonl");
        for n in &names {
            assert!(
                fs::metadata(dir.path().join(n)).unwrap().len() <= 400,
                "{n}"
            );
        }

        let path = dir.path().join("b.jsonl");
        let mut c = cfg(&path);
        // An hour's interval, and the sink aged by moving its opening back:
        // a busy machine cannot make two writes look an interval apart.
        c.rotate_interval = Some(Duration::from_secs(3600));
        let (mut sink, _) = FileSink::open(&c).unwrap();
        sink.write(&sealed(&mut chain, 1), 7, 7).unwrap();
        sink.write(&sealed(&mut chain, 1), 8, 8).unwrap();
        assert!(!rotated_name(&path, 7).exists(), "too young to rotate");
        sink.opened = (sink.opened)
            .checked_sub(Duration::from_secs(3601))
            .expect("the monotonic clock goes back an hour");
        sink.write(&sealed(&mut chain, 1), 9, 9).unwrap();
        assert!(rotated_name(&path, 7).exists());
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 1);
    }

    #[test]
    fn last_line_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let long = "y".repeat(200_000);
        fs::write(&path, format!("a\n{long}\nzz")).unwrap();
        let mut f = File::open(&path).unwrap();
        let len = f.metadata().unwrap().len();
        let (line, torn) = last_line(&mut f, len).unwrap();
        assert_eq!((line.unwrap(), torn), (long.into_bytes(), 2));
        fs::write(&path, "only\n").unwrap();
        let mut f = File::open(&path).unwrap();
        assert_eq!(last_line(&mut f, 5).unwrap(), (Some(b"only".to_vec()), 0));
        fs::write(&path, "").unwrap();
        let mut f = File::open(&path).unwrap();
        assert_eq!(last_line(&mut f, 0).unwrap(), (None, 0));
    }
}
