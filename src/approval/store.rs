//! Approval requests and where they live: in memory (one replica) or in
//! Redis (shared by replicas, with pub/sub so a decision made on one replica
//! releases a call held on another).
//!
//! A policy rule with `action: require_approval` makes the gateway create an
//! [`Approval`] request; a human approves or denies it in the console. Two
//! modes:
//! - `hold`: the HTTP call waits ([`ApprovalStore::wait`]) until the request
//!   is decided or expires. Waiting costs one map entry and one parked
//!   future per call, no thread, so thousands may wait at once.
//! - `ticket`: the client gets 403 with the request id at once; after the
//!   approval it repeats the same request with the header
//!   `x-modelgate-approval: <id>`, and [`ApprovalStore::consume`] checks that
//!   the approval was granted to that client for that exact body (SHA-256),
//!   and uses it up (one call per approval).
//!
//! Not for: policy evaluation, building the request summary (the caller
//! masks the prompt and passes the summary), auditing (callers audit the
//! records that [`ApprovalStore::decide`], [`ApprovalStore::consume`],
//! [`ApprovalStore::expire`] and [`ApprovalStore::sweep`] return), or
//! running the sweeper task (the caller calls `sweep` every second or so).
//!
//! Lifecycle: `pending` → `approved` | `denied` | `expired`, then
//! `approved` → `used`. A pending request past `expires_at_ms` is refused by
//! `decide` and turned into `expired` by `sweep` (or by `expire`), so that
//! exactly one call, on exactly one replica, returns each expiry for the
//! audit log. An approval may be used until `valid_until_ms` (decision time
//! plus `grant_ttl`); after that `consume` answers [`ConsumeError::Expired`]
//! and the record stays `approved`, with `valid_until_ms` in the past.
//! Records are kept for `retain` after creation (longer if the request could
//! still be decided or used by then), then dropped.
//!
//! # Redis layout
//!
//! `{prefix}` is `key_prefix` (usually `modelgate:`).
//! - `{prefix}approval:{id}`: the record as JSON, with a TTL of
//!   `max(retain, expires_at - created_at + grant_ttl)` set when created;
//!   transitions keep the TTL (`SET … KEEPTTL`).
//! - `{prefix}approvals`: a sorted set of every id, scored by `created_at_ms`,
//!   for listing newest first. Members whose record has expired are dropped
//!   when a listing meets them and, from the oldest end, by `sweep`.
//! - `{prefix}approvals:pending`: a sorted set of the pending ids, scored by
//!   `expires_at_ms`, for `sweep`, `pending_count` and `max_pending`.
//! - Channel `{prefix}approval-events`: every state change, as the [`Event`] JSON.
//!   Each store subscribes on its own connection and forwards the events to
//!   [`ApprovalStore::subscribe`] receivers and to its waiters.
//!
//! Every transition is one Lua script (decode with `cjson`, check, encode,
//! `SET … KEEPTTL`, update the sets, `PUBLISH`), so it is atomic across
//! replicas, and it reads "now" from Redis's `TIME`, so replicas whose
//! clocks disagree still agree on expiry (`created_at_ms` and
//! `expires_at_ms` come from the creating replica's clock). `cjson` keeps 14
//! significant digits, so timestamps are capped at 99,999,999,999,999 ms
//! (year 5138), and it cannot tell an empty array from an empty object, so
//! the scripts leave an empty `requester_groups` out and reading treats a
//! missing one as empty. The sweep script reads record keys it computes from
//! the prefix, so the layout is for a single Redis (or a primary with
//! replicas), not Redis Cluster.
//!
//! Needs Redis 6 or later: `SET … KEEPTTL`, and RESP3 (`HELLO 3`) on both
//! connections. With RESP3 the redis crate delivers pub/sub messages on a
//! Tokio channel (its RESP2 `PubSub` is a futures `Stream`, which would need
//! another crate), and its connection manager reconnects as soon as a
//! connection drops. Every Redis call is bounded by the configured timeout.
//! Events published while the event connection is down are lost: the
//! subscriber reconnects with backoff and then wakes every waiter to re-read
//! its record, and waiters re-read it every second anyway, so a held call is
//! released at most about a second late even then.

use crate::config::redact_url;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Client, Cmd, FromRedisValue, IntoConnectionInfo, ProtocolVersion,
    PushInfo, PushKind, RedisError, RedisResult, Script, ScriptInvocation, Value,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, Notify};
use tokio::time::Instant;

/// Events buffered per [`ApprovalStore::subscribe`] receiver before it lags.
const EVENT_CAPACITY: usize = 1024;
/// Redis mode: how often a waiter re-reads its record, in case an event was
/// lost while the event connection was down.
pub const RECHECK: Duration = Duration::from_secs(1);
/// How often the event connection is checked with PING.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Reconnect backoff of the event connection: first and longest delay.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Largest timestamp or duration (ms) stored; `cjson` keeps 14 digits.
const MAX_MS: u64 = 99_999_999_999_999;
/// Redis listing: ids read per round trip, and most records examined.
const LIST_PAGE: usize = 200;
const LIST_MAX_SCAN: usize = 50_000;
/// Redis sweep: overdue requests expired per script run, and runs per sweep.
const SWEEP_BATCH: usize = 500;
const SWEEP_ROUNDS: usize = 20;

/// How a call that needs approval waits for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The call is held open until the request is decided or expires.
    Hold,
    /// The call is refused (403) with the request id; the client repeats it
    /// with `x-modelgate-approval: <id>` once approved.
    Ticket,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Hold => "hold",
            Mode::Ticket => "ticket",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an approval request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for an approver.
    Pending,
    /// Approved; usable once, until `valid_until_ms`.
    Approved,
    Denied,
    /// Nobody decided before `expires_at_ms`, or the held caller gave up.
    Expired,
    /// Approved and used by its call.
    Used,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
            Status::Used => "used",
        }
    }

    /// The inverse of [`Status::as_str`].
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "approved" => Status::Approved,
            "denied" => Status::Denied,
            "expired" => Status::Expired,
            "used" => Status::Used,
            _ => return None,
        })
    }

    /// Whether the request can no longer change (denied, expired or used).
    pub fn is_final(self) -> bool {
        matches!(self, Status::Denied | Status::Expired | Status::Used)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One approval request. Times are unix milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// `apr_` and 32 lowercase hex digits ([`Approval::new_id`]).
    pub id: String,
    pub status: Status,
    pub mode: Mode,
    /// The client's name.
    pub requester: String,
    /// How the client authenticated: `api_key` or `jwt`.
    pub requester_via: String,
    /// Missing means none: Redis's `cjson` cannot write an empty array.
    #[serde(default)]
    pub requester_groups: Vec<String>,
    pub route: String,
    pub path: String,
    pub model: Option<String>,
    /// The policy rule that asked for approval.
    pub rule: String,
    pub reason: String,
    /// Masked summary of the prompt, made by the caller.
    pub summary: String,
    /// Lowercase hex SHA-256 of the exact request body.
    pub body_sha256: String,
    /// What the approval is bound to: lowercase hex SHA-256 over the method,
    /// path and query, content type, route, rule and body (made by the
    /// caller). A redeeming call must hash the same.
    #[serde(default)]
    pub request_sha256: String,
    pub created_at_ms: u64,
    /// A pending request becomes expired after this.
    pub expires_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// An approved request may be used (ticket) or released (hold) until
    /// then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at_ms: Option<u64>,
}

impl Approval {
    /// A fresh id: `apr_` and 32 lowercase hex digits (a random UUID).
    pub fn new_id() -> String {
        format!("apr_{}", uuid::Uuid::new_v4().simple())
    }

    /// How long after creation the record is kept: `retain`, or longer if
    /// it could still be decided and then used by then.
    fn keep_ms(&self, cfg: &StoreConfig) -> u64 {
        let live = self
            .expires_at_ms
            .saturating_sub(self.created_at_ms)
            .saturating_add(ms(cfg.grant_ttl));
        ms(cfg.retain).max(live).clamp(1, MAX_MS)
    }
}

/// What happened to an approval request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Requested,
    Approved,
    Denied,
    Expired,
    Used,
}

impl EventKind {
    fn of(status: Status) -> EventKind {
        match status {
            Status::Pending => EventKind::Requested,
            Status::Approved => EventKind::Approved,
            Status::Denied => EventKind::Denied,
            Status::Expired => EventKind::Expired,
            Status::Used => EventKind::Used,
        }
    }
}

/// A state change and the record after it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub approval: Approval,
}

/// How long approvals and records last, and how many may be pending.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// An approved request may be used (ticket) or released (hold) until
    /// `decided_at + grant_ttl`.
    pub grant_ttl: Duration,
    /// Finished records are kept (listable, gettable) this long after
    /// creation, then dropped.
    pub retain: Duration,
    /// `create` refuses new requests while this many are pending.
    pub max_pending: usize,
    /// `create` refuses a requester's new request while this many of theirs
    /// are pending, so one client cannot fill `max_pending` for everyone.
    pub max_pending_per_requester: usize,
}

/// Where the Redis store is.
#[derive(Clone)]
pub struct RedisStoreConfig {
    /// `redis://[user:password@]host:port/db`. Redacted from `Debug` and
    /// from error messages.
    pub url: String,
    /// Prefix of every key and channel. Usually `modelgate:`.
    pub key_prefix: String,
    /// Longest wait for Redis per call. Connecting may take up to
    /// `max(timeout, 1s)`.
    pub timeout: Duration,
    /// How often waiters re-read their record, in case a pub/sub message
    /// was missed.
    pub recheck: Duration,
}

impl RedisStoreConfig {
    /// `url` with prefix `modelgate:` and a 1 s timeout.
    pub fn new(url: impl Into<String>) -> Self {
        RedisStoreConfig {
            url: url.into(),
            key_prefix: "modelgate:".into(),
            timeout: Duration::from_secs(1),
            recheck: RECHECK,
        }
    }
}

impl fmt::Debug for RedisStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreConfig")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("recheck", &self.recheck)
            .finish()
    }
}

