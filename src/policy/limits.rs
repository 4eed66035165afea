//! Rate limits and token budgets: whether a client may start another call
//! now. Owns the `rate_limits` config block, the token buckets (requests per
//! second) and the completion-token budgets (per minute and per UTC day) of
//! each client and each group, kept in process or, with several replicas, in
//! Redis so that every replica sees the same counts.
//!
//! Not for: reading `usage` out of responses (the caller passes the count to
//! [`Limiter::charge`]), building the 429 response, or metrics registration
//! (the caller reads [`Limiter::store_errors`]).
//!
//! Semantics worth knowing:
//! - A call takes one token from every bucket that applies to it: the
//!   client's own (or `default`'s) and each of its groups'. It is all or
//!   nothing: a call refused by its group's bucket takes no token from the
//!   client's.
//! - Budgets are checked before the call and charged after it, so the call
//!   that crosses a budget is served in full and the budget may overshoot by
//!   one call's completion tokens (several, with concurrent calls). The next
//!   call is refused until the window ends.
//! - Windows are fixed: the UTC minute and the UTC day. In Redis mode the
//!   Redis server's clock decides both windows and bucket refills, so
//!   replicas whose clocks disagree still agree on the counts.
//! - A client's counters are keyed by its name; callers pass only
//!   authenticated clients' names, so memory is bounded by the configured
//!   clients and groups.

use crate::config::redact_url;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MINUTE_SECS: u64 = 60;
const DAY_SECS: u64 = 86_400;
/// At most one "store unavailable" warning per this many seconds.
const WARN_EVERY_SECS: u64 = 10;

/// One set of limits, for a client, a group or the default. Every field is
/// optional; an empty entry means "no limit" (for a client: exempt from
/// `default`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Sustained requests per second (token-bucket refill rate), e.g. `5` or
    /// `0.5`. Default: no request limit.
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// Requests that may arrive at once after a quiet spell (bucket size).
    /// Default `ceil(requests_per_second)`, at least 1. Needs
    /// `requests_per_second`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Completion tokens per UTC minute. Default: no limit.
    #[serde(default)]
    pub completion_tokens_per_minute: Option<u64>,
    /// Completion tokens per UTC day. Default: no limit.
    #[serde(default)]
    pub completion_tokens_per_day: Option<u64>,
}

/// The `rate_limits` block.
///
/// ```yaml
/// rate_limits:
///   redis: { url: "redis://127.0.0.1:6379/0" }   # absent: limits per replica
///   default: { requests_per_second: 2 }
///   clients:
///     alice: { requests_per_second: 5, burst: 10, completion_tokens_per_day: 1000000 }
///   groups:
///     analysts: { completion_tokens_per_minute: 100000 }
/// ```
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Shared store, so that replicas share limits. Default: none; each
    /// replica then enforces the limits on its own.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// Limits per client name. A client's entry replaces `default`.
    #[serde(default)]
    pub clients: BTreeMap<String, LimitConfig>,
    /// Limits per group, shared by all its members together. A call counts
    /// against each of its client's groups that has an entry.
    #[serde(default)]
    pub groups: BTreeMap<String, LimitConfig>,
    /// Limits for each client that has no entry under `clients` (each such
    /// client gets its own bucket and budgets). Default: none.
    #[serde(default)]
    pub default: Option<LimitConfig>,
}

#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db` (or `rediss://` where the redis
    /// crate is built with TLS). Redacted from `Debug`.
    pub url: String,
    /// Prefix of every key modelgate writes. Default `modelgate:`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Longest wait for Redis per call, connecting included. Default `50ms`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// When Redis fails or times out: `allow` (default: admit the call, warn
    /// and count it in `store_errors`) or `deny` (429, `Retry-After: 1`).
    #[serde(default)]
    pub on_error: OnStoreError,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    #[default]
    Allow,
    Deny,
}

fn default_key_prefix() -> String {
    "modelgate:".into()
}

fn default_timeout() -> Duration {
    Duration::from_millis(50)
}

/// Why a call is refused: maps to 429 with `Retry-After: retry_after_secs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// Seconds until the call would be admitted (at least 1).
    pub retry_after_secs: u64,
    /// The limit that refused it, e.g. `client alice: 5 requests/s` or
    /// `group analysts: 100000 completion tokens/day`.
    pub limit: String,
    pub kind: LimitKind,
}

/// Which sort of limit refused a call (for metrics labels and error codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    CompletionTokens,
    /// Redis failed and `on_error: deny`.
    StoreUnavailable,
}

impl fmt::Display for Limited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Rate limit reached ({}). Retry after {} s.",
            self.limit, self.retry_after_secs
        )
    }
}

impl std::error::Error for Limited {}

/// A validated [`LimitConfig`].
#[derive(Debug, Clone, Copy, PartialEq)]
struct Limit {
    /// (refill per second, bucket size)
    bucket: Option<(f64, f64)>,
    per_minute: Option<u64>,
    per_day: Option<u64>,
}

