//! The audit writer, a Pingora background service: drains the queue in
//! batches, encodes and seals each record, appends the batch to every file
//! sink (retrying a failing one, which fills the queue: back-pressure) and
//! feeds the HTTP sinks. It owns the chain, so records are sealed in one
//! order. It writes a `start` record when it starts (after taking each
//! file's lock: during a graceful upgrade the old process writes until it
//! exits) and a `shutdown` record when it stops, after draining the queue.

use super::chain::{Chain, ChainKey};
use super::elastic::{Doc, ElasticSink};
use super::file::FileSink;
use super::record::{now, Encoder, Entry};
use super::{Queue, SinkHealth};
use crate::config::{AuditConfig, ConfigError, FileSinkConfig, OnFull, SinkConfig};
use crate::mask::MaskEngine;
use crate::metrics::Metrics;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde_json::json;
use std::fs::{File, OpenOptions};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Records taken from the queue per batch, at most.
const BATCH: usize = 512;
/// How often the writer wakes to fsync when idle.
const TICK: Duration = Duration::from_millis(100);
/// After a batch smaller than `BATCH`, the writer waits this long before
/// taking the next: records pile up meanwhile, so the proxy's sends rarely
/// have to wake the writer's thread (a context switch per record cost ~20%
/// of throughput on 2 cores). Records reach the sinks at most this much later.
const PACE: Duration = Duration::from_millis(10);

pub struct AuditWriter {
    state: Mutex<Option<State>>,
}

/// A file sink before the writer takes its lock and opens it.
struct FileSpec {
    cfg: FileSinkConfig,
    health: usize,
}

struct State {
    rx: mpsc::UnboundedReceiver<Entry>,
    queue: Arc<Queue>,
    key: ChainKey,
    encoder: Encoder,
    specs: Vec<FileSpec>,
    elastic: Vec<ElasticSink>,
    on_full: OnFull,
    health: Arc<[SinkHealth]>,
    metrics: Arc<Metrics>,
    /// Set once the files are locked and open.
    live: Option<Live>,
    /// Fed every forwarded call's answer, when `drift` is configured.
    drift: Option<crate::drift::Drift>,
}

struct Live {
    chain: Chain,
    files: Vec<(FileSink, usize, File)>,
    feeds: Vec<(mpsc::Sender<Doc>, usize)>,
    buf: Vec<u8>,
    object: Vec<u8>,
    docs: Vec<(usize, usize, [u8; 32])>,
    draining: bool,
}

impl AuditWriter {
    pub fn build(
        cfg: &AuditConfig,
        masks: &MaskEngine,
        rx: mpsc::UnboundedReceiver<Entry>,
        queue: Arc<Queue>,
        health: Arc<[SinkHealth]>,
        metrics: Arc<Metrics>,
    ) -> Result<AuditWriter, ConfigError> {
        let mut specs = Vec::new();
        let mut elastic = Vec::new();
        for (i, sink) in cfg.sinks.iter().enumerate() {
            match sink {
                SinkConfig::File(f) => {
                    check_writable(f).map_err(|e| {
                        ConfigError::at(
                            format!("audit.sinks[{i}].path"),
                            format!("cannot open `{}` for appending: {e}", f.path),
                        )
                    })?;
                    specs.push(FileSpec {
                        cfg: FileSinkConfig {
                            path: f.path.clone(),
                            rotate_bytes: f.rotate_bytes,
                            rotate_interval: f.rotate_interval,
                            fsync_interval: f.fsync_interval,
                        },
                        health: i,
                    });
                }
                SinkConfig::Elasticsearch(e) => {
                    let sink = ElasticSink::new(e, health.clone(), i, metrics.clone())
                        .map_err(|m| ConfigError::at(format!("audit.sinks[{i}].url"), m))?;
                    elastic.push(sink);
                }
            }
        }
        let encoder = Encoder {
            bodies: cfg.bodies,
            max_body: cfg.max_body_bytes,
            rules: masks.audit_rules(),
        };
        let key = ChainKey::new(cfg.hmac_key.as_ref().map(|k| k.0.as_bytes()));
        Ok(AuditWriter {
            state: Mutex::new(Some(State {
                rx,
                queue,
                key,
                encoder,
                specs,
                elastic,
                on_full: cfg.on_full,
                health,
                metrics,
                live: None,
                drift: None,
            })),
        })
    }

    /// Feeds each call's reassembled answer to `drift`, and writes the
    /// alerts it raises into the trail.
    pub fn set_drift(&self, drift: crate::drift::Drift) {
        if let Some(state) = self.state.lock().expect("not poisoned").as_mut() {
            state.drift = Some(drift);
        }
    }
}

fn check_writable(f: &FileSinkConfig) -> std::io::Result<()> {
    super::file::open_append(std::path::Path::new(&f.path)).map(drop)
}