/// The store could not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// `max_pending` requests are already pending.
    Full,
    /// The requester already has `max_pending_per_requester` pending.
    RequesterFull,
    /// Redis failed or did not answer in time (or, rarely, the request was
    /// malformed: a new request that is not pending or has a duplicate id).
    /// The text never contains the Redis password.
    Unavailable(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Full => f.write_str(
                "too many approval requests are waiting for a decision; try again later",
            ),
            StoreError::RequesterFull => f.write_str(
                "you have too many approval requests waiting for a decision; wait for those first",
            ),
            StoreError::Unavailable(why) => write!(f, "the approval store is unavailable: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Why a decision was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecideError {
    NotFound,
    /// Already decided, or expired (`NotPending(Expired)` also when the
    /// request is past `expires_at_ms` but not yet swept).
    NotPending(Status),
    /// The approver is the requester.
    SelfApproval,
    Store(StoreError),
}

impl fmt::Display for DecideError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecideError::NotFound => f.write_str(
                "approval request not found (the id is wrong, or the record has been removed)",
            ),
            DecideError::NotPending(Status::Expired) => {
                f.write_str("the approval request has expired and can no longer be decided")
            }
            DecideError::NotPending(Status::Used) => {
                f.write_str("the approval request was already approved and used")
            }
            DecideError::NotPending(status) => {
                write!(f, "the approval request was already {status}")
            }
            DecideError::SelfApproval => {
                f.write_str("an approver may not approve their own request")
            }
            DecideError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for DecideError {}

impl From<StoreError> for DecideError {
    fn from(e: StoreError) -> Self {
        DecideError::Store(e)
    }
}

/// Why an approval cannot be used for a call. The texts are shown to the
/// client and say nothing about the request beyond what the client sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsumeError {
    NotFound,
    /// The approval belongs to another client.
    WrongClient,
    /// The approval is for another request body.
    WrongBody,
    /// Pending, denied or expired.
    NotApproved(Status),
    /// Approved and already used.
    AlreadyUsed,
    /// Approved, but `valid_until_ms` has passed.
    Expired,
    Store(StoreError),
}

impl fmt::Display for ConsumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsumeError::NotFound => f.write_str(
                "approval not found (the id is wrong, or the approval has been removed)",
            ),
            ConsumeError::WrongClient => {
                f.write_str("this approval was requested by a different client")
            }
            ConsumeError::WrongBody => f.write_str(
                "this approval is for a different request (body, path, method, content type or route); repeat exactly the request that was approved",
            ),
            ConsumeError::NotApproved(Status::Pending) => {
                f.write_str("this approval request is still waiting for a decision")
            }
            ConsumeError::NotApproved(Status::Denied) => {
                f.write_str("this approval request was denied")
            }
            ConsumeError::NotApproved(Status::Expired) => {
                f.write_str("this approval request expired before it was decided")
            }
            ConsumeError::NotApproved(Status::Used) | ConsumeError::AlreadyUsed => f.write_str(
                "this approval was already used; an approval is good for one call only",
            ),
            ConsumeError::NotApproved(Status::Approved) => f.write_str("this approval is approved"),
            ConsumeError::Expired => f.write_str(
                "this approval is no longer valid (the time to use it has passed); request a new approval",
            ),
            ConsumeError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ConsumeError {}

impl From<StoreError> for ConsumeError {
    fn from(e: StoreError) -> Self {
        ConsumeError::Store(e)
    }
}

/// The approval requests of one gateway; cheap to clone (shared inside).
#[derive(Clone)]
pub struct ApprovalStore {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: StoreConfig,
    hub: Arc<Hub>,
    backend: Backend,
}

enum Backend {
    Memory(Mutex<Memory>),
    Redis(Box<RedisBackend>),
}

impl fmt::Debug for ApprovalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("ApprovalStore");
        s.field("kind", &self.kind()).field("cfg", &self.inner.cfg);
        if let Backend::Redis(r) = &self.inner.backend {
            s.field("redis", &r.location).field("key_prefix", &r.prefix);
        }
        s.finish()
    }
}

impl ApprovalStore {
    /// A store for one replica.
    pub fn memory(cfg: StoreConfig) -> ApprovalStore {
        ApprovalStore {
            inner: Arc::new(Inner {
                cfg,
                hub: Arc::new(Hub::new()),
                backend: Backend::Memory(Mutex::new(Memory::default())),
            }),
        }
    }

    /// A store shared by replicas through Redis. Connects now (one
    /// connection for commands, one subscribed to the event channel, kept up
    /// by a background task that reconnects with backoff); fails if Redis
    /// cannot be reached or is older than 6. Must be called within the
    /// Tokio runtime that serves calls.
    pub async fn redis(
        cfg: StoreConfig,
        redis: RedisStoreConfig,
    ) -> Result<ApprovalStore, StoreError> {
        let hub = Arc::new(Hub::new());
        let backend = RedisBackend::connect(&redis, hub.clone()).await?;
        Ok(ApprovalStore {
            inner: Arc::new(Inner {
                cfg,
                hub,
                backend: Backend::Redis(Box::new(backend)),
            }),
        })
    }

    /// `memory` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self.inner.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    /// Stores a new request (status `pending`) and publishes `requested`.
    /// Refuses with [`StoreError::Full`] while `max_pending` are pending.
    /// Timestamps beyond year 5138 are capped.
    pub async fn create(&self, mut a: Approval) -> Result<(), StoreError> {
        if a.status != Status::Pending {
            return Err(StoreError::Unavailable(format!(
                "approval {}: a new request must be pending, not {}",
                a.id, a.status
            )));
        }
        if !plausible_id(&a.id) {
            return Err(StoreError::Unavailable(format!(
                "approval id {:?} is not valid (expected letters, digits, '_' or '-', at most 64)",
                a.id
            )));
        }
        a.created_at_ms = a.created_at_ms.min(MAX_MS);
        a.expires_at_ms = a.expires_at_ms.min(MAX_MS);
        let cfg = &self.inner.cfg;
        match &self.inner.backend {
            Backend::Memory(m) => {
                let mut m = lock(m);
                m.create(a.clone(), cfg, unix_ms())?;
                self.inner.hub.publish(Event {
                    kind: EventKind::Requested,
                    approval: a,
                });
                Ok(())
            }
            Backend::Redis(r) => r.create(&a, cfg).await,
        }
    }

    /// The record, if it exists. Ids with characters other than ASCII
    /// letters, digits, `_` and `-`, or longer than 64, are never found.
    pub async fn get(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        if !plausible_id(id) {
            return Ok(None);
        }
        match &self.inner.backend {
            Backend::Memory(m) => Ok(lock(m).records.get(id).cloned()),
            Backend::Redis(r) => r.get(id).await,
        }
    }

    /// Up to `limit` records, newest (`created_at_ms`) first, optionally only
    /// those with `status`. Redis mode examines at most the 50,000 newest
    /// records for a status other than `pending`.
    pub async fn list(
        &self,
        status: Option<Status>,
        limit: usize,
    ) -> Result<Vec<Approval>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        match &self.inner.backend {
            Backend::Memory(m) => Ok(lock(m).list(status, limit)),
            Backend::Redis(r) => r.list(status, limit).await,
        }
    }

    /// Pending → approved or denied, atomically, and returns the record.
    /// Approving one's own request is refused ([`DecideError::SelfApproval`];
    /// denying it is allowed). A request past `expires_at_ms` is refused with
    /// `NotPending(Expired)`; it is left for [`ApprovalStore::sweep`] to
    /// expire, so that the expiry is reported (and audited) once. On approval
    /// `valid_until_ms` is set to now + `grant_ttl`.
    pub async fn decide(
        &self,
        id: &str,
        approver: &str,
        approve: bool,
        comment: Option<String>,
    ) -> Result<Approval, DecideError> {
        if !plausible_id(id) {
            return Err(DecideError::NotFound);
        }
        let grant_ms = ms(self.inner.cfg.grant_ttl);
        match &self.inner.backend {
            Backend::Memory(m) => {
                let mut m = lock(m);
                let a = m.decide(id, approver, approve, comment, grant_ms, unix_ms())?;
                self.inner.hub.publish(Event {
                    kind: EventKind::of(a.status),
                    approval: a.clone(),
                });
                Ok(a)
            }
            Backend::Redis(r) => {
                let a = r.decide(id, approver, approve, comment, grant_ms).await?;
                self.inner.hub.wake(id);
                Ok(a)
            }
        }
    }

    /// Approved → used, atomically, for a ticket's repeated call or a
    /// released hold: only for the requester, the same body and until
    /// `valid_until_ms`. Checked in this order: not found, client, body,
    /// status, time.
    pub async fn consume(
        &self,
        id: &str,
        requester: &str,
        request_sha256: &str,
    ) -> Result<Approval, ConsumeError> {
        if !plausible_id(id) {
            return Err(ConsumeError::NotFound);
        }
        match &self.inner.backend {
            Backend::Memory(m) => {
                let mut m = lock(m);
                let a = m.consume(id, requester, request_sha256, unix_ms())?;
                self.inner.hub.publish(Event {
                    kind: EventKind::Used,
                    approval: a.clone(),
                });
                Ok(a)
            }
            Backend::Redis(r) => {
                let a = r.consume(id, requester, request_sha256).await?;
                self.inner.hub.wake(id);
                Ok(a)
            }
        }
    }

    /// Pending → expired, atomically, if `expires_at_ms` has passed or
    /// `force` (the held caller gave up: hold timeout, client gone). Returns
    /// the record only when this call made the transition, so that exactly
    /// one replica audits it.
    pub async fn expire(&self, id: &str, force: bool) -> Result<Option<Approval>, StoreError> {
        if !plausible_id(id) {
            return Ok(None);
        }
        match &self.inner.backend {
            Backend::Memory(m) => {
                let mut m = lock(m);
                let expired = m.expire(id, force, unix_ms());
                if let Some(a) = &expired {
                    self.inner.hub.publish(Event {
                        kind: EventKind::Expired,
                        approval: a.clone(),
                    });
                }
                Ok(expired)
            }
            Backend::Redis(r) => {
                let expired = r.expire(id, force).await?;
                if expired.is_some() {
                    self.inner.hub.wake(id);
                }
                Ok(expired)
            }
        }
    }

    /// Expires every overdue pending request and returns those this call
    /// expired; drops records past their retention. Meant to run every
    /// second or so, on every replica.
    pub async fn sweep(&self) -> Result<Vec<Approval>, StoreError> {
        match &self.inner.backend {
            Backend::Memory(m) => {
                let mut m = lock(m);
                let now = unix_ms();
                let expired = m.sweep(now);
                m.prune(now, ms(self.inner.cfg.grant_ttl));
                for a in &expired {
                    self.inner.hub.publish(Event {
                        kind: EventKind::Expired,
                        approval: a.clone(),
                    });
                }
                Ok(expired)
            }
            Backend::Redis(r) => {
                let expired = r.sweep().await?;
                for a in &expired {
                    self.inner.hub.wake(&a.id);
                }
                Ok(expired)
            }
        }
    }

    /// Waits until the request is no longer pending, or until `deadline`,
    /// and returns the record as last read (still pending at the deadline).
    /// The future may be dropped at any point. Redis errors while waiting
    /// are retried until the deadline; an error is returned only if the
    /// record could never be read, or if it no longer exists.
    pub async fn wait(&self, id: &str, deadline: Instant) -> Result<Approval, StoreError> {
        let recheck = match &self.inner.backend {
            Backend::Memory(_) => None,
            Backend::Redis(r) => Some(r.recheck),
        };
        let waiter = self.inner.hub.register(id);
        let mut last: Option<Approval> = None;
        loop {
            // Made before reading, so a wake-up between the read and the
            // select below is not lost.
            let woken = waiter.notify.notified();
            let mut failure = None;
            match self.get(id).await {
                Ok(Some(a)) if a.status != Status::Pending => return Ok(a),
                Ok(Some(a)) => last = Some(a),
                Ok(None) => {
                    return Err(StoreError::Unavailable(format!(
                        "approval {id} is no longer in the store"
                    )))
                }
                Err(e) => {
                    log::debug!("waiting for approval {id}: {e}");
                    failure = Some(e);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return last.ok_or_else(|| {
                    failure.unwrap_or_else(|| {
                        StoreError::Unavailable(format!("approval {id} could not be read"))
                    })
                });
            }
            let until = recheck.map_or(deadline, |r| deadline.min(now + r));
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Every state change, from every replica in Redis mode (for the
    /// console's live list). A receiver that falls more than 1024 events
    /// behind skips ahead (`RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.hub.events.subscribe()
    }

    /// Requests now pending (including overdue ones not yet swept).
    pub async fn pending_count(&self) -> Result<usize, StoreError> {
        match &self.inner.backend {
            Backend::Memory(m) => Ok(lock(m).pending.len()),
            Backend::Redis(r) => r.pending_count().await,
        }
    }

    /// Ids with at least one waiter (tests check that none are left over).
    #[cfg(test)]
    fn waited_ids(&self) -> usize {
        lock(&self.inner.hub.waiters).len()
    }
}

/// Wakes waiters and fans events out to subscribers.
struct Hub {
    events: broadcast::Sender<Event>,
    /// Per id being waited for: one `Notify` shared by its waiters.
    waiters: Mutex<HashMap<String, Waiters>>,
}

struct Waiters {
    notify: Arc<Notify>,
    count: usize,
}

/// One waiter's registration; leaving (or being dropped) unregisters it.
struct Waiter<'a> {
    hub: &'a Hub,
    id: &'a str,
    notify: Arc<Notify>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut waiters = lock(&self.hub.waiters);
        if let Some(w) = waiters.get_mut(self.id) {
            w.count -= 1;
            if w.count == 0 {
                waiters.remove(self.id);
            }
        }
    }
}