impl Limit {
    fn from_config(cfg: &LimitConfig, path: &str) -> Result<Self, String> {
        let bucket = match (cfg.requests_per_second, cfg.burst) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(format!("{path}.burst: needs `requests_per_second`"));
            }
            (Some(rate), burst) => {
                if !(rate.is_finite() && rate > 0.0) {
                    return Err(format!(
                        "{path}.requests_per_second: expected a positive number, got {rate}"
                    ));
                }
                let burst = match burst {
                    Some(0) => return Err(format!("{path}.burst: must be at least 1")),
                    Some(b) => f64::from(b),
                    None => rate.ceil().max(1.0),
                };
                Some((rate, burst))
            }
        };
        for (key, value) in [
            (
                "completion_tokens_per_minute",
                cfg.completion_tokens_per_minute,
            ),
            ("completion_tokens_per_day", cfg.completion_tokens_per_day),
        ] {
            if value == Some(0) {
                return Err(format!(
                    "{path}.{key}: must be at least 1 (leave it out for no limit)"
                ));
            }
        }
        Ok(Limit {
            bucket,
            per_minute: cfg.completion_tokens_per_minute,
            per_day: cfg.completion_tokens_per_day,
        })
    }

    fn budgets(&self) -> impl Iterator<Item = (u64, u64)> {
        [(MINUTE_SECS, self.per_minute), (DAY_SECS, self.per_day)]
            .into_iter()
            .filter_map(|(window, budget)| budget.map(|b| (window, b)))
    }

    fn has_budget(&self) -> bool {
        self.per_minute.is_some() || self.per_day.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScopeKind {
    Client,
    Group,
}

impl ScopeKind {
    fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Client => "client",
            ScopeKind::Group => "group",
        }
    }
}

/// One client's or group's limit that applies to a call.
struct Scope<'a> {
    kind: ScopeKind,
    name: &'a str,
    limit: &'a Limit,
    /// The client has no entry and `default` applies.
    by_default: bool,
}

impl Scope<'_> {
    fn label(&self, what: fmt::Arguments<'_>) -> String {
        let default = if self.by_default { " (default)" } else { "" };
        format!("{} {}{default}: {what}", self.kind.as_str(), self.name)
    }

    fn bucket_label(&self, rate: f64) -> String {
        self.label(format_args!("{rate} requests/s"))
    }

    fn budget_label(&self, window: u64, budget: u64) -> String {
        let per = if window == MINUTE_SECS {
            "minute"
        } else {
            "day"
        };
        self.label(format_args!("{budget} completion tokens/{per}"))
    }

    fn limited_by_bucket(&self, rate: f64, wait_ms: u64) -> Limited {
        Limited {
            retry_after_secs: secs_from_ms(wait_ms),
            limit: self.bucket_label(rate),
            kind: LimitKind::Requests,
        }
    }

    fn limited_by_budget(&self, window: u64, budget: u64, wait_ms: u64) -> Limited {
        Limited {
            retry_after_secs: secs_from_ms(wait_ms),
            limit: self.budget_label(window, budget),
            kind: LimitKind::CompletionTokens,
        }
    }
}

fn secs_from_ms(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

/// Milliseconds until a bucket holding `tokens` has one whole token.
fn bucket_wait_ms(tokens: f64, rate: f64) -> u64 {
    ((1.0 - tokens) / rate * 1000.0).ceil().max(1.0) as u64
}

/// Milliseconds from `now_us` to the end of its `window`-second window.
fn window_wait_ms(now_us: u64, window: u64) -> u64 {
    let end_us = (now_us / 1_000_000 / window + 1) * window * 1_000_000;
    (end_us - now_us).div_ceil(1000)
}

/// Wall-clock time (local mode's windows are UTC minutes and days).
#[derive(Clone)]
enum Clock {
    System,
    #[cfg(test)]
    Manual(std::sync::Arc<AtomicU64>),
}

impl Clock {
    fn now_us(&self) -> u64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
            #[cfg(test)]
            Clock::Manual(us) => us.load(Ordering::Relaxed),
        }
    }
}

/// Enforces the configured limits; one per gateway, shared by all calls.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use modelgate::policy::limits::{Limiter, RateLimitsConfig};
/// let cfg: RateLimitsConfig = serde_yaml::from_str(
///     "clients: { alice: { requests_per_second: 1, burst: 2 } }",
/// ).unwrap();
/// let limiter = Limiter::new(&cfg).unwrap();
/// assert!(limiter.admit("alice", &[]).await.is_ok());
/// assert!(limiter.admit("alice", &[]).await.is_ok());
/// let refused = limiter.admit("alice", &[]).await.unwrap_err();
/// assert_eq!(refused.retry_after_secs, 1);
/// assert_eq!(refused.limit, "client alice: 1 requests/s");
/// # });
/// ```
pub struct Limiter {
    clients: HashMap<String, Limit>,
    groups: HashMap<String, Limit>,
    default: Option<Limit>,
    store: Store,
    store_errors: AtomicU64,
    last_warning_secs: AtomicU64,
}

enum Store {
    Local {
        state: Mutex<LocalState>,
        clock: Clock,
    },
    Redis(Box<RedisStore>),
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let store = match &self.store {
            Store::Local { .. } => "local",
            Store::Redis(_) => "redis",
        };
        f.debug_struct("Limiter")
            .field("store", &store)
            .field("clients", &self.clients.len())
            .field("groups", &self.groups.len())
            .field("default", &self.default)
            .finish()
    }
}

impl Limiter {
    /// Validates the config. Errors name the key path (`rate_limits.…`).
    /// Does not connect to Redis: the connection is made on first use, from
    /// within the runtime that serves calls.
    pub fn new(cfg: &RateLimitsConfig) -> Result<Self, String> {
        Self::with_clock(cfg, Clock::System)
    }