#[async_trait]
impl BackgroundService for AuditWriter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut state) = self.state.lock().expect("not poisoned").take() else {
            return;
        };
        if let Err(e) = state.go_live().await {
            // Nothing can be written: the queue fills and, failing closed,
            // calls are refused. Say so loudly.
            log::error!("audit: the writer cannot start: {e}");
            for h in state.health.iter() {
                h.failed();
            }
            return;
        }
        let mut entries = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                n = state.rx.recv_many(&mut entries, BATCH) => {
                    if n == 0 {
                        break; // every sender is gone
                    }
                    state.queue.depth.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
                    state.queue.space.notify_waiters();
                    let full = n == BATCH;
                    state.write_batch(&mut entries).await;
                    // Under steady load the TICK branch below never fires.
                    state.tick(false);
                    if !full && !state.draining() {
                        tokio::time::sleep(PACE).await;
                    }
                }
                _ = shutdown.changed(), if !state.draining() => {
                    // Calls in flight still finish: keep writing, but
                    // fsync every batch from now on.
                    if let Some(live) = state.live.as_mut() {
                        live.draining = true;
                    }
                    state.tick(true);
                }
                _ = tokio::time::sleep(TICK) => state.tick(false),
            }
        }
    }
}

impl State {
    fn draining(&self) -> bool {
        self.live.as_ref().is_some_and(|l| l.draining)
    }

    /// Takes each file's lock, opens it, resumes the chain, starts the HTTP
    /// sinks and writes the `start` record.
    async fn go_live(&mut self) -> Result<(), String> {
        let mut files = Vec::new();
        let mut resumed: Option<(u64, [u8; 32])> = None;
        let mut torn = Vec::new();
        for spec in &self.specs {
            let lock = lock_file(&spec.cfg.path).await?;
            let (sink, rec) =
                FileSink::open(&spec.cfg).map_err(|e| format!("{}: {e}", spec.cfg.path))?;
            if let Some((n, saved)) = &rec.torn {
                torn.push(json!({"path": spec.cfg.path, "bytes": n, "saved_to": saved}));
            }
            match resumed {
                Some((seq, head)) if (seq, head) != (rec.seq, rec.head) => {
                    log::error!(
                        "audit: {} ends at record {} but another file sink at {seq}; continuing from the later one leaves a gap in the shorter file (copy the missing lines over to repair it)",
                        spec.cfg.path,
                        rec.seq
                    );
                    if rec.seq > seq {
                        resumed = Some((rec.seq, rec.head));
                    }
                }
                None => resumed = Some((rec.seq, rec.head)),
                _ => {}
            }
            files.push((sink, spec.health, lock));
        }
        let (seq, head) = resumed.unwrap_or((0, super::chain::GENESIS));
        let mut feeds = Vec::new();
        for sink in self.elastic.drain(..) {
            let (tx, rx) = mpsc::channel(sink.max_buffer());
            feeds.push((tx, sink.health_index()));
            tokio::spawn(sink.run(rx));
        }
        self.live = Some(Live {
            chain: Chain::new(self.key.clone(), seq, head),
            files,
            feeds,
            buf: Vec::new(),
            object: Vec::new(),
            docs: Vec::new(),
            draining: false,
        });
        let start = json!({
            "kind": "start",
            "ts": now(),
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "resumed_after_seq": seq,
            "torn": torn,
        });
        self.write_system(&start).await;
        Ok(())
    }

    /// Encodes, seals and writes `entries` (emptied).
    async fn write_batch(&mut self, entries: &mut Vec<Entry>) {
        let live = self.live.as_mut().expect("live before the loop");
        live.buf.clear();
        live.docs.clear();
        let first = live.chain.seq + 1;
        for entry in entries.drain(..) {
            live.object.clear();
            let answer = self.encoder.encode(&entry, &mut live.object);
            let start = live.buf.len();
            let hash = live.chain.seal(&live.object, &mut live.buf);
            live.docs.push((start, live.buf.len() - 1, hash));
            let (Some(drift), Some(answer), Entry::End(call, outcome)) =
                (self.drift.as_mut(), answer, &entry)
            else {
                continue;
            };
            for alert in drift.observe(call, outcome, &answer) {
                live.object.clear();
                serde_json::to_writer(&mut live.object, &alert).expect("json serialises");
                let start = live.buf.len();
                let hash = live.chain.seal(&live.object, &mut live.buf);
                live.docs.push((start, live.buf.len() - 1, hash));
            }
        }
        self.flush(first).await;
        self.set_depth_metric();
    }

    fn set_depth_metric(&self) {
        let depth = self.queue.depth.load(std::sync::atomic::Ordering::Relaxed);
        self.metrics.audit_queue_depth.set(depth as i64);
    }

