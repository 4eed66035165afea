//! The audit trail: one hash-chained record per call, durable and
//! tamper-evident, without disk I/O on the request path.
//!
//! The queue is bounded at admission: a call is let in (given a [`Slot`])
//! only while fewer than `queue_capacity` records wait for the writer, and
//! its `begin` record before forwarding needs the same. A call that was let
//! in always gets its final record queued, so the queue holds at most
//! `queue_capacity` plus one record per call in flight; concurrency is not
//! capped by the queue (10,000 open streams are 10,000 calls in flight).
//! What a call meets when the queue is full is the operator's `on_full`
//! choice. The [`writer`] (a Pingora background
//! service) drains the queue, encodes and seals records ([`record`],
//! [`chain`]) and hands them to the sinks ([`file`], [`elastic`]).
//! [`verify`] checks a chain across rotated files.

pub mod chain;
pub mod elastic;
pub mod file;
pub mod reassemble;
pub mod record;
pub mod verify;
pub mod writer;

use crate::config::{AuditConfig, ConfigError, OnFull, SinkConfig};
use crate::mask::MaskEngine;
use crate::metrics::Metrics;
use record::Entry;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// The queue between the proxy and the writer: records waiting are counted
/// in `depth`; the writer subtracts what it takes and wakes `space` waiters.
pub struct Queue {
    pub depth: AtomicUsize,
    pub space: Notify,
}

/// The proxy's handle on the audit trail.
pub struct Audit {
    /// Used by reference for the calls' records ([`Audit::send`]).
    recorder: Recorder,
    capacity: usize,
    on_full: OnFull,
    block_timeout: Duration,
    fail_after_ms: u64,
    health: Arc<[SinkHealth]>,
    metrics: Arc<Metrics>,
    /// Response bytes captured per call for reassembly.
    pub capture_limit: usize,
}

/// The right to queue one record, granted at admission ([`Audit::slot`])
/// and used up by [`Audit::send`]. It holds no handle of its own: a sender
/// and a queue reference cloned into each slot, two slots a call, were
/// reference counts updated on the proxy's core and on the writer's, a
/// cross-core cache miss at each clone and drop.
#[must_use = "a slot is used up by Audit::send"]
pub struct Slot(());

/// Queues records that are not admitted calls (approval steps: rare, and
/// each follows a call or an approver's action that already happened).
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Entry>,
    queue: Arc<Queue>,
}

impl Recorder {
    /// Queues the record; false if the writer is gone (the process is stopping).
    pub fn send(&self, entry: Entry) -> bool {
        self.queue.depth.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(entry).is_err() {
            self.queue.depth.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// Why a call cannot be recorded (and so, failing closed, is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    QueueFull,
    SinkFailing,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::QueueFull => "audit queue full",
            Refusal::SinkFailing => "audit sink failing",
        }
    }
}

/// Whether a sink is keeping up; shared by the writer and the proxy.
pub struct SinkHealth {
    pub label: String,
    /// When the sink started failing, in ms since [`epoch`] (0: healthy).
    failing_since: AtomicU64,
}

impl SinkHealth {
    fn new(label: String) -> Self {
        SinkHealth {
            label,
            failing_since: AtomicU64::new(0),
        }
    }

