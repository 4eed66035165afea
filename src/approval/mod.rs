//! Human approval of risky calls: the `approval:` configuration and the
//! service the proxy and the admin API share. A `require_approval` rule
//! creates a request ([`Approvals::request`]); the call then waits for it
//! (`hold`) or is answered with a ticket the client redeems later
//! ([`Approvals::redeem`]); approvers decide through the admin API or the
//! console ([`Approvals::decide`]). Every step is audited and counted here.
//! Storage and waiting live in [`store`], webhook notices in [`notify`].

pub mod notify;
pub mod store;

use crate::audit::record::{ApprovalStep, Entry};
use crate::audit::Recorder;
use crate::config::ConfigError;
use crate::errors::ClientError;
use crate::identity::Client;
use crate::mask::stream::MaskRules;
use crate::metrics::Metrics;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::{Approval, ApprovalStore, ConsumeError, DecideError, Mode, Status, StoreError};

/// Bytes of prompt text masked beyond the summary's cut (longer than any
/// built-in entity).
const SUMMARY_MARGIN: usize = 16 * 1024;
/// Bounds of `redis.recheck`.
const MIN_RECHECK: Duration = Duration::from_millis(100);
const MAX_RECHECK: Duration = Duration::from_secs(3600);

/// The header a client repeats a ticketed call with.
pub const APPROVAL_HEADER: &str = "x-modelgate-approval";

/// `approval:` in the configuration.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalConfig {
    /// `memory` (default: one replica) or `redis` (shared by replicas).
    #[serde(default)]
    pub store: StoreKind,
    /// Required with `store: redis`.
    #[serde(default)]
    pub redis: Option<RedisSection>,
    /// Identities (API-key clients or JWT subjects) in any of these groups
    /// may approve or deny. Required, non-empty.
    pub approver_groups: Vec<String>,
    /// How long a request stays pending before it expires. Default 15m.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Longest a `hold` call waits (capped by `ttl`). Default 5m.
    #[serde(default = "default_hold_timeout", with = "humantime_serde")]
    pub hold_timeout: Duration,
    /// How long an approved ticket may be redeemed. Default 15m.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub grant_ttl: Duration,
    /// How long finished requests stay listable. Default 24h.
    #[serde(default = "default_retain", with = "humantime_serde")]
    pub retain: Duration,
    /// Pending requests at most; beyond, new ones are refused (503). Default 10000.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Pending requests per requester at most; beyond, their new ones are
    /// refused (429). Default 20.
    #[serde(default = "default_max_pending_per_client")]
    pub max_pending_per_client: usize,
    /// The console's public address (e.g. `https://gw-admin.example/ui`),
    /// linked from webhook notices.
    #[serde(default)]
    pub console_url: Option<String>,
    /// Characters of the masked prompt summary approvers read. Default 2000.
    #[serde(default = "default_summary_chars")]
    pub summary_chars: usize,
    /// Notify a webhook (Slack-compatible) of each new request.
    #[serde(default)]
    pub webhook: Option<notify::WebhookConfig>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Memory,
    Redis,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// `redis://[user:password@]host:port/db`.
    pub url: String,
    /// Default `modelgate:`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Longest wait per Redis call. Default 500ms.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How often a held call re-reads its request, in case the pub/sub
    /// message of a decision was missed (e.g. during a reconnect). Default 1s.
    #[serde(default = "default_recheck", with = "humantime_serde")]
    pub recheck: Duration,
}

impl fmt::Debug for ApprovalConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApprovalConfig")
            .field("store", &self.store)
            .field("approver_groups", &self.approver_groups)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn default_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_hold_timeout() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_retain() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_max_pending() -> usize {
    10_000
}
fn default_max_pending_per_client() -> usize {
    20
}
fn default_summary_chars() -> usize {
    2000
}
fn default_key_prefix() -> String {
    "modelgate:".into()
}
fn default_recheck() -> Duration {
    store::RECHECK
}
fn default_redis_timeout() -> Duration {
    Duration::from_millis(500)
}