    async fn write_system(&mut self, record: &serde_json::Value) {
        let live = self.live.as_mut().expect("live");
        live.buf.clear();
        live.docs.clear();
        let first = live.chain.seq + 1;
        let object = serde_json::to_vec(record).expect("json serialises");
        let hash = live.chain.seal(&object, &mut live.buf);
        live.docs.push((0, live.buf.len() - 1, hash));
        self.flush(first).await;
    }

    /// Writes `live.buf` to every file sink (retrying until each has it) and
    /// hands its records to the HTTP sinks.
    async fn flush(&mut self, first: u64) {
        let live = self.live.as_mut().expect("live");
        let records = live.docs.len() as u64;
        let last = live.chain.seq;
        for (file, h, _) in live.files.iter_mut() {
            let mut backoff = Duration::from_millis(50);
            loop {
                match file.write(&live.buf, first, last) {
                    Ok(()) => {
                        if live.draining {
                            let _ = file.tick(true);
                        }
                        self.health[*h].ok();
                        break;
                    }
                    Err(e) => {
                        let health = &self.health[*h];
                        health.failed();
                        self.metrics
                            .audit_sink_errors
                            .with_label_values(&[health.label.as_str()])
                            .inc();
                        log::error!(
                            "audit: writing {} failed: {e}; retrying in {backoff:?}",
                            file.path().display()
                        );
                        let depth = self.queue.depth.load(std::sync::atomic::Ordering::Relaxed);
                        self.metrics.audit_queue_depth.set(depth as i64);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
            self.metrics
                .audit_written
                .with_label_values(&[self.health[*h].label.as_str()])
                .inc_by(records);
        }
        if live.feeds.is_empty() {
            return;
        }
        let buf = Bytes::copy_from_slice(&live.buf);
        for &(start, end, hash) in &live.docs {
            let doc = Doc {
                id: hex::encode(hash),
                line: buf.slice(start..end),
            };
            for (tx, h) in &live.feeds {
                let sent = match self.on_full {
                    OnFull::Drop => tx.try_send(doc.clone()).is_ok(),
                    // Back-pressure: a collector that is down long enough
                    // fills its buffer, then the queue, then calls wait or
                    // are refused.
                    _ => tx.send(doc.clone()).await.is_ok(),
                };
                if !sent {
                    self.metrics
                        .audit_dropped
                        .with_label_values(&["sink_buffer_full"])
                        .inc();
                    self.health[*h].failed();
                }
            }
        }
    }

    fn tick(&mut self, force: bool) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        for (file, h, _) in live.files.iter_mut() {
            if let Err(e) = file.tick(force) {
                self.health[*h].failed();
                log::error!("audit: fsync of {} failed: {e}", file.path().display());
            }
        }
    }

    /// At shutdown (runtime teardown drops the task): writes what is still
    /// queued and a `shutdown` record, synchronously, and fsyncs. A batch
    /// sealed but not yet written (the task was dropped while retrying a
    /// failing sink) goes first, so the chain has no gap.
    fn finish(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let pending_first = live.chain.seq + 1 - live.docs.len() as u64;
        for (file, _, _) in live.files.iter_mut() {
            if file.last_seq() < live.chain.seq && file.last_seq() + 1 == pending_first {
                if let Err(e) = file.write(&live.buf, pending_first, live.chain.seq) {
                    log::error!(
                        "audit: final write to {} failed: {e}",
                        file.path().display()
                    );
                }
            }
        }
        let mut out = Vec::new();
        let mut object = Vec::new();
        let first = live.chain.seq + 1;
        let mut n = 0;
        while let Ok(entry) = self.rx.try_recv() {
            object.clear();
            self.encoder.encode(&entry, &mut object);
            live.chain.seal(&object, &mut out);
            n += 1;
        }
        let stop =
            json!({"kind": "shutdown", "ts": now(), "pid": std::process::id(), "drained": n});
        live.chain
            .seal(&serde_json::to_vec(&stop).expect("json"), &mut out);
        let last = live.chain.seq;
        for (file, _, _) in live.files.iter_mut() {
            if file.last_seq() + 1 != first {
                log::error!(
                    "audit: {} misses records before {first}; not appending after the gap",
                    file.path().display()
                );
                continue;
            }
            if let Err(e) = file.write(&out, first, last).and_then(|_| file.tick(true)) {
                log::error!(
                    "audit: final write to {} failed: {e}",
                    file.path().display()
                );
            }
        }
        log::info!("audit: writer stopped after draining {n} records");
        self.live = None;
    }
}

impl Drop for State {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Takes the exclusive lock of `path.lock`, waiting while another process
/// (the old one, during a graceful upgrade) holds it.
async fn lock_file(path: &str) -> Result<File, String> {
    let lock_path = format!("{path}.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("{lock_path}: {e}"))?;
    let mut waited = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                if !waited {
                    log::info!("audit: waiting for {lock_path} (held by the previous process)");
                    waited = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(format!("{lock_path}: {e}")),
        }
    }
}
