//! The audit trail: one hash-chained record per call, durable and
//! tamper-evident, without disk I/O on the request path.
//!
//! The proxy takes a [`Slot`] on the bounded queue when a call arrives (its
//! final record can then always be queued) and another for the `begin`
//! record it queues before forwarding. What happens when no slot is free is
//! the operator's `on_full` choice. The [`writer`] (a Pingora background
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{self, error::TrySendError, OwnedPermit};

/// The proxy's handle on the audit trail.
pub struct Audit {
    tx: mpsc::Sender<Entry>,
    on_full: OnFull,
    block_timeout: Duration,
    fail_after_ms: u64,
    health: Arc<[SinkHealth]>,
    metrics: Arc<Metrics>,
    /// Response bytes captured per call for reassembly.
    pub capture_limit: usize,
}

/// Room for one record on the queue, taken before it is needed.
pub struct Slot(OwnedPermit<Entry>);

impl Slot {
    pub fn send(self, entry: Entry) {
        self.0.send(entry);
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

    fn failing_for(&self, now: u64) -> Option<u64> {
        match self.failing_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(now.saturating_sub(since)),
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
        let (tx, rx) = mpsc::channel(cfg.queue_capacity);
        let health: Arc<[SinkHealth]> = cfg
            .sinks
            .iter()
            .map(|s| SinkHealth::new(sink_label(s)))
            .collect();
        let writer = writer::AuditWriter::build(cfg, masks, rx, health.clone(), metrics.clone())?;
        epoch();
        let audit = Audit {
            tx,
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
        let refuse = || {
            self.metrics.audit_refused.inc();
            Err(Refusal::QueueFull)
        };
        match self.tx.clone().try_reserve_owned() {
            Ok(p) => Ok(Some(Slot(p))),
            Err(TrySendError::Full(tx)) => match self.on_full {
                OnFull::FailClosed => refuse(),
                OnFull::Block => {
                    match tokio::time::timeout(self.block_timeout, tx.reserve_owned()).await {
                        Ok(Ok(p)) => Ok(Some(Slot(p))),
                        _ => refuse(),
                    }
                }
                OnFull::Drop => {
                    self.metrics
                        .audit_dropped
                        .with_label_values(&["queue_full"])
                        .inc();
                    Ok(None)
                }
            },
            // The writer is gone (shutting down): nothing can be recorded.
            Err(TrySendError::Closed(_)) => match self.on_full {
                OnFull::Drop => {
                    self.metrics
                        .audit_dropped
                        .with_label_values(&["writer_stopped"])
                        .inc();
                    Ok(None)
                }
                _ => refuse(),
            },
        }
    }

    /// A sink has been failing for longer than `fail_closed_after`.
    fn sink_failing(&self) -> bool {
        let now = now_ms();
        self.health
            .iter()
            .any(|h| h.failing_for(now).is_some_and(|d| d >= self.fail_after_ms))
    }
}

/// The label a sink has in metrics and logs.
fn sink_label(s: &SinkConfig) -> String {
    match s {
        SinkConfig::File(f) => format!("file:{}", f.path),
        SinkConfig::Elasticsearch(e) => format!("elasticsearch:{}/{}", e.url, e.index),
    }
}