    fn with_clock(cfg: &RateLimitsConfig, clock: Clock) -> Result<Self, String> {
        let validate = |section: &str, entries: &BTreeMap<String, LimitConfig>| {
            entries
                .iter()
                .map(|(name, limit)| {
                    let path = format!("rate_limits.{section}.{name}");
                    Ok((name.clone(), Limit::from_config(limit, &path)?))
                })
                .collect::<Result<HashMap<_, _>, String>>()
        };
        let clients = validate("clients", &cfg.clients)?;
        let groups = validate("groups", &cfg.groups)?;
        let default = cfg
            .default
            .as_ref()
            .map(|d| Limit::from_config(d, "rate_limits.default"))
            .transpose()?;
        let store = match &cfg.redis {
            Some(redis) => Store::Redis(Box::new(RedisStore::new(redis)?)),
            None => {
                let now = clock.now_us();
                let counters = |limits: &HashMap<String, Limit>| {
                    limits
                        .iter()
                        .map(|(name, limit)| (name.clone(), Counters::new(limit, now)))
                        .collect()
                };
                let state = LocalState {
                    clients: counters(&clients),
                    groups: counters(&groups),
                };
                Store::Local {
                    state: Mutex::new(state),
                    clock,
                }
            }
        };
        Ok(Limiter {
            clients,
            groups,
            default,
            store,
            store_errors: AtomicU64::new(0),
            last_warning_secs: AtomicU64::new(0),
        })
    }

    /// Whether any token budget is configured (calls then have their
    /// completion tokens counted).
    pub fn has_budgets(&self) -> bool {
        self.clients
            .values()
            .chain(self.groups.values())
            .chain(self.default.iter())
            .any(Limit::has_budget)
    }

    /// Before forwarding: takes one request token from every bucket that
    /// applies (the client's own and each of its groups'), and checks that
    /// none of their token budgets is already spent. On refusal nothing is
    /// taken; the error names the limit with the longest wait.
    pub async fn admit(&self, client: &str, groups: &[String]) -> Result<(), Limited> {
        let scopes = self.scopes(client, groups);
        if scopes.is_empty() {
            return Ok(());
        }
        match &self.store {
            Store::Local { state, clock } => {
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                state.admit(&scopes, clock.now_us())
            }
            Store::Redis(redis) => match redis.admit(&scopes).await {
                Ok(result) => result,
                Err(e) => self.store_failed(redis, "admit", &e),
            },
        }
    }

    /// After the response: charges `completion_tokens` (from `usage`, the
    /// final stream chunk's for streams) to the client's and its groups'
    /// budgets in the current windows.
    pub async fn charge(&self, client: &str, groups: &[String], completion_tokens: u64) {
        if completion_tokens == 0 {
            return;
        }
        let mut scopes = self.scopes(client, groups);
        scopes.retain(|s| s.limit.has_budget());
        if scopes.is_empty() {
            return;
        }
        match &self.store {
            Store::Local { state, clock } => {
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                state.charge(&scopes, clock.now_us(), completion_tokens);
            }
            Store::Redis(redis) => {
                if let Err(e) = redis.charge(&scopes, completion_tokens).await {
                    // The tokens are lost to the budget; nobody waits on it.
                    let _ = self.store_failed(redis, "charge", &e);
                }
            }
        }
    }

    /// Redis calls that failed or timed out since start (admits and charges).
    pub fn store_errors(&self) -> u64 {
        self.store_errors.load(Ordering::Relaxed)
    }

    /// The limits that apply to a call: the client's own entry or the
    /// default, then each distinct group that has an entry.
    fn scopes<'a>(&'a self, client: &'a str, groups: &'a [String]) -> Vec<Scope<'a>> {
        let mut scopes = Vec::with_capacity(1 + groups.len());
        match self.clients.get(client) {
            Some(limit) => scopes.push(Scope {
                kind: ScopeKind::Client,
                name: client,
                limit,
                by_default: false,
            }),
            None => {
                if let Some(limit) = &self.default {
                    scopes.push(Scope {
                        kind: ScopeKind::Client,
                        name: client,
                        limit,
                        by_default: true,
                    });
                }
            }
        }
        for (i, group) in groups.iter().enumerate() {
            if groups[..i].contains(group) {
                continue;
            }
            if let Some(limit) = self.groups.get(group) {
                scopes.push(Scope {
                    kind: ScopeKind::Group,
                    name: group,
                    limit,
                    by_default: false,
                });
            }
        }
        // Entries with no limit at all (an exemption from `default`) cost nothing.
        scopes.retain(|s| s.limit.bucket.is_some() || s.limit.has_budget());
        scopes
    }

    fn store_failed(&self, redis: &RedisStore, what: &str, err: &str) -> Result<(), Limited> {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
        let now = Clock::System.now_us() / 1_000_000;
        let last = self.last_warning_secs.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_EVERY_SECS
            && self
                .last_warning_secs
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn!(
                "rate-limit store (Redis) failed on {what}: {err}; on_error: {:?} \
                 ({} failures so far; next warning in {WARN_EVERY_SECS}s at the earliest)",
                redis.on_error,
                self.store_errors()
            );
        }
        match redis.on_error {
            OnStoreError::Allow => Ok(()),
            OnStoreError::Deny => Err(Limited {
                retry_after_secs: 1,
                limit: "rate-limit store unavailable".into(),
                kind: LimitKind::StoreUnavailable,
            }),
        }
    }
}

/// In-process counters (no Redis): keyed by configured names, plus the names
/// of authenticated clients that `default` applies to.
struct LocalState {
    clients: HashMap<String, Counters>,
    groups: HashMap<String, Counters>,
}

struct Counters {
    tokens: f64,
    refilled_at_us: u64,
    minute: Window,
    day: Window,
}

#[derive(Default)]
struct Window {
    id: u64,
    used: u64,
}

impl Window {
    fn used(&self, id: u64) -> u64 {
        if self.id == id {
            self.used
        } else {
            0
        }
    }

    fn add(&mut self, id: u64, n: u64) {
        if self.id != id {
            *self = Window { id, used: 0 };
        }
        self.used = self.used.saturating_add(n);
    }
}

impl Counters {
    fn new(limit: &Limit, now_us: u64) -> Self {
        Counters {
            tokens: limit.bucket.map_or(0.0, |(_, burst)| burst),
            refilled_at_us: now_us,
            minute: Window::default(),
            day: Window::default(),
        }
    }