impl Hub {
    fn new() -> Hub {
        Hub {
            events: broadcast::channel(EVENT_CAPACITY).0,
            waiters: Mutex::new(HashMap::new()),
        }
    }

    fn register<'a>(&'a self, id: &'a str) -> Waiter<'a> {
        let mut waiters = lock(&self.waiters);
        let w = waiters.entry(id.to_string()).or_insert_with(|| Waiters {
            notify: Arc::new(Notify::new()),
            count: 0,
        });
        w.count += 1;
        Waiter {
            hub: self,
            id,
            notify: w.notify.clone(),
        }
    }

    fn wake(&self, id: &str) {
        if let Some(w) = lock(&self.waiters).get(id) {
            w.notify.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for w in lock(&self.waiters).values() {
            w.notify.notify_waiters();
        }
    }

    fn publish(&self, event: Event) {
        self.wake(&event.approval.id);
        // No receivers is fine.
        let _ = self.events.send(event);
    }
}

/// Memory mode's records.
#[derive(Default)]
struct Memory {
    records: HashMap<String, Approval>,
    /// (expires_at_ms, id) of every pending record.
    pending: BTreeSet<(u64, String)>,
    /// (when to drop, id) of every record.
    drops: BTreeSet<(u64, String)>,
}

impl Memory {
    fn create(&mut self, a: Approval, cfg: &StoreConfig, now: u64) -> Result<(), StoreError> {
        self.prune(now, ms(cfg.grant_ttl));
        if self.records.contains_key(&a.id) {
            return Err(StoreError::Unavailable(format!(
                "approval {} already exists",
                a.id
            )));
        }
        if self.pending.len() >= cfg.max_pending {
            return Err(StoreError::Full);
        }
        let theirs = self
            .pending
            .iter()
            .filter(|(_, id)| {
                self.records
                    .get(id)
                    .is_some_and(|r| r.requester == a.requester)
            })
            .count();
        if theirs >= cfg.max_pending_per_requester {
            return Err(StoreError::RequesterFull);
        }
        let drop_at = a.created_at_ms.saturating_add(a.keep_ms(cfg));
        self.pending.insert((a.expires_at_ms, a.id.clone()));
        self.drops.insert((drop_at, a.id.clone()));
        self.records.insert(a.id.clone(), a);
        Ok(())
    }

    fn list(&self, status: Option<Status>, limit: usize) -> Vec<Approval> {
        let mut found: Vec<&Approval> = self
            .records
            .values()
            .filter(|a| status.is_none_or(|s| a.status == s))
            .collect();
        // As Redis orders equal scores: by id, descending.
        found.sort_unstable_by(|a, b| (b.created_at_ms, &b.id).cmp(&(a.created_at_ms, &a.id)));
        found.into_iter().take(limit).cloned().collect()
    }

    fn decide(
        &mut self,
        id: &str,
        approver: &str,
        approve: bool,
        comment: Option<String>,
        grant_ms: u64,
        now: u64,
    ) -> Result<Approval, DecideError> {
        let a = self.records.get_mut(id).ok_or(DecideError::NotFound)?;
        if approve && a.requester == approver {
            return Err(DecideError::SelfApproval);
        }
        if a.status != Status::Pending {
            return Err(DecideError::NotPending(a.status));
        }
        if now > a.expires_at_ms {
            return Err(DecideError::NotPending(Status::Expired));
        }
        a.status = if approve {
            Status::Approved
        } else {
            Status::Denied
        };
        a.decided_by = Some(approver.to_string());
        a.decided_at_ms = Some(now);
        if comment.is_some() {
            a.comment = comment;
        }
        if approve {
            a.valid_until_ms = Some(now.saturating_add(grant_ms).min(MAX_MS));
        }
        let a = a.clone();
        self.pending.remove(&(a.expires_at_ms, a.id.clone()));
        Ok(a)
    }

    fn consume(
        &mut self,
        id: &str,
        requester: &str,
        request_sha256: &str,
        now: u64,
    ) -> Result<Approval, ConsumeError> {
        let a = self.records.get_mut(id).ok_or(ConsumeError::NotFound)?;
        if a.requester != requester {
            return Err(ConsumeError::WrongClient);
        }
        if a.request_sha256 != request_sha256 {
            return Err(ConsumeError::WrongBody);
        }
        match a.status {
            Status::Approved => {}
            Status::Used => return Err(ConsumeError::AlreadyUsed),
            other => return Err(ConsumeError::NotApproved(other)),
        }
        if a.valid_until_ms.is_none_or(|until| now > until) {
            return Err(ConsumeError::Expired);
        }
        a.status = Status::Used;
        a.used_at_ms = Some(now);
        Ok(a.clone())
    }

    fn expire(&mut self, id: &str, force: bool, now: u64) -> Option<Approval> {
        let a = self.records.get_mut(id)?;
        if a.status != Status::Pending || !(force || now > a.expires_at_ms) {
            return None;
        }
        a.status = Status::Expired;
        let a = a.clone();
        self.pending.remove(&(a.expires_at_ms, a.id.clone()));
        Some(a)
    }

    fn sweep(&mut self, now: u64) -> Vec<Approval> {
        // Strictly before `now`: a request expires once now > expires_at.
        let overdue: Vec<String> = self
            .pending
            .range(..(now, String::new()))
            .map(|(_, id)| id.clone())
            .collect();
        overdue
            .iter()
            .filter_map(|id| self.expire(id, true, now))
            .collect()
    }

    /// Drops records past their retention. A record still pending then (no
    /// sweeps ran) is kept until it has been expired.
    fn prune(&mut self, now: u64, grant_ms: u64) {
        let mut later = Vec::new();
        while let Some((drop_at, _)) = self.drops.first() {
            if *drop_at > now {
                break;
            }
            let Some((_, id)) = self.drops.pop_first() else {
                break;
            };
            match self.records.get(&id) {
                Some(a) if a.status == Status::Pending => {
                    let again = a.expires_at_ms.max(now).saturating_add(grant_ms) + 1;
                    later.push((again, id));
                }
                Some(_) => {
                    self.records.remove(&id);
                }
                None => {}
            }
        }
        self.drops.extend(later);
    }
}

/// Shared by the scripts: Redis's clock, and writing a record back.
const LUA_PRELUDE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function save(key, a)
  -- cjson writes an empty array as {}; Rust reads a missing one as [].
  if type(a.requester_groups) == 'table' and next(a.requester_groups) == nil then
    a.requester_groups = nil
  end
  local json = cjson.encode(a)
  redis.call('SET', key, json, 'KEEPTTL')
  return json
end
local function publish(channel, kind, json)
  redis.call('PUBLISH', channel, '{"kind":"' .. kind .. '","approval":' .. json .. '}')
end
"#;

/// KEYS: record, all ids, pending ids. ARGV: json, id, created_at_ms,
/// expires_at_ms, ttl ms, max_pending, channel.
/// Returns {'ok'} | {'exists'} | {'full'}.
const CREATE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[6]) then return {'full'} end
-- The requester's pending ids: those no longer pending are dropped here.
local mine = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  local raw = redis.call('GET', ARGV[8] .. id)
  if raw and cjson.decode(raw).status == 'pending' then
    mine = mine + 1
  else
    redis.call('SREM', KEYS[4], id)
  end
end
if mine >= tonumber(ARGV[9]) then return {'requester_full'} end
redis.call('SADD', KEYS[4], ARGV[2])
redis.call('PEXPIRE', KEYS[4], ARGV[5])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
publish(ARGV[7], 'requested', ARGV[1])
return {'ok'}
"#;

/// KEYS: record, pending ids. ARGV: id, approver, '1' to approve, '1' if a
/// comment follows, comment, grant ms, largest timestamp, channel.
/// Returns {'ok', json} | {'not_found'} | {'self'} | {'not_pending', status}.
const DECIDE_LUA: &str = r#"
local raw = redis.call('GET', KEYS[1])
if not raw then return {'not_found'} end
local a = cjson.decode(raw)
local approve = ARGV[3] == '1'
if approve and a.requester == ARGV[2] then return {'self'} end
if a.status ~= 'pending' then return {'not_pending', a.status} end
local now = now_ms()
if now > a.expires_at_ms then return {'not_pending', 'expired'} end
if approve then a.status = 'approved' else a.status = 'denied' end
a.decided_by = ARGV[2]
a.decided_at_ms = now
if ARGV[4] == '1' then a.comment = ARGV[5] end
if approve then a.valid_until_ms = math.min(now + tonumber(ARGV[6]), tonumber(ARGV[7])) end
local json = save(KEYS[1], a)
redis.call('ZREM', KEYS[2], ARGV[1])
publish(ARGV[8], a.status, json)
return {'ok', json}
"#;