    pub fn failed(&self) {
        let now = now_ms().max(1);
        let _ = self
            .failing_since
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn ok(&self) {
        self.failing_since.store(0, Ordering::Relaxed);
    }

    /// How long the sink has been failing; `now` (ms since [`epoch`]) is
    /// asked for only when it is failing.
    fn failing_for(&self, now: impl FnOnce() -> u64) -> Option<u64> {
        match self.failing_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(now().saturating_sub(since)),
        }
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// Raw response bytes kept per call for every byte of stored text: SSE
/// spends ~30-40 wire bytes per token.
const CAPTURE_PER_TEXT_BYTE: usize = 16;

impl Audit {
    /// Builds the handle and the writer that drains it. Checks that every
    /// file sink's path is writable, so a bad path fails at start-up.
    pub fn build(
        cfg: &AuditConfig,
        masks: &MaskEngine,
        metrics: Arc<Metrics>,
    ) -> Result<(Audit, writer::AuditWriter), ConfigError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Arc::new(Queue {
            depth: AtomicUsize::new(0),
            space: Notify::new(),
        });
        let health: Arc<[SinkHealth]> = cfg
            .sinks
            .iter()
            .map(|s| SinkHealth::new(sink_label(s)))
            .collect();
        let writer = writer::AuditWriter::build(
            cfg,
            masks,
            rx,
            queue.clone(),
            health.clone(),
            metrics.clone(),
        )?;
        epoch();
        let audit = Audit {
            recorder: Recorder { tx, queue },
            capacity: cfg.queue_capacity,
            on_full: cfg.on_full,
            block_timeout: cfg.block_timeout,
            fail_after_ms: cfg.fail_closed_after.as_millis() as u64,
            health,
            metrics,
            capture_limit: cfg.max_body_bytes.saturating_mul(CAPTURE_PER_TEXT_BYTE),
        };
        Ok((audit, writer))
    }

    /// A slot for a record, or why there is none. `Ok(None)`: under `drop`,
    /// the record will not be kept (counted).
    pub async fn slot(&self) -> Result<Option<Slot>, Refusal> {
        if self.on_full != OnFull::Drop && self.sink_failing() {
            self.metrics.audit_refused.inc();
            return Err(Refusal::SinkFailing);
        }
        if self.recorder.tx.is_closed() {
            // The writer is gone (shutting down): nothing can be recorded.
            return self.full("writer_stopped");
        }
        if self.has_room() {
            return Ok(Some(self.grant()));
        }
        match self.on_full {
            OnFull::Block => {
                let deadline = tokio::time::Instant::now() + self.block_timeout;
                loop {
                    let space = self.recorder.queue.space.notified();
                    if self.has_room() {
                        return Ok(Some(self.grant()));
                    }
                    if tokio::time::timeout_at(deadline, space).await.is_err() {
                        return self.full("queue_full");
                    }
                }
            }
            _ => self.full("queue_full"),
        }
    }

    fn has_room(&self) -> bool {
        self.recorder.queue.depth.load(Ordering::Relaxed) < self.capacity
    }

    fn grant(&self) -> Slot {
        Slot(())
    }

    /// Queues a call's record in the slot taken for it; false if the
    /// writer is gone (the process is stopping).
    pub fn send(&self, _slot: Slot, entry: Entry) -> bool {
        self.recorder.send(entry)
    }

    /// A handle for records outside the call path (approval steps).
    pub fn recorder(&self) -> Recorder {
        self.recorder.clone()
    }

    /// No room: refused (503), or under `drop` let through unrecorded.
    fn full(&self, reason: &str) -> Result<Option<Slot>, Refusal> {
        if self.on_full == OnFull::Drop {
            self.metrics
                .audit_dropped
                .with_label_values(&[reason])
                .inc();
            return Ok(None);
        }
        self.metrics.audit_refused.inc();
        Err(Refusal::QueueFull)
    }

    /// Whether a call whose record cannot be kept is refused (not `drop`).
    pub fn refuses_unrecorded(&self) -> bool {
        self.on_full != OnFull::Drop
    }

    /// A sink has been failing for longer than `fail_closed_after`.
    fn sink_failing(&self) -> bool {
        // No clock read while every sink is healthy: this runs twice per call.
        self.health.iter().any(|h| {
            h.failing_for(now_ms)
                .is_some_and(|d| d >= self.fail_after_ms)
        })
    }
}

/// The label a sink has in metrics and logs.
fn sink_label(s: &SinkConfig) -> String {
    match s {
        SinkConfig::File(f) => format!("file:{}", f.path),
        SinkConfig::Elasticsearch(e) => format!("elasticsearch:{}/{}", e.url, e.index),
    }
}