impl ApprovalConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: String| Err(ConfigError::at(format!("approval.{key}"), msg));
        if self.approver_groups.is_empty() || self.approver_groups.iter().any(|g| g.is_empty()) {
            return bad(
                "approver_groups",
                "list at least one group whose members may approve".into(),
            );
        }
        for (key, d) in [
            ("ttl", self.ttl),
            ("hold_timeout", self.hold_timeout),
            ("grant_ttl", self.grant_ttl),
            ("retain", self.retain),
        ] {
            if d.is_zero() {
                return bad(key, "must be longer than 0s".into());
            }
        }
        if self.retain < self.ttl + self.grant_ttl {
            return bad(
                "retain",
                format!(
                    "must be at least ttl + grant_ttl ({}), or requests vanish while usable",
                    humantime::format_duration(self.ttl + self.grant_ttl)
                ),
            );
        }
        if self.max_pending == 0 {
            return bad("max_pending", "must be at least 1".into());
        }
        if self.max_pending_per_client == 0 {
            return bad("max_pending_per_client", "must be at least 1".into());
        }
        if self.summary_chars == 0 {
            return bad("summary_chars", "must be at least 1".into());
        }
        match (self.store, &self.redis) {
            (StoreKind::Redis, None) => {
                return bad("redis", "required with `store: redis`".into());
            }
            (StoreKind::Memory, Some(_)) => {
                return bad("redis", "only with `store: redis`".into());
            }
            (_, Some(r)) if !(r.url.starts_with("redis://") || r.url.starts_with("rediss://")) => {
                return bad("redis.url", "must start with redis:// or rediss://".into());
            }
            (_, Some(r)) if !(MIN_RECHECK..=MAX_RECHECK).contains(&r.recheck) => {
                return bad(
                    "redis.recheck",
                    "must be between 100ms and 1h: it bounds how late a held call notices a decision whose message was missed".into(),
                );
            }
            _ => {}
        }
        if let Some(url) = &self.console_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return bad("console_url", "must be an http(s) URL".into());
            }
        }
        if let Some(w) = &self.webhook {
            w.validate().map_err(ConfigError)?;
        }
        Ok(())
    }
}

/// A new request's facts, from the call that needs it.
pub struct NewRequest<'a> {
    pub client: &'a Client,
    pub route: &'a str,
    pub path: &'a str,
    pub model: Option<&'a str>,
    pub rule: &'a str,
    pub reason: &'a str,
    pub mode: Mode,
    pub body: &'a [u8],
    /// [`request_hash`] of the call.
    pub request_sha256: &'a str,
    pub call_id: &'a str,
}

/// How a held call ended, when it may not go on.
pub enum HoldEnd {
    Denied(Approval),
    Expired(Approval),
    /// The client closed the connection while waiting.
    ClientGone,
    /// The gateway is shutting down; the request was withdrawn.
    ShuttingDown,
}