/// KEYS: record. ARGV: requester, request_sha256, channel.
/// Returns {'ok', json} | {'not_found'} | {'wrong_client'} | {'wrong_body'}
/// | {'not_approved', status} | {'expired'}.
const CONSUME_LUA: &str = r#"
local raw = redis.call('GET', KEYS[1])
if not raw then return {'not_found'} end
local a = cjson.decode(raw)
if a.requester ~= ARGV[1] then return {'wrong_client'} end
if a.request_sha256 ~= ARGV[2] then return {'wrong_body'} end
if a.status ~= 'approved' then return {'not_approved', a.status} end
local now = now_ms()
if type(a.valid_until_ms) ~= 'number' or now > a.valid_until_ms then return {'expired'} end
a.status = 'used'
a.used_at_ms = now
local json = save(KEYS[1], a)
publish(ARGV[3], 'used', json)
return {'ok', json}
"#;

/// KEYS: record, pending ids. ARGV: id, '1' to force, channel.
/// Returns {json} when it expired the request, else {}.
const EXPIRE_LUA: &str = r#"
local raw = redis.call('GET', KEYS[1])
if not raw then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {}
end
local a = cjson.decode(raw)
if a.status ~= 'pending' then return {} end
if ARGV[2] ~= '1' and now_ms() <= a.expires_at_ms then return {} end
a.status = 'expired'
local json = save(KEYS[1], a)
redis.call('ZREM', KEYS[2], ARGV[1])
publish(ARGV[3], 'expired', json)
return {json}
"#;

/// KEYS: pending ids, all ids. ARGV: key prefix, channel, batch size.
/// Expires up to a batch of overdue requests (returns their JSON), then
/// drops the oldest ids whose record is gone from the list of all ids.
const SWEEP_LUA: &str = r#"
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.0f', now),
  'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[1] .. 'approval:' .. id
  local raw = redis.call('GET', key)
  redis.call('ZREM', KEYS[1], id)
  if raw then
    local a = cjson.decode(raw)
    if a.status == 'pending' then
      a.status = 'expired'
      local json = save(key, a)
      publish(ARGV[2], 'expired', json)
      out[#out + 1] = json
    end
  end
end
local oldest = redis.call('ZRANGE', KEYS[2], 0, 99)
for _, id in ipairs(oldest) do
  if redis.call('EXISTS', ARGV[1] .. 'approval:' .. id) == 1 then break end
  redis.call('ZREM', KEYS[2], id)
end
return out
"#;

struct Scripts {
    create: Script,
    decide: Script,
    consume: Script,
    expire: Script,
    sweep: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let script = |body: &str| Script::new(&format!("{LUA_PRELUDE}{body}"));
        Scripts {
            create: script(CREATE_LUA),
            decide: script(DECIDE_LUA),
            consume: script(CONSUME_LUA),
            expire: script(EXPIRE_LUA),
            sweep: script(SWEEP_LUA),
        }
    }
}

/// Redis mode: the command connection, the keys, and the event subscriber.
struct RedisBackend {
    conn: ConnectionManager,
    timeout: Duration,
    /// How often waiters re-read their record.
    recheck: Duration,
    prefix: String,
    channel: String,
    all_key: String,
    pending_key: String,
    /// The URL with its password replaced by `***`.
    location: String,
    /// Password forms (as written, and decoded) scrubbed from messages.
    secrets: Vec<String>,
    scripts: Scripts,
    subscriber: tokio::task::JoinHandle<()>,
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

/// When a failed Redis call may be sent again.
#[derive(Clone, Copy)]
enum Resend {
    /// Reads: after any lost connection (e.g. Redis restarted since the
    /// last call).
    AfterLostConnection,
    /// Transitions: only if the connection could not be made, so the call
    /// cannot have reached Redis.
    IfNotSent,
}

impl Resend {
    fn allows(self, e: &RedisError) -> bool {
        match self {
            Resend::AfterLostConnection => {
                e.is_connection_dropped() || e.is_connection_refusal() || e.is_io_error()
            }
            Resend::IfNotSent => e.is_connection_refusal(),
        }
    }
}

/// What the event subscriber needs to (re)connect.
struct EventSource {
    client: Client,
    channel: String,
    timeout: Duration,
    location: String,
    secrets: Vec<String>,
}

impl RedisBackend {
    async fn connect(cfg: &RedisStoreConfig, hub: Arc<Hub>) -> Result<RedisBackend, StoreError> {
        let location = redact_url(&cfg.url);
        let mut secrets = url_secrets(&cfg.url);
        let fail = |secrets: &[String], what: String| {
            StoreError::Unavailable(scrub(&format!("Redis at {location}: {what}"), secrets))
        };
        if cfg.timeout.is_zero() {
            return Err(fail(&secrets, "the timeout must be more than 0".into()));
        }
        let info = cfg.url.as_str().into_connection_info().map_err(|e| {
            fail(
                &secrets,
                format!("expected a URL like redis://[user:password@]host:port/db: {e}"),
            )
        })?;
        if let Some(password) = info.redis_settings().password() {
            if !password.is_empty() && !secrets.iter().any(|s| s == password) {
                secrets.push(password.to_string());
            }
        }
        let connect_timeout = cfg.timeout.max(Duration::from_secs(1));
        // RESP3 on both connections: the event connection's messages then
        // arrive on a Tokio channel (the RESP2 PubSub type is a futures
        // `Stream`), and the command connection is re-made as soon as it
        // drops, not on the next failed call.
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(resp3);
        let client = Client::open(info.clone()).map_err(|e| fail(&secrets, e.to_string()))?;
        let manager = ConnectionManagerConfig::new()
            .set_response_timeout(Some(cfg.timeout))
            .set_connection_timeout(Some(connect_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let mut conn = ConnectionManager::new_lazy_with_config(client, manager)
            .map_err(|e| fail(&secrets, e.to_string()))?;
        let ping = redis::cmd("PING");
        match tokio::time::timeout(connect_timeout, ping.query_async::<String>(&mut conn)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(fail(
                    &secrets,
                    format!("cannot connect (approvals need Redis 6 or later): {e}"),
                ))
            }
            Err(_) => {
                return Err(fail(
                    &secrets,
                    format!("cannot connect: no answer within {connect_timeout:?}"),
                ))
            }
        }

        let events_client = Client::open(info).map_err(|e| fail(&secrets, e.to_string()))?;
        let channel = format!("{}approval-events", cfg.key_prefix);
        let source = EventSource {
            client: events_client,
            channel: channel.clone(),
            timeout: cfg.timeout,
            location: location.clone(),
            secrets: secrets.clone(),
        };
        let first = source.connect().await.map_err(|e| {
            fail(
                &secrets,
                format!("cannot subscribe to {channel} (approvals need Redis 6 or later): {e}"),
            )
        })?;
        let subscriber = tokio::spawn(run_subscriber(source, hub, first));

        let prefix = cfg.key_prefix.clone();
        Ok(RedisBackend {
            conn,
            timeout: cfg.timeout,
            recheck: cfg.recheck,
            channel,
            all_key: format!("{prefix}approvals"),
            pending_key: format!("{prefix}approvals:pending"),
            prefix,
            location,
            secrets,
            scripts: Scripts::new(),
            subscriber,
        })
    }

    fn record_key(&self, id: &str) -> String {
        format!("{}approval:{id}", self.prefix)
    }

    /// The set of a requester's pending ids (the name hashed: any bytes).
    fn requester_key(&self, requester: &str) -> String {
        use sha2::{Digest, Sha256};
        format!(
            "{}approvals:by:{}",
            self.prefix,
            hex::encode(Sha256::digest(requester.as_bytes()))
        )
    }

    fn unavailable(&self, what: &str) -> StoreError {
        StoreError::Unavailable(scrub(
            &format!("Redis at {}: {what}", self.location),
            &self.secrets,
        ))
    }

    /// Runs one Redis call within the timeout, sending it a second time
    /// (within the same timeout) after a lost connection if `resend` allows.
    async fn call<T, F, Fut>(
        &self,
        what: &str,
        resend: Resend,
        mut call: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let attempts = async {
            match call(self.conn.clone()).await {
                Err(e) if resend.allows(&e) => {
                    log::debug!("approval store: sending {what} again after: {e}");
                    call(self.conn.clone()).await
                }
                result => result,
            }
        };
        match tokio::time::timeout(self.timeout, attempts).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.unavailable(&format!("{what}: {e}"))),
            Err(_) => {
                Err(self.unavailable(&format!("{what}: no answer within {:?}", self.timeout)))
            }
        }
    }