    fn window(&mut self, window: u64) -> &mut Window {
        if window == MINUTE_SECS {
            &mut self.minute
        } else {
            &mut self.day
        }
    }
}

impl LocalState {
    fn counters(&mut self, scope: &Scope<'_>, now_us: u64) -> &mut Counters {
        let map = match scope.kind {
            ScopeKind::Client => &mut self.clients,
            ScopeKind::Group => &mut self.groups,
        };
        if !map.contains_key(scope.name) {
            // Only clients under `default` get here, once each.
            map.insert(scope.name.to_string(), Counters::new(scope.limit, now_us));
        }
        map.get_mut(scope.name).expect("inserted above")
    }

    fn admit(&mut self, scopes: &[Scope<'_>], now_us: u64) -> Result<(), Limited> {
        let now_secs = now_us / 1_000_000;
        let mut worst: Option<(u64, Limited)> = None;
        let mut consider = |wait_ms: u64, limited: &dyn Fn() -> Limited| {
            if worst.as_ref().is_none_or(|(w, _)| wait_ms > *w) {
                worst = Some((wait_ms, limited()));
            }
        };
        for scope in scopes {
            let counters = self.counters(scope, now_us);
            if let Some((rate, burst)) = scope.limit.bucket {
                // A clock that steps back refills nothing.
                let elapsed = now_us.saturating_sub(counters.refilled_at_us) as f64 / 1e6;
                counters.tokens = (counters.tokens + elapsed * rate).min(burst);
                counters.refilled_at_us = counters.refilled_at_us.max(now_us);
                if counters.tokens < 1.0 {
                    let wait = bucket_wait_ms(counters.tokens, rate);
                    consider(wait, &|| scope.limited_by_bucket(rate, wait));
                }
            }
            for (window, budget) in scope.limit.budgets() {
                if counters.window(window).used(now_secs / window) >= budget {
                    let wait = window_wait_ms(now_us, window);
                    consider(wait, &|| scope.limited_by_budget(window, budget, wait));
                }
            }
        }
        if let Some((_, limited)) = worst {
            return Err(limited);
        }
        for scope in scopes {
            if scope.limit.bucket.is_some() {
                self.counters(scope, now_us).tokens -= 1.0;
            }
        }
        Ok(())
    }

    fn charge(&mut self, scopes: &[Scope<'_>], now_us: u64, tokens: u64) {
        let now_secs = now_us / 1_000_000;
        for scope in scopes {
            let counters = self.counters(scope, now_us);
            for (window, _) in scope.limit.budgets() {
                counters.window(window).add(now_secs / window, tokens);
            }
        }
    }
}

/// Token buckets for every applicable scope, all or nothing, plus the budget
/// checks, in one round trip. Buckets are hashes {t: tokens, ts: µs of the
/// last refill}; budgets are hashes {w: window number, n: tokens used}, so
/// every key the script touches is declared in KEYS.
///
/// KEYS: bucket keys, then budget keys.
/// ARGV[1]: number of buckets `nb`; bucket i: ARGV[2i] rate, ARGV[2i+1]
/// burst; budget j: ARGV[2nb+2j] window seconds, ARGV[2nb+2j+1] budget.
/// Returns {0, 0} when admitted, else {index of the limit with the longest
/// wait (1-based over KEYS), wait in ms}.
const ADMIT_LUA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_us = now_s * 1000000 + tonumber(t[2])
local nb = tonumber(ARGV[1])
local worst, worst_ms = 0, 0
local tokens = {}
for i = 1, nb do
  local rate = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local st = redis.call('HMGET', KEYS[i], 't', 'ts')
  local tk = burst
  if st[1] and st[2] then
    local elapsed = math.max(0, now_us - tonumber(st[2])) / 1000000
    tk = math.min(burst, tonumber(st[1]) + elapsed * rate)
  end
  tokens[i] = tk
  if tk < 1 then
    local ms = math.max(1, math.ceil((1 - tk) / rate * 1000))
    if ms > worst_ms then worst, worst_ms = i, ms end
  end
end
for k = nb + 1, #KEYS do
  local j = k - nb
  local len = tonumber(ARGV[2 * nb + 2 * j])
  local budget = tonumber(ARGV[2 * nb + 2 * j + 1])
  local window = math.floor(now_s / len)
  local st = redis.call('HMGET', KEYS[k], 'w', 'n')
  local used = 0
  if st[1] and tonumber(st[1]) == window then used = tonumber(st[2] or '0') end
  if used >= budget then
    local ms = math.ceil(((window + 1) * len * 1000000 - now_us) / 1000)
    if ms > worst_ms then worst, worst_ms = k, ms end
  end
end
if worst > 0 then return {worst, worst_ms} end
for i = 1, nb do
  local rate = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  redis.call('HSET', KEYS[i], 't', string.format('%.17g', tokens[i] - 1),
    'ts', string.format('%.0f', now_us))
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst / rate * 1000) + 1000)
end
return {0, 0}
"#;

/// Adds ARGV[1] tokens to each budget key's current window.
/// KEYS: budget keys; ARGV[1 + j]: window seconds of KEYS[j].
const CHARGE_LUA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local now_s = tonumber(redis.call('TIME')[1])
for j = 1, #KEYS do
  local len = tonumber(ARGV[1 + j])
  local window = math.floor(now_s / len)
  local w = redis.call('HGET', KEYS[j], 'w')
  if w and tonumber(w) == window then
    redis.call('HINCRBY', KEYS[j], 'n', ARGV[1])
  else
    redis.call('HSET', KEYS[j], 'w', string.format('%d', window), 'n', ARGV[1])
  end
  redis.call('EXPIREAT', KEYS[j], (window + 1) * len + 60)