/// The service: store, notifier, audit and the settings.
pub struct Approvals {
    approver_groups: Vec<String>,
    ttl: Duration,
    hold_timeout: Duration,
    console_url: Option<String>,
    summary_chars: usize,
    /// With `store: redis`: where, and the store's settings (it connects
    /// in [`Approvals::run`]).
    redis: Option<(store::RedisStoreConfig, store::StoreConfig)>,
    webhook: Option<notify::WebhookConfig>,
    store: OnceLock<ApprovalStore>,
    notifier: OnceLock<notify::Notifier>,
    recorder: Option<Recorder>,
    summary_rules: Arc<MaskRules>,
    metrics: Arc<Metrics>,
    /// Requests being decided on this replica whose decision is not yet
    /// audited: a call released by the decision waits for that record, so
    /// the trail reads approved → used, never the reverse.
    deciding: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Flipped when the server shuts down: held calls are released (503).
    shutdown: tokio::sync::watch::Sender<bool>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Lowercase hex SHA-256 of the exact body (shown to approvers).
pub fn body_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// What an approval is bound to: SHA-256 over the method, path and query,
/// content type, route, rule and body. The content type and path decide the
/// route and whether request masking runs, so a ticket cannot be replayed
/// to another route, under another rule or with masking skipped.
pub fn request_hash(
    method: &str,
    path_and_query: &str,
    content_type: &[u8],
    route: &str,
    rule: &str,
    body: &[u8],
) -> String {
    let mut h = Sha256::new();
    for part in [
        method.as_bytes(),
        path_and_query.as_bytes(),
        content_type,
        route.as_bytes(),
        rule.as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(body);
    hex::encode(h.finalize())
}

impl Approvals {
    /// The memory store is ready at once; Redis connects in [`Approvals::run`].
    pub fn build(
        cfg: &ApprovalConfig,
        recorder: Option<Recorder>,
        summary_rules: Arc<MaskRules>,
        metrics: Arc<Metrics>,
    ) -> Arc<Approvals> {
        let store_cfg = store::StoreConfig {
            grant_ttl: cfg.grant_ttl,
            retain: cfg.retain,
            max_pending: cfg.max_pending,
            max_pending_per_requester: cfg.max_pending_per_client,
        };
        let mut approvals = Approvals {
            approver_groups: cfg.approver_groups.clone(),
            ttl: cfg.ttl,
            hold_timeout: cfg.hold_timeout.min(cfg.ttl),
            console_url: cfg.console_url.clone(),
            summary_chars: cfg.summary_chars,
            redis: None,
            webhook: cfg.webhook.clone(),
            store: OnceLock::new(),
            notifier: OnceLock::new(),
            recorder,
            summary_rules,
            metrics,
            deciding: Default::default(),
            shutdown: tokio::sync::watch::channel(false).0,
        };
        match &cfg.redis {
            Some(r) => {
                let redis = store::RedisStoreConfig {
                    url: r.url.clone(),
                    key_prefix: r.key_prefix.clone(),
                    timeout: r.timeout,
                    recheck: r.recheck,
                };
                approvals.redis = Some((redis, store_cfg));
            }
            None => {
                let _ = approvals.store.set(ApprovalStore::memory(store_cfg));
            }
        }
        Arc::new(approvals)
    }

    /// The background work (a Pingora background service runs it): connects
    /// to Redis (retrying), starts the webhook sender, then expires overdue
    /// requests every second and keeps the pending gauge current.
    pub async fn run(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        if let Some((redis, cfg)) = &self.redis {
            let mut backoff = Duration::from_millis(200);
            loop {
                match ApprovalStore::redis(cfg.clone(), redis.clone()).await {
                    Ok(s) => {
                        log::info!("approval store: connected to Redis");
                        let _ = self.store.set(s);
                        break;
                    }
                    Err(e) => {
                        log::error!("approval store: {e}; retrying in {backoff:?}");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => {
                                self.shutdown.send_replace(true);
                                return;
                            }
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        }
        if let Some(w) = &self.webhook {
            match notify::Notifier::start(w) {
                Ok(n) => {
                    let _ = self.notifier.set(n);
                }
                Err(e) => log::error!("approval webhook: {e}"),
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => {
                    self.shutdown.send_replace(true);
                    return;
                }
            }
            let Some(store) = self.store.get() else {
                continue;
            };
            match store.sweep().await {
                Ok(expired) => {
                    for a in expired {
                        self.step("expired", None, None, Some("not decided in time"), a);
                    }
                }
                Err(e) => log::warn!("approval store: expiring overdue requests: {e}"),
            }
            if let Ok(n) = store.pending_count().await {
                self.metrics.approvals_pending.set(n as i64);
            }
            if let Some(n) = self.notifier.get() {
                let m = &self.metrics.approval_webhook;
                for (what, v) in [
                    ("sent", n.sent()),
                    ("failed", n.failed()),
                    ("dropped", n.dropped()),
                    ("retries", n.retries()),
                ] {
                    m.with_label_values(&[what]).set(v as i64);
                }
            }
        }
    }

    /// The store, once it is ready (Redis connects in the background).
    pub fn store(&self) -> Result<&ApprovalStore, StoreError> {
        self.store
            .get()
            .ok_or_else(|| StoreError::Unavailable("not connected yet".into()))
    }

    pub fn store_kind(&self) -> &'static str {
        if self.redis.is_some() {
            "redis"
        } else {
            "memory"
        }
    }

    /// Whether `client` may decide requests.
    pub fn is_approver(&self, client: &Client) -> bool {
        client
            .groups
            .iter()
            .any(|g| self.approver_groups.iter().any(|a| a == g))
    }

    /// How long a held call waits at most.
    pub fn hold_timeout(&self) -> Duration {
        self.hold_timeout
    }

    /// The masked prompt text approvers read, cut to `summary_chars`.
    pub fn summary(&self, body: &[u8]) -> String {
        let mut text = crate::policy::prompt_text(body);
        // Masked, then cut: the prefix masked reaches past the cut by more
        // than the longest entity, so one straddling the cut is masked too.
        let keep = self.summary_chars.saturating_mul(4) + SUMMARY_MARGIN;
        if text.len() > keep {
            let mut end = keep;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        let mut counts = vec![0; self.summary_rules.entity_count()];
        let masked = self.summary_rules.mask_all(&text, &mut counts);
        match masked.char_indices().nth(self.summary_chars) {
            Some((i, _)) => format!("{}…", &masked[..i]),
            None => masked,
        }
    }

    /// Creates a pending request (audited, counted, notified).
    pub async fn request(&self, r: NewRequest<'_>) -> Result<Approval, ClientError> {
        let store = self.store().map_err(unavailable)?;
        let now = now_ms();
        let approval = Approval {
            id: Approval::new_id(),
            status: Status::Pending,
            mode: r.mode,
            requester: r.client.name.clone(),
            requester_via: r.client.via.as_str().to_string(),
            requester_groups: r.client.groups.clone(),
            route: r.route.to_string(),
            path: r.path.to_string(),
            model: r.model.map(str::to_string),
            rule: r.rule.to_string(),
            reason: r.reason.to_string(),
            summary: self.summary(r.body),
            body_sha256: body_hash(r.body),
            request_sha256: r.request_sha256.to_string(),
            created_at_ms: now,
            expires_at_ms: now + self.ttl.as_millis() as u64,
            decided_by: None,
            decided_at_ms: None,
            comment: None,
            valid_until_ms: None,
            used_at_ms: None,
        };
        store.create(approval.clone()).await.map_err(unavailable)?;
        if let Some(n) = self.notifier.get() {
            n.notify(notify::Notice {
                id: approval.id.clone(),
                requester: approval.requester.clone(),
                route: approval.route.clone(),
                model: approval.model.clone(),
                rule: approval.rule.clone(),
                reason: approval.reason.clone(),
                summary: approval.summary.clone(),
                mode: match approval.mode {
                    Mode::Hold => "hold",
                    Mode::Ticket => "ticket",
                },
                expires_at_ms: approval.expires_at_ms,
                console_url: self
                    .console_url
                    .as_ref()
                    .map(|u| format!("{u}#{}", approval.id)),
            });
        }
        self.step(
            "requested",
            Some(r.client),
            Some(r.call_id),
            None,
            approval.clone(),
        );
        Ok(approval)
    }

    /// Waits for a held call's request to be decided; `gone` resolves when
    /// the client goes away. Approved → used (single use) and returned.
    pub async fn hold(
        &self,
        approval: &Approval,
        client: &Client,
        call_id: &str,
        gone: impl std::future::Future<Output = ()>,
    ) -> Result<Result<Approval, HoldEnd>, ClientError> {
        let store = self.store().map_err(unavailable)?;
        let deadline = tokio::time::Instant::now() + self.hold_timeout;
        let mut shutdown = self.shutdown.subscribe();
        let seen = {
            let _held = Held::new(&self.metrics.approvals_held);
            tokio::select! {
                r = store.wait(&approval.id, deadline) => Ok(r),
                _ = gone => Err(HoldEnd::ClientGone),
                _ = shutdown.wait_for(|down| *down) => Err(HoldEnd::ShuttingDown),
            }
        };
        let seen = match seen {
            Ok(r) => r.map_err(unavailable)?,
            Err(end) => {
                let note = match end {
                    HoldEnd::ShuttingDown => "the gateway shut down while the call was held",
                    _ => "the client closed the connection while held",
                };
                if let Ok(Some(a)) = store.expire(&approval.id, true).await {
                    self.step("expired", Some(client), Some(call_id), Some(note), a);
                }
                return Ok(Err(end));
            }
        };
        let seen = match seen.status {
            // The hold timed out: nobody decided in time.
            Status::Pending => match store.expire(&seen.id, true).await.map_err(unavailable)? {
                Some(a) => {
                    self.step(
                        "expired",
                        Some(client),
                        Some(call_id),
                        Some("hold timed out"),
                        a.clone(),
                    );
                    return Ok(Err(HoldEnd::Expired(a)));
                }
                // Decided in the last instant: look again.
                None => store
                    .get(&seen.id)
                    .await
                    .map_err(unavailable)?
                    .unwrap_or(seen),
            },
            _ => seen,
        };
        match seen.status {
            Status::Approved => self
                .redeem(&seen.id, client, &seen.request_sha256, call_id)
                .await
                .map(Ok),
            Status::Denied => Ok(Err(HoldEnd::Denied(seen))),
            _ => Ok(Err(HoldEnd::Expired(seen))),
        }
    }

    /// Redeems an approved request for this client and request (single use).
    pub async fn redeem(
        &self,
        id: &str,
        client: &Client,
        request_sha256: &str,
        call_id: &str,
    ) -> Result<Approval, ClientError> {
        if !store::plausible_id(id) {
            return Err(ClientError::approval_invalid(&format!(
                "`{APPROVAL_HEADER}` does not hold an approval id."
            )));
        }
        let store = self.store().map_err(unavailable)?;
        self.decision_audited(id).await;
        match store.consume(id, &client.name, request_sha256).await {
            Ok(a) => {
                self.step("used", Some(client), Some(call_id), None, a.clone());
                Ok(a)
            }
            Err(ConsumeError::Store(e)) => Err(unavailable(e)),
            Err(e) => {
                self.metrics
                    .approvals
                    .with_label_values(&["refused_redeem"])
                    .inc();
                Err(ClientError::approval_invalid(&format!(
                    "Approval {id}: {e}."
                )))
            }
        }
    }

    /// An approver approves or denies (audited).
    pub async fn decide(
        &self,
        id: &str,
        approver: &Client,
        approve: bool,
        comment: Option<String>,
    ) -> Result<Approval, DecideError> {
        let store = self.store().map_err(DecideError::Store)?;
        *self.deciding_set().entry(id.to_string()).or_default() += 1;
        let decided = store.decide(id, &approver.name, approve, comment).await;
        if let Ok(a) = &decided {
            let event = if approve { "approved" } else { "denied" };
            self.step(event, Some(approver), None, None, a.clone());
        }
        {
            let mut set = self.deciding_set();
            if let Some(n) = set.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    set.remove(id);
                }
            }
        }
        decided
    }

    fn deciding_set(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, usize>> {
        self.deciding.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (briefly) until a decision made on this replica is audited.
    async fn decision_audited(&self, id: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.deciding_set().contains_key(id) {
            if tokio::time::Instant::now() >= deadline {
                log::warn!("approval {id}: its decision was not audited within 5s");
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Audits and counts one step.
    fn step(
        &self,
        event: &'static str,
        actor: Option<&Client>,
        call_id: Option<&str>,
        note: Option<&str>,
        approval: Approval,
    ) {
        self.metrics.approvals.with_label_values(&[event]).inc();
        log::info!(
            "approval {} {event}{}",
            approval.id,
            actor.map(|c| format!(" by {}", c.name)).unwrap_or_default()
        );
        if let Some(r) = &self.recorder {
            let step = ApprovalStep {
                event,
                at: SystemTime::now(),
                actor: actor.map(|c| Arc::new(c.clone())),
                call_id: call_id.map(str::to_string),
                note: note.map(str::to_string),
                approval,
            };
            if !r.send(Entry::Approval(Box::new(step))) {
                log::warn!("audit writer gone: approval step not recorded");
            }
        }
    }
}

/// Counts a held call while it waits (also when its future is dropped).
struct Held<'a>(&'a prometheus::IntGauge);

impl<'a> Held<'a> {
    fn new(g: &'a prometheus::IntGauge) -> Self {
        g.inc();
        Held(g)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn unavailable(e: StoreError) -> ClientError {
    log::warn!("approval store: {e}");
    match e {
        StoreError::Full => ClientError::approval_unavailable(
            "Too many approval requests are pending; try again later.",
        ),
        StoreError::RequesterFull => {
            let mut e = ClientError::new(
                429,
                "rate_limit_error",
                Some("too_many_pending_approvals"),
                "You have too many approval requests waiting for a decision; wait for those first.",
            );
            e.retry_after = Some(30);
            e
        }
        StoreError::Unavailable(_) => ClientError::approval_unavailable(
            "The approval service is unavailable right now; the call was not forwarded.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<ApprovalConfig, String> {
        let cfg: ApprovalConfig = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    #[test]
    fn redis_recheck_defaults_and_is_bounded() {
        let base = "approver_groups: [a]\nstore: redis\n";
        let cfg = check(&format!("{base}redis: {{url: 'redis://h:6379/0'}}")).unwrap();
        assert_eq!(cfg.redis.unwrap().recheck, store::RECHECK);
        for (ok, d) in [("100ms", 100), ("1h", 3_600_000)] {
            let cfg = check(&format!(
                "{base}redis: {{url: 'redis://h:6379/0', recheck: {ok}}}"
            ))
            .unwrap();
            assert_eq!(cfg.redis.unwrap().recheck, Duration::from_millis(d));
        }
        for bad in ["99ms", "3601s", "0s"] {
            let err = check(&format!(
                "{base}redis: {{url: 'redis://h:6379/0', recheck: {bad}}}"
            ))
            .err()
            .unwrap_or_else(|| panic!("recheck: {bad} is refused"));
            assert!(err.contains("approval.redis.recheck"), "{err}");
        }
    }
}