    /// A command that only reads (or whose repetition is harmless).
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let what = cmd
            .args_iter()
            .next()
            .and_then(|arg| match arg {
                redis::Arg::Simple(name) => std::str::from_utf8(name).ok(),
                _ => None,
            })
            .unwrap_or("command")
            .to_string();
        self.call(&what, Resend::AfterLostConnection, |mut conn| async move {
            cmd.query_async(&mut conn).await
        })
        .await
    }

    /// A script (EVALSHA, loaded on NOSCRIPT); never applied twice.
    async fn script<T: FromRedisValue>(
        &self,
        what: &str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.call(what, Resend::IfNotSent, |mut conn| async move {
            invocation.invoke_async(&mut conn).await
        })
        .await
    }

    fn parse(&self, json: &str) -> Result<Approval, StoreError> {
        serde_json::from_str(json)
            .map_err(|e| self.unavailable(&format!("unreadable approval record: {e}")))
    }

    fn bad_reply(&self, what: &str, reply: &[String]) -> StoreError {
        let codes: Vec<&str> = reply.iter().take(1).map(String::as_str).collect();
        self.unavailable(&format!(
            "unexpected reply from the {what} script: {codes:?}"
        ))
    }

    async fn create(&self, a: &Approval, cfg: &StoreConfig) -> Result<(), StoreError> {
        let json = serde_json::to_string(a)
            .map_err(|e| StoreError::Unavailable(format!("approval {}: {e}", a.id)))?;
        let key = self.record_key(&a.id);
        let mut invocation = self.scripts.create.prepare_invoke();
        invocation
            .key(&key)
            .key(&self.all_key)
            .key(&self.pending_key)
            .key(self.requester_key(&a.requester))
            .arg(&json)
            .arg(&a.id)
            .arg(a.created_at_ms)
            .arg(a.expires_at_ms)
            .arg(a.keep_ms(cfg))
            .arg(cfg.max_pending)
            .arg(&self.channel)
            .arg(self.record_key(""))
            .arg(cfg.max_pending_per_requester);
        let reply: Vec<String> = self.script("create", &invocation).await?;
        match reply.first().map(String::as_str) {
            Some("ok") => Ok(()),
            Some("full") => Err(StoreError::Full),
            Some("requester_full") => Err(StoreError::RequesterFull),
            Some("exists") => Err(StoreError::Unavailable(format!(
                "approval {} already exists",
                a.id
            ))),
            _ => Err(self.bad_reply("create", &reply)),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        let json: Option<String> = self
            .query(redis::cmd("GET").arg(self.record_key(id)))
            .await?;
        json.map(|j| self.parse(&j)).transpose()
    }

    /// The records of `ids`, in order; `None` where the record is gone.
    /// Unreadable records are skipped with a warning.
    async fn fetch(&self, ids: &[String]) -> Result<Vec<Option<Approval>>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(LIST_PAGE) {
            let keys: Vec<String> = chunk.iter().map(|id| self.record_key(id)).collect();
            let jsons: Vec<Option<String>> = self.query(redis::cmd("MGET").arg(&keys)).await?;
            for (id, json) in chunk.iter().zip(jsons) {
                out.push(json.and_then(|j| match self.parse(&j) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        log::warn!("skipping approval {id}: {e}");
                        None
                    }
                }));
            }
        }
        Ok(out)
    }

    async fn list(
        &self,
        status: Option<Status>,
        limit: usize,
    ) -> Result<Vec<Approval>, StoreError> {
        if status == Some(Status::Pending) {
            // At most max_pending (plus a few overdue) ids.
            let ids: Vec<String> = self
                .query(redis::cmd("ZRANGE").arg(&self.pending_key).arg(0).arg(-1))
                .await?;
            let mut found: Vec<Approval> = self
                .fetch(&ids)
                .await?
                .into_iter()
                .flatten()
                .filter(|a| a.status == Status::Pending)
                .collect();
            found.sort_unstable_by(|a, b| (b.created_at_ms, &b.id).cmp(&(a.created_at_ms, &a.id)));
            found.truncate(limit);
            return Ok(found);
        }
        let mut found = Vec::new();
        let mut seen = HashSet::new();
        let mut start = 0usize;
        let mut scanned = 0usize;
        while found.len() < limit && scanned < LIST_MAX_SCAN {
            let ids: Vec<String> = self
                .query(
                    redis::cmd("ZREVRANGE")
                        .arg(&self.all_key)
                        .arg(start)
                        .arg(start + LIST_PAGE - 1),
                )
                .await?;
            let records = self.fetch(&ids).await?;
            let gone: Vec<&String> = ids
                .iter()
                .zip(&records)
                .filter(|(_, a)| a.is_none())
                .map(|(id, _)| id)
                .collect();
            if !gone.is_empty() {
                let _: i64 = self
                    .query(redis::cmd("ZREM").arg(&self.all_key).arg(&gone))
                    .await?;
            }
            // Removed ids no longer shift the next page.
            start += ids.len() - gone.len();
            scanned += ids.len();
            for a in records.into_iter().flatten() {
                // A create between pages shifts ids down by one.
                if status.is_none_or(|s| a.status == s) && seen.insert(a.id.clone()) {
                    found.push(a);
                    if found.len() == limit {
                        break;
                    }
                }
            }
            if ids.len() < LIST_PAGE {
                break;
            }
        }
        Ok(found)
    }

    async fn decide(
        &self,
        id: &str,
        approver: &str,
        approve: bool,
        comment: Option<String>,
        grant_ms: u64,
    ) -> Result<Approval, DecideError> {
        let key = self.record_key(id);
        let mut invocation = self.scripts.decide.prepare_invoke();
        invocation
            .key(&key)
            .key(&self.pending_key)
            .arg(id)
            .arg(approver)
            .arg(if approve { "1" } else { "0" })
            .arg(if comment.is_some() { "1" } else { "0" })
            .arg(comment.as_deref().unwrap_or(""))
            .arg(grant_ms)
            .arg(MAX_MS)
            .arg(&self.channel);
        let reply: Vec<String> = self.script("decide", &invocation).await?;
        match reply_parts(&reply) {
            ("ok", Some(json)) => Ok(self.parse(json)?),
            ("not_found", _) => Err(DecideError::NotFound),
            ("self", _) => Err(DecideError::SelfApproval),
            ("not_pending", Some(status)) => match Status::parse(status) {
                Some(status) => Err(DecideError::NotPending(status)),
                None => Err(self.bad_reply("decide", &reply).into()),
            },
            _ => Err(self.bad_reply("decide", &reply).into()),
        }
    }

    async fn consume(
        &self,
        id: &str,
        requester: &str,
        request_sha256: &str,
    ) -> Result<Approval, ConsumeError> {
        let key = self.record_key(id);
        let mut invocation = self.scripts.consume.prepare_invoke();
        invocation
            .key(&key)
            .arg(requester)
            .arg(request_sha256)
            .arg(&self.channel);
        let reply: Vec<String> = self.script("consume", &invocation).await?;
        match reply_parts(&reply) {
            ("ok", Some(json)) => Ok(self.parse(json)?),
            ("not_found", _) => Err(ConsumeError::NotFound),
            ("wrong_client", _) => Err(ConsumeError::WrongClient),
            ("wrong_body", _) => Err(ConsumeError::WrongBody),
            ("expired", _) => Err(ConsumeError::Expired),
            ("not_approved", Some(status)) => match Status::parse(status) {
                Some(Status::Used) => Err(ConsumeError::AlreadyUsed),
                Some(status) => Err(ConsumeError::NotApproved(status)),
                None => Err(self.bad_reply("consume", &reply).into()),
            },
            _ => Err(self.bad_reply("consume", &reply).into()),
        }
    }

    async fn expire(&self, id: &str, force: bool) -> Result<Option<Approval>, StoreError> {
        let key = self.record_key(id);
        let mut invocation = self.scripts.expire.prepare_invoke();
        invocation
            .key(&key)
            .key(&self.pending_key)
            .arg(id)
            .arg(if force { "1" } else { "0" })
            .arg(&self.channel);
        let reply: Vec<String> = self.script("expire", &invocation).await?;
        reply.first().map(|json| self.parse(json)).transpose()
    }

    async fn sweep(&self) -> Result<Vec<Approval>, StoreError> {
        let mut expired = Vec::new();
        for _ in 0..SWEEP_ROUNDS {
            let mut invocation = self.scripts.sweep.prepare_invoke();
            invocation
                .key(&self.pending_key)
                .key(&self.all_key)
                .arg(&self.prefix)
                .arg(&self.channel)
                .arg(SWEEP_BATCH);
            let reply: Vec<String> = self.script("sweep", &invocation).await?;
            let full_batch = reply.len() >= SWEEP_BATCH;
            for json in &reply {
                expired.push(self.parse(json)?);
            }
            if !full_batch {
                break;
            }
        }
        Ok(expired)
    }

    async fn pending_count(&self) -> Result<usize, StoreError> {
        self.query(redis::cmd("ZCARD").arg(&self.pending_key)).await
    }
}

/// A subscribed event connection and the channel its messages arrive on.
type Subscription = (MultiplexedConnection, mpsc::UnboundedReceiver<PushInfo>);

impl EventSource {
    async fn connect(&self) -> Result<Subscription, String> {
        let connect_timeout = self.timeout.max(Duration::from_secs(1));
        let attempt = async {
            let (tx, rx) = mpsc::unbounded_channel();
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(self.timeout))
                .set_push_sender(tx);
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            conn.subscribe(&self.channel).await?;
            RedisResult::Ok((conn, rx))
        };
        match tokio::time::timeout(connect_timeout * 2, attempt).await {
            Ok(Ok(subscription)) => Ok(subscription),
            Ok(Err(e)) => Err(scrub(&e.to_string(), &self.secrets)),
            Err(_) => Err(format!("no answer within {:?}", connect_timeout * 2)),
        }
    }

    /// Forwards events until the connection is lost; returns why.
    async fn listen(&self, hub: &Hub, subscription: Subscription) -> String {
        let (mut conn, mut rx) = subscription;
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                push = rx.recv() => match push {
                    None => return "connection closed".into(),
                    Some(push) if push.kind == PushKind::Disconnection => {
                        return "connection closed".into()
                    }
                    Some(push) if push.kind == PushKind::Message => self.deliver(hub, push.data),
                    Some(_) => {}
                },
                _ = ping.tick() => {
                    let cmd = redis::cmd("PING");
                    match tokio::time::timeout(self.timeout, cmd.query_async::<String>(&mut conn)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return scrub(&format!("PING failed: {e}"), &self.secrets),
                        Err(_) => return format!("no answer to PING within {:?}", self.timeout),
                    }
                }
            }
        }
    }

    /// `data` is [channel, payload].
    fn deliver(&self, hub: &Hub, data: Vec<Value>) {
        let Some(Value::BulkString(payload)) = data.into_iter().nth(1) else {
            return;
        };
        match serde_json::from_slice::<Event>(&payload) {
            Ok(event) => hub.publish(event),
            Err(e) => log::warn!(
                "approval events (Redis at {}): ignoring an unreadable event on {}: {e}",
                self.location,
                self.channel
            ),
        }
    }
}

/// Keeps the event subscription up: forwards events, and after a lost
/// connection reconnects with backoff, then wakes every waiter (events sent
/// meanwhile are lost, so they re-read their record).
async fn run_subscriber(source: EventSource, hub: Arc<Hub>, first: Subscription) {
    let mut subscription = first;
    loop {
        let why = source.listen(&hub, subscription).await;
        log::warn!(
            "approval events (Redis at {}): subscription lost ({why}); reconnecting",
            source.location
        );
        let mut backoff = BACKOFF_MIN;
        let mut failures = 0u32;
        subscription = loop {
            tokio::time::sleep(backoff).await;
            match source.connect().await {
                Ok(subscription) => break subscription,
                Err(e) => {
                    failures += 1;
                    // Every failure at first, then about every minute.
                    if failures <= 3 || failures.is_multiple_of(12) {
                        log::warn!(
                            "approval events (Redis at {}): reconnecting failed ({failures} so far): {e}",
                            source.location
                        );
                    }
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        };
        log::info!(
            "approval events (Redis at {}): subscribed again",
            source.location
        );
        hub.wake_all();
    }
}

/// The code and first value of a script's reply.
fn reply_parts(reply: &[String]) -> (&str, Option<&str>) {
    (
        reply.first().map_or("", String::as_str),
        reply.get(1).map(String::as_str),
    )
}

/// Ids are used in Redis keys; anything else is not looked up.
pub fn plausible_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(MAX_MS))
}

/// Milliseconds, capped at [`MAX_MS`].
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(MAX_MS).min(MAX_MS)
}