end
return 0
"#;

/// Limits shared through Redis. Not Redis Cluster: one call's keys (client
/// and groups) live in different hash slots.
struct RedisStore {
    client: redis::Client,
    /// Made lazily so that its driver task runs in the serving runtime.
    conn: tokio::sync::OnceCell<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    on_error: OnStoreError,
    admit_script: redis::Script,
    charge_script: redis::Script,
}

impl RedisStore {
    fn new(cfg: &RedisConfig) -> Result<Self, String> {
        if cfg.timeout.is_zero() {
            return Err("rate_limits.redis.timeout: must be more than 0".into());
        }
        let client = redis::Client::open(cfg.url.as_str()).map_err(|e| {
            format!(
                "rate_limits.redis.url: expected redis://host:port/db, got {}: {e}",
                redact_url(&cfg.url)
            )
        })?;
        Ok(RedisStore {
            client,
            conn: tokio::sync::OnceCell::new(),
            prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout,
            on_error: cfg.on_error,
            admit_script: redis::Script::new(ADMIT_LUA),
            charge_script: redis::Script::new(CHARGE_LUA),
        })
    }

    async fn conn(&self) -> redis::RedisResult<ConnectionManager> {
        let timeout = self.timeout;
        self.conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeout))
                    // A connect may take longer than one call's timeout; later
                    // calls keep driving it.
                    .set_connection_timeout(Some(timeout.max(Duration::from_secs(1))))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(1));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await
            .cloned()
    }

    fn key(&self, what: &str, scope: &Scope<'_>) -> String {
        format!(
            "{}{what}:{}:{}",
            self.prefix,
            scope.kind.as_str(),
            scope.name
        )
    }

    fn budget_key(&self, window: u64, scope: &Scope<'_>) -> String {
        let what = if window == MINUTE_SECS {
            "tok:min"
        } else {
            "tok:day"
        };
        self.key(what, scope)
    }

    /// Outer `Err`: the store failed (message); inner: the call is refused.
    async fn admit(&self, scopes: &[Scope<'_>]) -> Result<Result<(), Limited>, String> {
        // Index (1-based, as the script answers) → what refused.
        let mut refusals: Vec<(&Scope<'_>, Option<(u64, u64)>)> = Vec::new();
        let mut invocation = self.admit_script.prepare_invoke();
        let buckets = scopes.iter().filter_map(|s| s.limit.bucket.map(|b| (s, b)));
        invocation.arg(buckets.clone().count());
        for (scope, (rate, burst)) in buckets {
            invocation.key(self.key("tb", scope)).arg(rate).arg(burst);
            refusals.push((scope, None));
        }
        for scope in scopes {
            for (window, budget) in scope.limit.budgets() {
                invocation
                    .key(self.budget_key(window, scope))
                    .arg(window)
                    .arg(budget);
                refusals.push((scope, Some((window, budget))));
            }
        }
        let reply: Vec<u64> = self.run(&invocation).await?;
        let (index, wait_ms) = match reply[..] {
            [0, _] => return Ok(Ok(())),
            [i, ms] => (i as usize, ms),
            _ => return Err(format!("unexpected reply from the admit script: {reply:?}")),
        };
        let Some((scope, budget)) = refusals.get(index.wrapping_sub(1)) else {
            return Err(format!(
                "admit script named limit {index} of {}",
                refusals.len()
            ));
        };
        Ok(Err(match budget {
            Some((window, budget)) => scope.limited_by_budget(*window, *budget, wait_ms),
            None => {
                let (rate, _) = scope.limit.bucket.expect("bucket scopes come first");
                scope.limited_by_bucket(rate, wait_ms)
            }
        }))
    }

    async fn charge(&self, scopes: &[Scope<'_>], tokens: u64) -> Result<(), String> {
        let mut invocation = self.charge_script.prepare_invoke();
        invocation.arg(tokens);
        for scope in scopes {
            for (window, _) in scope.limit.budgets() {
                invocation.key(self.budget_key(window, scope)).arg(window);
            }
        }
        let _: i64 = self.run(&invocation).await?;
        Ok(())
    }

    /// Runs a script (EVALSHA, loading it on NOSCRIPT) within the timeout.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, String> {
        let call = async {
            let mut conn = self.conn().await?;
            invocation.invoke_async::<T>(&mut conn).await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn config(yaml: &str) -> RateLimitsConfig {
        serde_yaml::from_str(yaml).expect("valid rate_limits yaml")
    }

    /// 2024-01-01T00:00:00Z, plus `offset_secs`.
    fn manual_clock(offset_secs: u64) -> (Clock, Arc<AtomicU64>) {
        let us = Arc::new(AtomicU64::new((1_704_067_200 + offset_secs) * 1_000_000));
        (Clock::Manual(us.clone()), us)
    }

    fn advance(clock: &AtomicU64, ms: u64) {
        clock.fetch_add(ms * 1000, Ordering::Relaxed);
    }

    fn local(yaml: &str, offset_secs: u64) -> (Limiter, Arc<AtomicU64>) {
        let (clock, us) = manual_clock(offset_secs);
        (Limiter::with_clock(&config(yaml), clock).unwrap(), us)
    }

    fn groups(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn config_defaults_and_errors_name_the_key() {
        let cfg = config("redis: { url: 'redis://u:pw@127.0.0.1:1/0' }");
        let redis = cfg.redis.as_ref().unwrap();
        assert_eq!(redis.key_prefix, "modelgate:");
        assert_eq!(redis.timeout, Duration::from_millis(50));
        assert_eq!(redis.on_error, OnStoreError::Allow);
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("pw"), "{debug}");
        assert!(debug.contains("redis://***@127.0.0.1:1/0"), "{debug}");

        assert!(serde_yaml::from_str::<RateLimitsConfig>("clients: { a: { rps: 1 } }").is_err());
        assert!(
            serde_yaml::from_str::<RateLimitsConfig>("redis: { url: x, on_error: maybe }").is_err()
        );

        let err = |yaml: &str| Limiter::new(&config(yaml)).unwrap_err();
        assert_eq!(
            err("clients: { a: { burst: 3 } }"),
            "rate_limits.clients.a.burst: needs `requests_per_second`"
        );
        assert!(err("groups: { g: { requests_per_second: 0 } }")
            .starts_with("rate_limits.groups.g.requests_per_second:"));
        assert!(err("default: { requests_per_second: 1, burst: 0 }")
            .starts_with("rate_limits.default.burst:"));
        assert!(err("clients: { a: { completion_tokens_per_day: 0 } }")
            .starts_with("rate_limits.clients.a.completion_tokens_per_day:"));
        assert!(err("redis: { url: 'not a url' }").starts_with("rate_limits.redis.url:"));
        assert!(err("redis: { url: 'redis://127.0.0.1/', timeout: 0s }")
            .starts_with("rate_limits.redis.timeout:"));

        let limit = |yaml: &str| Limit::from_config(&serde_yaml::from_str(yaml).unwrap(), "x");
        assert_eq!(
            limit("requests_per_second: 2.5").unwrap().bucket,
            Some((2.5, 3.0))
        );
        assert_eq!(
            limit("requests_per_second: 0.2").unwrap().bucket,
            Some((0.2, 1.0))
        );
    }

    #[tokio::test]
    async fn bucket_allows_burst_then_refuses_then_refills() {
        let (limiter, clock) = local(
            "clients: { alice: { requests_per_second: 2, burst: 4 } }",
            0,
        );
        for _ in 0..4 {
            limiter.admit("alice", &[]).await.unwrap();
        }
        let refused = limiter.admit("alice", &[]).await.unwrap_err();
        assert_eq!(refused.limit, "client alice: 2 requests/s");
        assert_eq!(refused.kind, LimitKind::Requests);
        assert_eq!(refused.retry_after_secs, 1);

        advance(&clock, 499);
        assert!(limiter.admit("alice", &[]).await.is_err());
        advance(&clock, 1);
        limiter.admit("alice", &[]).await.unwrap();
        assert!(limiter.admit("alice", &[]).await.is_err());

        // A long pause refills only up to the burst.
        advance(&clock, 60_000);
        for _ in 0..4 {
            limiter.admit("alice", &[]).await.unwrap();
        }
        assert!(limiter.admit("alice", &[]).await.is_err());
        // Clients and groups without entries are not limited.
        for _ in 0..100 {
            limiter.admit("bob", &groups(&["nobody"])).await.unwrap();
        }
    }

    #[tokio::test]
    async fn slow_rate_gives_long_retry_after() {
        let (limiter, _) = local("clients: { a: { requests_per_second: 0.1 } }", 0);
        limiter.admit("a", &[]).await.unwrap();
        let refused = limiter.admit("a", &[]).await.unwrap_err();
        assert_eq!(refused.retry_after_secs, 10);
    }

    #[tokio::test]
    async fn minute_budget_refuses_until_the_window_ends() {
        // 30 s into a minute.
        let (limiter, clock) = local("clients: { a: { completion_tokens_per_minute: 100 } }", 30);
        limiter.admit("a", &[]).await.unwrap();
        limiter.charge("a", &[], 60).await;
        limiter.admit("a", &[]).await.unwrap();
        // The call that crosses the budget was admitted; it overshoots.
        limiter.charge("a", &[], 60).await;
        let refused = limiter.admit("a", &[]).await.unwrap_err();
        assert_eq!(refused.limit, "client a: 100 completion tokens/minute");
        assert_eq!(refused.kind, LimitKind::CompletionTokens);
        assert_eq!(refused.retry_after_secs, 30);
        advance(&clock, 29_500);
        assert_eq!(
            limiter.admit("a", &[]).await.unwrap_err().retry_after_secs,
            1
        );
        advance(&clock, 500);
        limiter.admit("a", &[]).await.unwrap();
    }

    #[tokio::test]
    async fn day_budget_uses_utc_days() {
        // 23:00 UTC.
        let (limiter, clock) = local("default: { completion_tokens_per_day: 10 }", 23 * 3600);
        limiter.charge("carol", &[], 10).await;
        let refused = limiter.admit("carol", &[]).await.unwrap_err();
        assert_eq!(
            refused.limit,
            "client carol (default): 10 completion tokens/day"
        );
        assert_eq!(refused.retry_after_secs, 3600);
        // Each defaulted client has its own budget.
        limiter.admit("dave", &[]).await.unwrap();
        advance(&clock, 3_600_000);
        limiter.admit("carol", &[]).await.unwrap();
    }

    #[tokio::test]
    async fn group_and_client_limits_both_apply() {
        let (limiter, clock) = local(
            "clients: { alice: { requests_per_second: 10, burst: 10 }, exempt: {} }\n\
             default: { requests_per_second: 1, burst: 1 }\n\
             groups: { analysts: { requests_per_second: 1, burst: 3, completion_tokens_per_minute: 50 } }",
            0,
        );
        let analysts = groups(&["analysts", "analysts", "other"]);
        // The group's bucket (3) runs out before alice's (10); bob shares it.
        limiter.admit("alice", &analysts).await.unwrap();
        limiter.admit("bob", &analysts).await.unwrap();
        limiter.admit("alice", &analysts).await.unwrap();
        let refused = limiter.admit("alice", &analysts).await.unwrap_err();
        assert_eq!(refused.limit, "group analysts: 1 requests/s");
        // bob's default bucket (1) is spent too; the group's wait is the same.
        assert!(limiter.admit("bob", &analysts).await.is_err());
        // Refusals took no token from alice: she still has 8 without the group.
        for _ in 0..8 {
            limiter.admit("alice", &[]).await.unwrap();
        }
        assert!(limiter.admit("alice", &[]).await.is_err());
        // An empty client entry exempts from `default`.
        for _ in 0..5 {
            limiter.admit("exempt", &[]).await.unwrap();
        }

        // The group's budget is charged by every member.
        advance(&clock, 10_000);
        limiter.charge("alice", &analysts, 30).await;
        limiter.charge("bob", &analysts, 30).await;
        let refused = limiter.admit("alice", &analysts).await.unwrap_err();
        assert_eq!(refused.limit, "group analysts: 50 completion tokens/minute");
        assert_eq!(refused.retry_after_secs, 50);
        limiter.admit("alice", &[]).await.unwrap();
    }

    #[tokio::test]
    async fn longest_wait_is_reported() {
        let (limiter, _) = local(
            "clients: { a: { requests_per_second: 1, completion_tokens_per_day: 5 } }",
            0,
        );
        limiter.admit("a", &[]).await.unwrap();
        limiter.charge("a", &[], 5).await;
        let refused = limiter.admit("a", &[]).await.unwrap_err();
        assert_eq!(refused.limit, "client a: 5 completion tokens/day");
        assert_eq!(refused.retry_after_secs, DAY_SECS);
    }

    mod redis_store {
        use super::*;
        use crate::testkit::{free_port, RedisServer};
        use std::time::Instant;

        /// A replica: generous timeout, since the test machine may be busy.
        fn replica(url: &str, limits: &str) -> Limiter {
            let yaml = format!("redis: {{ url: '{url}', timeout: 5s }}\n{limits}");
            Limiter::new(&config(&yaml)).unwrap()
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn replicas_share_one_bucket() {
            let redis = RedisServer::start();
            // A slow refill (1 token/s), so that timing is not what decides
            // the result: the margins below are about a second, not ms.
            let limits = "clients: { alice: { requests_per_second: 1, burst: 5 }, warm: { requests_per_second: 100 } }";
            let a = replica(&redis.url(), limits);
            let b = replica(&redis.url(), limits);
            // Connect both first, so the 10 admits below are quick.
            a.admit("warm", &[]).await.unwrap();
            b.admit("warm", &[]).await.unwrap();

            let mut admitted = 0;
            let mut refusals = Vec::new();
            let started = Instant::now();
            for i in 0..10 {
                let replica = if i % 2 == 0 { &a } else { &b };
                match replica.admit("alice", &[]).await {
                    Ok(()) => admitted += 1,
                    Err(limited) => refusals.push(limited),
                }
            }
            // Exactly 5 unless the machine is so slow that the 10 calls took
            // over 1 s, in which case refills may add one per second.
            let refilled = started.elapsed().as_secs_f64() as usize;
            assert!(
                (5..=5 + refilled).contains(&admitted),
                "{admitted} admitted; {refusals:?}"
            );
            for limited in &refusals {
                assert_eq!(limited.limit, "client alice: 1 requests/s");
                assert_eq!(limited.retry_after_secs, 1);
            }
            assert_eq!(a.store_errors() + b.store_errors(), 0);

            // Once a token is back (after about 1 s) either replica can take
            // it, and then it is gone for the other: the next token is ~1 s
            // away, far more than the time between the two calls.
            let deadline = Instant::now() + Duration::from_secs(3);
            while b.admit("alice", &[]).await.is_err() {
                assert!(Instant::now() < deadline, "no token came back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // A bucket cannot refill early, however fast the machine.
            assert!(
                started.elapsed() >= Duration::from_millis(900),
                "a token came back after {:?}",
                started.elapsed()
            );
            assert!(a.admit("alice", &[]).await.is_err());
            assert_eq!(a.store_errors() + b.store_errors(), 0);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn replicas_share_budgets_and_group_buckets() {
            let redis = RedisServer::start();
            let limits = "groups: { analysts: { requests_per_second: 0.5, burst: 2, completion_tokens_per_minute: 100000000, completion_tokens_per_day: 100 } }\n\
                          clients: { alice: { requests_per_second: 100 } }";
            let a = replica(&redis.url(), limits);
            let b = replica(&redis.url(), limits);
            let analysts = groups(&["analysts"]);

            a.admit("alice", &analysts).await.unwrap();
            a.charge("alice", &analysts, 60).await;
            b.admit("bob", &analysts).await.unwrap();
            b.charge("bob", &analysts, 50).await;
            for replica in [&a, &b] {
                let refused = replica.admit("alice", &analysts).await.unwrap_err();
                assert_eq!(refused.limit, "group analysts: 100 completion tokens/day");
                assert_eq!(refused.kind, LimitKind::CompletionTokens);
                assert!((1..=DAY_SECS).contains(&refused.retry_after_secs));
            }
            // alice's own bucket took nothing on refusal, and alice without the
            // group is still admitted.
            a.admit("alice", &[]).await.unwrap();
            assert_eq!(a.store_errors() + b.store_errors(), 0);

            // The group bucket (burst 2) is spent: a budget-free group check.
            let c = replica(
                &redis.url(),
                "groups: { analysts: { requests_per_second: 0.5, burst: 2 } }",
            );
            let refused = c.admit("carol", &analysts).await.unwrap_err();
            assert_eq!(refused.limit, "group analysts: 0.5 requests/s");
            assert!((1..=2).contains(&refused.retry_after_secs), "{refused:?}");
        }

        #[tokio::test]
        async fn refusal_takes_no_token() {
            let redis = RedisServer::start();
            let limiter = replica(
                &redis.url(),
                "clients: { alice: { requests_per_second: 0.01, burst: 2 } }\n\
                 groups: { g: { requests_per_second: 0.01, burst: 1 } }",
            );
            let g = groups(&["g"]);
            limiter.admit("alice", &g).await.unwrap();
            let refused = limiter.admit("alice", &g).await.unwrap_err();
            assert_eq!(refused.limit, "group g: 0.01 requests/s");
            assert_eq!(refused.retry_after_secs, 100);
            // The refusal left alice's second token in her bucket.
            limiter.admit("alice", &[]).await.unwrap();
            let refused = limiter.admit("alice", &[]).await.unwrap_err();
            assert_eq!(refused.limit, "client alice: 0.01 requests/s");
        }

        #[tokio::test]
        async fn key_prefix_separates_gateways() {
            let redis = RedisServer::start();
            // Slow enough (one token per 100 s) that the refusal below and
            // the TTL range cannot depend on how fast this machine is.
            let limits = "clients: { alice: { requests_per_second: 0.01, burst: 1 } }";
            let one = replica(&redis.url(), limits);
            let other = Limiter::new(&config(&format!(
                "redis: {{ url: '{}', key_prefix: 'other:', timeout: 5s }}\n{limits}",
                redis.url()
            )))
            .unwrap();
            one.admit("alice", &[]).await.unwrap();
            other.admit("alice", &[]).await.unwrap();
            assert!(one.admit("alice", &[]).await.is_err());

            let client = redis::Client::open(redis.url()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let mut keys: Vec<String> = redis::cmd("KEYS")
                .arg("*")
                .query_async(&mut conn)
                .await
                .unwrap();
            keys.sort();
            assert_eq!(keys, ["modelgate:tb:client:alice", "other:tb:client:alice"]);
            // Idle buckets expire once they would be full again: burst / rate
            // = 100 s, plus 1 s. The lower end leaves 11 s for a slow machine
            // and still rules out a short fixed TTL or none (-1).
            let ttl_ms: i64 = redis::cmd("PTTL")
                .arg("modelgate:tb:client:alice")
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!((90_000..=101_000).contains(&ttl_ms), "{ttl_ms}");
        }

        #[tokio::test]
        async fn store_down_follows_on_error() {
            let url = format!("redis://127.0.0.1:{}/0", free_port());
            let limits = "clients: { alice: { requests_per_second: 1, burst: 1, completion_tokens_per_day: 5 } }";
            let allow = Limiter::new(&config(&format!(
                "redis: {{ url: '{url}', on_error: allow }}\n{limits}"
            )))
            .unwrap();
            for _ in 0..3 {
                allow.admit("alice", &[]).await.unwrap();
            }
            allow.charge("alice", &[], 10).await;
            assert_eq!(allow.store_errors(), 4);

            let deny = Limiter::new(&config(&format!(
                "redis: {{ url: '{url}', on_error: deny }}\n{limits}"
            )))
            .unwrap();
            let refused = deny.admit("alice", &[]).await.unwrap_err();
            assert_eq!(refused.limit, "rate-limit store unavailable");
            assert_eq!(refused.kind, LimitKind::StoreUnavailable);
            assert_eq!(refused.retry_after_secs, 1);
            assert_eq!(deny.store_errors(), 1);
            // Unlimited clients never touch the store.
            deny.admit("bob", &[]).await.unwrap();
            assert_eq!(deny.store_errors(), 1);
        }

        #[tokio::test]
        async fn recovers_when_the_store_comes_back() {
            let port = free_port();
            let limiter = Limiter::new(&config(&format!(
                "redis: {{ url: 'redis://127.0.0.1:{port}/0', timeout: 200ms, on_error: deny }}\n\
                 clients: {{ alice: {{ requests_per_second: 1000 }} }}"
            )))
            .unwrap();
            assert!(limiter.admit("alice", &[]).await.is_err());
            let _redis = RedisServer::start_on(port, &[]);
            let deadline = Instant::now() + Duration::from_secs(15);
            while limiter.admit("alice", &[]).await.is_err() {
                assert!(Instant::now() < deadline, "never reconnected");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        #[tokio::test]
        async fn silent_store_times_out() {
            // Accepts connections and never answers.
            let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = silent.local_addr().unwrap().port();
            let held = tokio::spawn(async move {
                let mut conns = Vec::new();
                while let Ok((conn, _)) = silent.accept().await {
                    conns.push(conn);
                }
            });
            let limiter = Limiter::new(&config(&format!(
                "redis: {{ url: 'redis://127.0.0.1:{port}/0', timeout: 100ms, on_error: deny }}\n\
                 clients: {{ alice: {{ requests_per_second: 1 }} }}"
            )))
            .unwrap();
            let started = Instant::now();
            let refused = limiter.admit("alice", &[]).await.unwrap_err();
            assert_eq!(refused.kind, LimitKind::StoreUnavailable);
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
            assert_eq!(limiter.store_errors(), 1);
            held.abort();
        }

        #[tokio::test]
        async fn script_reloads_after_script_flush() {
            let redis = RedisServer::start();
            let limiter = replica(&redis.url(), "clients: { a: { requests_per_second: 100 } }");
            limiter.admit("a", &[]).await.unwrap();
            let client = redis::Client::open(redis.url()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let _: () = redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async(&mut conn)
                .await
                .unwrap();
            limiter.admit("a", &[]).await.unwrap();
            assert_eq!(limiter.store_errors(), 0);
        }
    }
}