/// The user-info part of the URL, as written (the parsed, decoded password
/// is added once the URL is parsed).
fn url_secrets(url: &str) -> Vec<String> {
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return Vec::new();
    };
    let userinfo = &rest[..at];
    let password = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
    [userinfo, password]
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn scrub(message: &str, secrets: &[String]) -> String {
    let mut secrets: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    // `user:pw` before `pw`.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = message.to_string();
    for secret in secrets {
        out = out.replace(secret.as_str(), "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{free_port, RedisServer};

    /// Every test finishes within this, or fails.
    const TEST_LIMIT: Duration = Duration::from_secs(90);

    async fn bounded<F: Future<Output = ()>>(test: F) {
        tokio::time::timeout(TEST_LIMIT, test)
            .await
            .expect("test took too long");
    }

    /// Generous timeout: the test machine may be busy.
    fn redis_config(url: &str) -> RedisStoreConfig {
        RedisStoreConfig {
            url: url.to_string(),
            key_prefix: "modelgate:".into(),
            timeout: Duration::from_secs(5),
            recheck: RECHECK,
        }
    }

    fn config() -> StoreConfig {
        StoreConfig {
            grant_ttl: Duration::from_secs(600),
            retain: Duration::from_secs(3600),
            max_pending: 10_000,
            max_pending_per_requester: 10_000,
        }
    }

    /// One backend to run a scenario against: memory, or a fresh Redis.
    struct Fixture {
        redis: Option<RedisServer>,
    }

    impl Fixture {
        fn memory() -> Fixture {
            Fixture { redis: None }
        }

        fn redis() -> Fixture {
            Fixture {
                redis: Some(RedisServer::start()),
            }
        }

        /// A store. Redis stores re-read only every minute, so that a
        /// waiter released within seconds was released by an event.
        async fn store(&self, cfg: StoreConfig) -> ApprovalStore {
            match &self.redis {
                None => ApprovalStore::memory(cfg),
                Some(server) => ApprovalStore::redis(
                    cfg,
                    RedisStoreConfig {
                        recheck: Duration::from_secs(60),
                        ..redis_config(&server.url())
                    },
                )
                .await
                .expect("connects to the test redis"),
            }
        }

        /// Another replica sharing `store`'s records (memory: the same store).
        async fn replica(&self, store: &ApprovalStore, cfg: StoreConfig) -> ApprovalStore {
            match &self.redis {
                None => store.clone(),
                Some(_) => self.store(cfg).await,
            }
        }
    }

    fn now_ms() -> u64 {
        unix_ms()
    }

    fn request(requester: &str, body: &str, lifetime: Duration) -> Approval {
        let now = now_ms();
        Approval {
            id: Approval::new_id(),
            status: Status::Pending,
            mode: Mode::Ticket,
            requester: requester.into(),
            requester_via: "api_key".into(),
            requester_groups: Vec::new(),
            route: "chat".into(),
            path: "/v1/chat/completions".into(),
            model: Some("llama-3".into()),
            rule: "big".into(),
            reason: "max_tokens over 1000".into(),
            summary: "Summarise [EMAIL] …".into(),
            body_sha256: sha(body),
            request_sha256: sha(body),
            created_at_ms: now,
            expires_at_ms: now + lifetime.as_millis() as u64,
            decided_by: None,
            decided_at_ms: None,
            comment: None,
            valid_until_ms: None,
            used_at_ms: None,
        }
    }

    /// 64 hex digits that differ between bodies (the store only compares).
    fn sha(body: &str) -> String {
        let fnv = body.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        format!("{fnv:016x}").repeat(4)
    }

    fn minutes(n: u64) -> Duration {
        Duration::from_secs(60 * n)
    }

    /// The next event of `kind`, skipping others.
    async fn next_event_of(rx: &mut broadcast::Receiver<Event>, kind: EventKind) -> Event {
        loop {
            let event = next_event(rx).await;
            if event.kind == kind {
                return event;
            }
        }
    }

    async fn next_event(rx: &mut broadcast::Receiver<Event>) -> Event {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event within 10 s")
            .expect("no lag")
    }

    /// Polls `check` until it holds (at most 20 s).
    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // ---- scenarios, run against both backends ----

    async fn create_get_list(fx: &Fixture) {
        let store = fx.store(config()).await;
        assert!(store.get(&Approval::new_id()).await.unwrap().is_none());
        assert!(store.get("no such id!").await.unwrap().is_none());

        let base = now_ms();
        let mut made = Vec::new();
        for i in 0..5u64 {
            let mut a = request(&format!("client{i}"), "body", minutes(10));
            a.created_at_ms = base + i;
            if i == 2 {
                a.requester_groups = vec!["analysts".into(), "ops".into()];
                a.model = None;
                a.mode = Mode::Hold;
            }
            store.create(a.clone()).await.unwrap();
            made.push(a);
        }
        for a in &made {
            assert_eq!(store.get(&a.id).await.unwrap().as_ref(), Some(a));
        }
        assert_eq!(store.pending_count().await.unwrap(), 5);

        store
            .decide(&made[1].id, "approver", true, Some("ok".into()))
            .await
            .unwrap();
        store
            .decide(&made[3].id, "approver", false, None)
            .await
            .unwrap();
        assert_eq!(store.pending_count().await.unwrap(), 3);

        let ids = |list: Vec<Approval>| list.into_iter().map(|a| a.id).collect::<Vec<_>>();
        let all = store.list(None, 100).await.unwrap();
        assert_eq!(
            ids(all.clone()),
            [4, 3, 2, 1, 0].map(|i| made[i].id.clone())
        );
        // Records survive the round trips (the decided ones through Lua).
        assert_eq!(all[2], made[2]);
        assert_eq!(all[1].status, Status::Denied);
        assert!(all[1].requester_groups.is_empty());
        assert_eq!(all[3].comment.as_deref(), Some("ok"));
        assert_eq!(
            ids(store.list(None, 2).await.unwrap()),
            [4, 3].map(|i| made[i].id.clone())
        );
        assert_eq!(
            ids(store.list(Some(Status::Pending), 100).await.unwrap()),
            [4, 2, 0].map(|i| made[i].id.clone())
        );
        assert_eq!(
            ids(store.list(Some(Status::Pending), 1).await.unwrap()),
            [made[4].id.clone()]
        );
        assert_eq!(
            ids(store.list(Some(Status::Approved), 100).await.unwrap()),
            [made[1].id.clone()]
        );
        assert!(store
            .list(Some(Status::Used), 100)
            .await
            .unwrap()
            .is_empty());
        assert!(store.list(None, 0).await.unwrap().is_empty());

        // Malformed new requests are refused.
        let mut decided = request("x", "b", minutes(1));
        decided.status = Status::Approved;
        assert!(store.create(decided).await.is_err());
        let mut bad_id = request("x", "b", minutes(1));
        bad_id.id = "apr_../../etc".into();
        assert!(store.create(bad_id).await.is_err());
        assert!(matches!(
            store.create(made[0].clone()).await,
            Err(StoreError::Unavailable(_))
        ));
    }

    async fn approve_then_consume_once(fx: &Fixture) {
        let store = fx.store(config()).await;
        let mut a = request("alice", "hello", minutes(10));
        a.requester_groups = vec!["analysts".into()];
        store.create(a.clone()).await.unwrap();
        let before = now_ms();
        let approved = store
            .decide(&a.id, "bob", true, Some("looks fine".into()))
            .await
            .unwrap();
        assert_eq!(approved.status, Status::Approved);
        assert_eq!(approved.decided_by.as_deref(), Some("bob"));
        assert_eq!(approved.comment.as_deref(), Some("looks fine"));
        assert_eq!(approved.requester_groups, ["analysts"]);
        let decided_at = approved.decided_at_ms.unwrap();
        assert!(decided_at + 1000 >= before, "{decided_at} vs {before}");
        assert_eq!(approved.valid_until_ms, Some(decided_at + 600_000));

        let used = store
            .consume(&a.id, "alice", &a.request_sha256)
            .await
            .unwrap();
        assert_eq!(used.status, Status::Used);
        assert!(used.used_at_ms.unwrap() >= decided_at);
        assert_eq!(store.get(&a.id).await.unwrap(), Some(used));

        let again = store
            .consume(&a.id, "alice", &a.request_sha256)
            .await
            .unwrap_err();
        assert_eq!(again, ConsumeError::AlreadyUsed);
        assert!(again.to_string().contains("already used"), "{again}");
        assert_eq!(
            store
                .consume(&Approval::new_id(), "alice", &a.request_sha256)
                .await,
            Err(ConsumeError::NotFound)
        );
        assert_eq!(
            store.consume("../x", "alice", &a.request_sha256).await,
            Err(ConsumeError::NotFound)
        );
    }

    async fn consume_checks_client_body_and_status(fx: &Fixture) {
        let store = fx.store(config()).await;
        let a = request("alice", "hello", minutes(10));
        store.create(a.clone()).await.unwrap();

        assert_eq!(
            store.consume(&a.id, "alice", &a.request_sha256).await,
            Err(ConsumeError::NotApproved(Status::Pending))
        );
        store.decide(&a.id, "bob", true, None).await.unwrap();
        let wrong_client = store
            .consume(&a.id, "mallory", &a.request_sha256)
            .await
            .unwrap_err();
        assert_eq!(wrong_client, ConsumeError::WrongClient);
        // The client is checked before the body.
        assert_eq!(
            store.consume(&a.id, "mallory", &sha("other")).await,
            Err(ConsumeError::WrongClient)
        );
        let wrong_body = store
            .consume(&a.id, "alice", &sha("other"))
            .await
            .unwrap_err();
        assert_eq!(wrong_body, ConsumeError::WrongBody);
        for text in [wrong_client.to_string(), wrong_body.to_string()] {
            assert!(!text.contains("alice") && !text.contains("bob"), "{text}");
        }
        // Refusals did not use the approval up.
        store
            .consume(&a.id, "alice", &a.request_sha256)
            .await
            .unwrap();

        let denied = request("alice", "hello", minutes(10));
        store.create(denied.clone()).await.unwrap();
        let d = store
            .decide(&denied.id, "bob", false, Some("no".into()))
            .await
            .unwrap();
        assert_eq!(d.status, Status::Denied);
        assert_eq!(d.valid_until_ms, None);
        let refused = store
            .consume(&denied.id, "alice", &denied.request_sha256)
            .await
            .unwrap_err();
        assert_eq!(refused, ConsumeError::NotApproved(Status::Denied));
        assert_eq!(refused.to_string(), "this approval request was denied");
    }

    async fn self_approval_and_second_decision_refused(fx: &Fixture) {
        let store = fx.store(config()).await;
        let a = request("alice", "hello", minutes(10));
        store.create(a.clone()).await.unwrap();
        let refused = store.decide(&a.id, "alice", true, None).await.unwrap_err();
        assert_eq!(refused, DecideError::SelfApproval);
        assert_eq!(
            refused.to_string(),
            "an approver may not approve their own request"
        );
        assert_eq!(
            store.get(&a.id).await.unwrap().unwrap().status,
            Status::Pending
        );

        store.decide(&a.id, "bob", true, None).await.unwrap();
        let twice = store.decide(&a.id, "carol", false, None).await.unwrap_err();
        assert_eq!(twice, DecideError::NotPending(Status::Approved));
        assert_eq!(
            twice.to_string(),
            "the approval request was already approved"
        );
        let record = store.get(&a.id).await.unwrap().unwrap();
        assert_eq!(record.decided_by.as_deref(), Some("bob"));

        assert_eq!(
            store.decide(&Approval::new_id(), "bob", true, None).await,
            Err(DecideError::NotFound)
        );
        // Withdrawing one's own request is allowed.
        let own = request("alice", "hello", minutes(10));
        store.create(own.clone()).await.unwrap();
        let withdrawn = store.decide(&own.id, "alice", false, None).await.unwrap();
        assert_eq!(withdrawn.status, Status::Denied);
    }

    async fn expiry(fx: &Fixture) {
        let store = fx.store(config()).await;
        let mut overdue = request("alice", "hello", minutes(10));
        overdue.expires_at_ms = now_ms() - 1000;
        store.create(overdue.clone()).await.unwrap();
        let fresh = request("alice", "hello", minutes(10));
        store.create(fresh.clone()).await.unwrap();
        let mut events = store.subscribe();

        let refused = store
            .decide(&overdue.id, "bob", true, None)
            .await
            .unwrap_err();
        assert_eq!(refused, DecideError::NotPending(Status::Expired));
        assert!(refused.to_string().contains("expired"), "{refused}");
        // Not due: expire without force does nothing.
        assert_eq!(store.expire(&fresh.id, false).await.unwrap(), None);

        let swept = store.sweep().await.unwrap();
        assert_eq!(swept.len(), 1, "{swept:?}");
        assert_eq!(swept[0].id, overdue.id);
        assert_eq!(swept[0].status, Status::Expired);
        assert!(store.sweep().await.unwrap().is_empty());
        assert_eq!(store.expire(&overdue.id, true).await.unwrap(), None);
        // (Redis: the `requested` events may still be on their way.)
        let event = next_event_of(&mut events, EventKind::Expired).await;
        assert_eq!(event.approval.id, overdue.id);

        let forced = store.expire(&fresh.id, true).await.unwrap().unwrap();
        assert_eq!(forced.status, Status::Expired);
        assert_eq!(store.expire(&fresh.id, true).await.unwrap(), None);
        assert_eq!(
            store.decide(&fresh.id, "bob", true, None).await,
            Err(DecideError::NotPending(Status::Expired))
        );
        assert_eq!(
            store
                .consume(&fresh.id, "alice", &fresh.request_sha256)
                .await,
            Err(ConsumeError::NotApproved(Status::Expired))
        );
        assert_eq!(store.pending_count().await.unwrap(), 0);
        assert_eq!(
            store.get(&fresh.id).await.unwrap().unwrap().status,
            Status::Expired
        );
    }

    async fn grant_ttl_passes(fx: &Fixture) {
        let cfg = StoreConfig {
            grant_ttl: Duration::from_millis(200),
            ..config()
        };
        let store = fx.store(cfg).await;
        let a = request("alice", "hello", minutes(10));
        store.create(a.clone()).await.unwrap();
        store.decide(&a.id, "bob", true, None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let late = store
            .consume(&a.id, "alice", &a.request_sha256)
            .await
            .unwrap_err();
        assert_eq!(late, ConsumeError::Expired);
        assert!(late.to_string().contains("no longer valid"), "{late}");
        assert_eq!(
            store.get(&a.id).await.unwrap().unwrap().status,
            Status::Approved
        );
    }

    async fn wait_is_released_by_decisions(fx: &Fixture) {
        let store = fx.store(config()).await;
        let other = fx.replica(&store, config()).await;

        /// `decider` decides a new request 100 ms after `store` starts
        /// waiting for it; the wait must return the decision promptly.
        async fn released(
            store: &ApprovalStore,
            decider: ApprovalStore,
            approve: bool,
        ) -> Approval {
            let a = request("alice", "hello", minutes(10));
            store.create(a.clone()).await.unwrap();
            let id = a.id.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                decider.decide(&id, "bob", approve, None).await.unwrap();
            });
            let started = Instant::now();
            let done = store
                .wait(&a.id, Instant::now() + Duration::from_secs(30))
                .await
                .unwrap();
            assert!(started.elapsed() < Duration::from_secs(5));
            done
        }

        // Decided by another task on the same store.
        let a = released(&store, store.clone(), true).await;
        assert_eq!(a.status, Status::Approved);
        // Decided on the other replica (Redis: only pub/sub can tell us in
        // time, the re-read is a minute away).
        let b = released(&store, other.clone(), false).await;
        assert_eq!(b.status, Status::Denied);

        // Nobody decides: pending at the deadline.
        let c = request("alice", "hello", minutes(10));
        store.create(c.clone()).await.unwrap();
        let started = Instant::now();
        let still = store
            .wait(&c.id, Instant::now() + Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(still.status, Status::Pending);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(290) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        // Already decided: returns at once, even past the deadline.
        let done = store.wait(&a.id, Instant::now()).await.unwrap();
        assert_eq!(done.status, Status::Approved);
        // Expiry releases a waiter too.
        let expirer = other.clone();
        let id = c.id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            expirer.expire(&id, true).await.unwrap().unwrap();
        });
        let done = store
            .wait(&c.id, Instant::now() + Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(done.status, Status::Expired);
        assert!(store
            .wait(&Approval::new_id(), Instant::now())
            .await
            .is_err());
        assert_eq!(store.waited_ids(), 0);
    }

    async fn many_waiters(fx: &Fixture) {
        const N: usize = 2000;
        let store = fx.store(config()).await;
        let other = fx.replica(&store, config()).await;
        let mut ids = Vec::with_capacity(N);
        let mut creates = tokio::task::JoinSet::new();
        for chunk in 0..8 {
            let store = store.clone();
            creates.spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..N / 8 {
                    let a = request(&format!("client{chunk}"), "hello", minutes(10));
                    store.create(a.clone()).await.unwrap();
                    ids.push(a.id);
                }
                ids
            });
        }
        while let Some(chunk) = creates.join_next().await {
            ids.extend(chunk.unwrap());
        }
        assert_eq!(store.pending_count().await.unwrap(), N);

        let deadline = Instant::now() + Duration::from_secs(60);
        let mut waits = tokio::task::JoinSet::new();
        for id in &ids {
            let store = store.clone();
            let id = id.clone();
            waits.spawn(async move { store.wait(&id, deadline).await.unwrap() });
        }
        eventually("all waiters registered", || store.waited_ids() == N).await;

        let mut decides = tokio::task::JoinSet::new();
        for chunk in ids.chunks(N / 8) {
            let other = other.clone();
            let chunk = chunk.to_vec();
            decides.spawn(async move {
                for id in chunk {
                    other.decide(&id, "approver", true, None).await.unwrap();
                }
            });
        }
        while let Some(done) = decides.join_next().await {
            done.unwrap();
        }
        let mut released = 0;
        while let Some(done) = waits.join_next().await {
            assert_eq!(done.unwrap().status, Status::Approved);
            released += 1;
        }
        assert_eq!(released, N);
        assert_eq!(store.waited_ids(), 0);

        // Waits that are dropped (timeout, abort) leave nothing behind; two
        // waiters on one id share an entry.
        let a = request("alice", "hello", minutes(10));
        store.create(a.clone()).await.unwrap();
        let far = Instant::now() + Duration::from_secs(600);
        let mut aborted = Vec::new();
        for _ in 0..50 {
            let store = store.clone();
            let id = a.id.clone();
            aborted.push(tokio::spawn(async move { store.wait(&id, far).await }));
        }
        eventually("waiters registered", || store.waited_ids() == 1).await;
        let timed_out =
            tokio::time::timeout(Duration::from_millis(50), store.wait(&a.id, far)).await;
        assert!(timed_out.is_err());
        for handle in &aborted {
            handle.abort();
        }
        for handle in aborted {
            assert!(handle.await.unwrap_err().is_cancelled());
        }
        assert_eq!(store.waited_ids(), 0);
    }

    async fn max_pending_refuses(fx: &Fixture) {
        let cfg = StoreConfig {
            max_pending: 3,
            ..config()
        };
        let store = fx.store(cfg).await;
        let mut made = Vec::new();
        for _ in 0..3 {
            let a = request("alice", "hello", minutes(10));
            store.create(a.clone()).await.unwrap();
            made.push(a);
        }
        let full = store
            .create(request("alice", "hello", minutes(10)))
            .await
            .unwrap_err();
        assert_eq!(full, StoreError::Full);
        assert!(full.to_string().contains("too many"), "{full}");
        // A decision frees a place.
        store.decide(&made[0].id, "bob", false, None).await.unwrap();
        store
            .create(request("alice", "hello", minutes(10)))
            .await
            .unwrap();
        assert_eq!(store.pending_count().await.unwrap(), 3);

        // Per requester: bob may have two pending, dave's do not count
        // (alice's from above are still pending in a shared Redis).
        let cfg = StoreConfig {
            max_pending_per_requester: 2,
            ..config()
        };
        let store = fx.store(cfg).await;
        let b1 = request("bob", "one", minutes(10));
        store.create(b1.clone()).await.unwrap();
        store
            .create(request("bob", "two", minutes(10)))
            .await
            .unwrap();
        store
            .create(request("dave", "x", minutes(10)))
            .await
            .unwrap();
        let refused = store
            .create(request("bob", "three", minutes(10)))
            .await
            .unwrap_err();
        assert_eq!(refused, StoreError::RequesterFull);
        assert!(
            refused.to_string().contains("you have too many"),
            "{refused}"
        );
        // Once one of bob's is decided, he may ask again.
        store.decide(&b1.id, "carol", false, None).await.unwrap();
        store
            .create(request("bob", "three", minutes(10)))
            .await
            .unwrap();
    }

    async fn subscribers_see_every_replica(fx: &Fixture) {
        let store = fx.store(config()).await;
        let other = fx.replica(&store, config()).await;
        let mut events = store.subscribe();
        let a = request("alice", "hello", minutes(10));
        other.create(a.clone()).await.unwrap();
        other.decide(&a.id, "bob", true, None).await.unwrap();
        store
            .consume(&a.id, "alice", &a.request_sha256)
            .await
            .unwrap();
        let kinds: Vec<(EventKind, Status)> = [
            next_event(&mut events).await,
            next_event(&mut events).await,
            next_event(&mut events).await,
        ]
        .into_iter()
        .inspect(|e| assert_eq!(e.approval.id, a.id))
        .map(|e| (e.kind, e.approval.status))
        .collect();
        assert_eq!(
            kinds,
            [
                (EventKind::Requested, Status::Pending),
                (EventKind::Approved, Status::Approved),
                (EventKind::Used, Status::Used),
            ]
        );
        // Event JSON is what the console gets.
        let json = serde_json::to_value(Event {
            kind: EventKind::Requested,
            approval: a.clone(),
        })
        .unwrap();
        assert_eq!(json["kind"], "requested");
        assert_eq!(json["approval"]["status"], "pending");
        assert_eq!(json["approval"]["mode"], "ticket");
        assert!(json["approval"].get("decided_by").is_none());
    }

    async fn retention_drops_finished_records(fx: &Fixture) {
        let cfg = StoreConfig {
            grant_ttl: Duration::from_millis(100),
            retain: Duration::from_millis(300),
            max_pending: 100,
            max_pending_per_requester: 100,
        };
        let store = fx.store(cfg).await;
        // The request lives 2 s, so a slow machine still decides it in
        // time; kept max(300, 2000 + 100) ms after creation.
        let a = request("alice", "hello", Duration::from_secs(2));
        store.create(a.clone()).await.unwrap();
        store.decide(&a.id, "bob", false, None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        store.sweep().await.unwrap();
        assert_eq!(store.get(&a.id).await.unwrap(), None);
        assert!(store.list(None, 10).await.unwrap().is_empty());
    }

    macro_rules! on_both_backends {
        ($($name:ident),* $(,)?) => {
            mod on_memory {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let fx = super::Fixture::memory();
                        super::bounded(super::$name(&fx)).await;
                    }
                )*
            }
            mod on_redis {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let fx = super::Fixture::redis();
                        super::bounded(super::$name(&fx)).await;
                    }
                )*
            }
        };
    }

    on_both_backends!(
        create_get_list,
        approve_then_consume_once,
        consume_checks_client_body_and_status,
        self_approval_and_second_decision_refused,
        expiry,
        grant_ttl_passes,
        wait_is_released_by_decisions,
        many_waiters,
        max_pending_refuses,
        subscribers_see_every_replica,
        retention_drops_finished_records,
    );

    // ---- without a backend ----

    #[test]
    fn names_and_ids() {
        for status in [
            Status::Pending,
            Status::Approved,
            Status::Denied,
            Status::Expired,
            Status::Used,
        ] {
            assert_eq!(Status::parse(status.as_str()), Some(status));
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::Value::from(status.as_str())
            );
            assert_eq!(
                status.is_final(),
                matches!(status, Status::Denied | Status::Expired | Status::Used)
            );
        }
        assert_eq!(Status::parse("Pending"), None);
        assert_eq!(serde_json::to_value(Mode::Hold).unwrap(), "hold");
        assert_eq!(serde_json::to_value(EventKind::Used).unwrap(), "used");

        let id = Approval::new_id();
        assert_eq!(id.len(), 36);
        assert!(id.starts_with("apr_"));
        assert!(id[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(id, Approval::new_id());
        assert!(plausible_id(&id));
        assert!(!plausible_id("") && !plausible_id("a b") && !plausible_id("a:b"));
    }

    #[test]
    fn futures_are_send() {
        fn send<T: Send>(_: T) {}
        let store = ApprovalStore::memory(config());
        send(store.create(request("a", "b", minutes(1))));
        send(store.get("x"));
        send(store.list(None, 1));
        send(store.decide("x", "a", true, None));
        send(store.consume("x", "a", "b"));
        send(store.expire("x", true));
        send(store.sweep());
        send(store.wait("x", Instant::now()));
        send(store.pending_count());
        send(ApprovalStore::redis(
            config(),
            RedisStoreConfig::new("redis://x/"),
        ));
    }

    #[test]
    fn passwords_are_redacted() {
        let cfg = RedisStoreConfig::new("redis://user:pa%40ss@db:6379/0");
        assert_eq!(cfg.key_prefix, "modelgate:");
        let debug = format!("{cfg:?}");
        assert!(debug.contains("redis://***@db:6379/0"), "{debug}");
        assert!(!debug.contains("pa%40ss"), "{debug}");
        let secrets = url_secrets(&cfg.url);
        assert_eq!(scrub("x pa%40ss y user:pa%40ss", &secrets), "x *** y ***");
        assert_eq!(redact_url("redis://db/0"), "redis://db/0");
        assert!(url_secrets("redis://db/0").is_empty());
    }

    // ---- Redis only ----

    async fn pttl(conn: &MultiplexedConnection, key: &str) -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn.clone())
            .await
            .unwrap()
    }

    async fn score(conn: &MultiplexedConnection, set: &str, id: &str) -> Option<u64> {
        redis::cmd("ZSCORE")
            .arg(set)
            .arg(id)
            .query_async(&mut conn.clone())
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_layout() {
        bounded(async {
            let server = RedisServer::start();
            let store = ApprovalStore::redis(config(), redis_config(&server.url()))
                .await
                .unwrap();
            assert_eq!(store.kind(), "redis");
            assert_eq!(ApprovalStore::memory(config()).kind(), "memory");
            let a = request("alice", "hello", minutes(10));
            store.create(a.clone()).await.unwrap();

            let client = redis::Client::open(server.url()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let key = format!("modelgate:approval:{}", a.id);
            let json: String = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(serde_json::from_str::<Approval>(&json).unwrap(), a);
            // retain (1 h) is longer than the request's life plus grant.
            let ttl = pttl(&conn, &key).await;
            assert!((3_500_000..=3_600_000).contains(&ttl), "{ttl}");
            let all = "modelgate:approvals";
            let pending = "modelgate:approvals:pending";
            assert_eq!(score(&conn, all, &a.id).await, Some(a.created_at_ms));
            assert_eq!(score(&conn, pending, &a.id).await, Some(a.expires_at_ms));

            store.decide(&a.id, "bob", true, None).await.unwrap();
            assert_eq!(score(&conn, pending, &a.id).await, None);
            assert_eq!(score(&conn, all, &a.id).await, Some(a.created_at_ms));
            let ttl = pttl(&conn, &key).await;
            assert!((3_000_000..=3_600_000).contains(&ttl), "TTL kept: {ttl}");

            // A listing drops ids whose record is gone.
            let _: i64 = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(store.list(None, 10).await.unwrap().is_empty());
            assert_eq!(score(&conn, all, &a.id).await, None);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_recheck_catches_a_missed_event() {
        bounded(async {
            let server = RedisServer::start();
            let store = ApprovalStore::redis(
                config(),
                RedisStoreConfig {
                    recheck: Duration::from_millis(200),
                    ..redis_config(&server.url())
                },
            )
            .await
            .unwrap();
            let a = request("alice", "hello", minutes(10));
            store.create(a.clone()).await.unwrap();
            // Decided behind the store's back: no event is published.
            let mut decided = a.clone();
            decided.status = Status::Approved;
            let client = redis::Client::open(server.url()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let _: () = redis::cmd("SET")
                .arg(format!("modelgate:approval:{}", a.id))
                .arg(serde_json::to_string(&decided).unwrap())
                .query_async(&mut conn)
                .await
                .unwrap();
            let started = Instant::now();
            let done = store
                .wait(&a.id, Instant::now() + Duration::from_secs(30))
                .await
                .unwrap();
            assert_eq!(done.status, Status::Approved);
            assert!(started.elapsed() < Duration::from_secs(5));
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_events_resume_after_a_restart() {
        bounded(async {
            let port = free_port();
            let server = RedisServer::start_on(port, &[]);
            let store = ApprovalStore::redis(
                config(),
                RedisStoreConfig {
                    recheck: Duration::from_secs(60),
                    ..redis_config(&server.url())
                },
            )
            .await
            .unwrap();
            let mut events = store.subscribe();
            drop(server);
            let server = RedisServer::start_on(port, &[]);
            let other = ApprovalStore::redis(config(), redis_config(&server.url()))
                .await
                .unwrap();
            // Until the subscriber is back, events are lost; keep creating
            // until one arrives.
            let got = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    let a = request("alice", "hello", minutes(10));
                    other.create(a.clone()).await.unwrap();
                    if let Ok(Ok(event)) =
                        tokio::time::timeout(Duration::from_millis(300), events.recv()).await
                    {
                        return event;
                    }
                }
            })
            .await
            .expect("the subscriber reconnected");
            assert_eq!(got.kind, EventKind::Requested);
            // The command connection is back too.
            store.get(&got.approval.id).await.unwrap().unwrap();
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_errors_hide_the_password() {
        bounded(async {
            let secret = "s3cr3t-pw";
            // Nobody listens.
            let port = free_port();
            let url = format!("redis://user:{secret}@127.0.0.1:{port}/0");
            let mut cfg = redis_config(&url);
            cfg.timeout = Duration::from_millis(300);
            let err = ApprovalStore::redis(config(), cfg).await.unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, StoreError::Unavailable(_)));
            assert!(!text.contains(secret), "{text}");
            assert!(text.contains("redis://***@127.0.0.1"), "{text}");

            // Wrong password.
            let server = RedisServer::start_on(free_port(), &["--requirepass", "right-pw"]);
            let wrong = format!("redis://:{secret}@127.0.0.1:{}/0", server.port);
            let err = ApprovalStore::redis(config(), redis_config(&wrong))
                .await
                .unwrap_err();
            let text = err.to_string();
            assert!(!text.contains(secret), "{text}");

            // Right password; then the server goes away.
            let right = format!("redis://:right-pw@127.0.0.1:{}/0", server.port);
            // redis_config's 5 s timeout: creating the store loads scripts,
            // several round trips; the errors below come from the server
            // being gone, not from the timeout.
            let cfg = redis_config(&right);
            let store = ApprovalStore::redis(config(), cfg.clone()).await.unwrap();
            assert!(!format!("{store:?} {cfg:?}").contains("right-pw"));
            let a = request("alice", "hello", minutes(10));
            store.create(a.clone()).await.unwrap();
            drop(server);
            let err = store.get(&a.id).await.unwrap_err();
            let text = err.to_string();
            assert!(
                text.starts_with("the approval store is unavailable"),
                "{text}"
            );
            assert!(!text.contains("right-pw"), "{text}");
            let err = store.decide(&a.id, "bob", true, None).await.unwrap_err();
            assert!(matches!(err, DecideError::Store(_)));
            assert!(!err.to_string().contains("right-pw"));
            // A waiter gives up at its deadline with the error.
            let started = Instant::now();
            assert!(store
                .wait(&a.id, Instant::now() + Duration::from_millis(200))
                .await
                .is_err());
            assert!(started.elapsed() < Duration::from_secs(10));
        })
        .await;
    }
}
