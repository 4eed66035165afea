//! Webhook notifications of new approval requests: a Slack-compatible JSON
//! payload with a link to the console, posted from a background task with
//! retries, never blocking a call.
//!
//! Owns the `webhook` config block, the payload ([`slack_payload`]), the
//! queue, the sender task and its retry policy. Not for: deciding which
//! requests need approval, building the [`Notice`] (the caller does, from its
//! approval request), or metrics registration (the caller reads
//! [`Notifier::sent`] and friends).
//!
//! Semantics worth knowing:
//! - [`Notifier::notify`] only puts the notice on a bounded queue; when the
//!   queue is full the notice is dropped and counted, never waited for.
//! - Up to [`MAX_IN_FLIGHT`] notices are delivered at once, each by its own
//!   task, so one notice retrying against a slow endpoint holds up only its
//!   own slot. Notices may therefore arrive out of order.
//! - Network errors, timeouts, 429 and 5xx are retried with exponential
//!   backoff (`backoff`, doubled per retry, at most [`MAX_DELAY`]); a numeric
//!   `Retry-After` on 429/503 lengthens the wait, up to the same cap. Any other
//!   answer that is not 2xx (4xx, 3xx: redirects are not followed) is final.
//! - The webhook URL is a secret (a Slack incoming-webhook URL is its own
//!   credential): logs, errors and `Debug` show its scheme and host only.
//! - Shutdown: when every [`Notifier`] handle is dropped the sender task
//!   delivers what is still queued and ends.

use serde::Deserialize;
use serde_json::{json, Value};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::Semaphore;

/// Config keys are reported under this path.
const KEY_PATH: &str = "approval.webhook";
/// Notices being delivered (or waiting to retry) at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// Longest wait between two attempts, `Retry-After` included.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// Largest `max_attempts` accepted.
const MAX_ATTEMPTS: u32 = 20;
/// Largest `queue` accepted (tokio's channel panics far above this; a queue
/// this long would already be hours of notices).
const MAX_QUEUE: usize = 1_000_000;
/// Longest `timeout` accepted: a slot is held for up to this long per attempt.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// At most one "queue full" warning per this many seconds.
const WARN_EVERY_SECS: u64 = 10;
/// How much of an error answer's body goes into the log (Slack answers
/// `invalid_payload`, `no_service`, … there).
const MAX_ERROR_BODY_CHARS: usize = 200;

/// Slack limits (https://api.slack.com/reference/block-kit/blocks): a
/// section's text and a button URL at most 3000 characters, a field at most
/// 2000. Ours stay well inside.
const MAX_SUMMARY_CHARS: usize = 500;
const MAX_REASON_CHARS: usize = 1000;
/// Each requester, route, model, rule … value.
const MAX_VALUE_CHARS: usize = 100;
const MAX_BUTTON_URL_CHARS: usize = 3000;

/// The `webhook` block of the approval config.
///
/// ```yaml
/// webhook:
///   url: ${APPROVAL_WEBHOOK_URL}   # e.g. a Slack incoming-webhook URL
///   timeout: 5s
///   max_attempts: 5
///   backoff: 1s
///   queue: 1000
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Required. `http://` or `https://` URL the JSON payload is POSTed to.
    /// Treated as a secret: only its scheme and host are ever printed (also
    /// by `Debug`).
    pub url: String,
    /// Longest wait for one attempt, answer included. Default `5s`, at most
    /// `5m`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per notice, the first included (`1`: no retry). Default 5,
    /// 1 to 20.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry, doubled for each further one, at most
    /// `60s`. Default `1s`.
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub backoff: Duration,
    /// Notices waiting to be sent (beyond the 8 being sent); when full, new
    /// notices are dropped. Default 1000, 1 to 1000000.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_attempts() -> u32 {
    5
}
fn default_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_queue() -> usize {
    1000
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &shown_url(&self.url))
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("queue", &self.queue)
            .finish()
    }
}

impl WebhookConfig {
    /// Checks the block, naming the offending key (`approval.webhook.…`).
    /// [`Notifier::start`] calls this; config validation may call it earlier.
    /// Messages never contain the URL.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_at(KEY_PATH)
    }

    /// As [`WebhookConfig::validate`], for the block at `key_path`.
    pub fn validate_at(&self, key_path: &str) -> Result<(), String> {
        let at = |key: &str, msg: &str| format!("{key_path}.{key}: {msg}");
        parse_url(&self.url).map_err(|e| at("url", &e))?;
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(at("timeout", "must be more than 0s and at most 5m"));
        }
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(at(
                "max_attempts",
                &format!("must be from 1 to {MAX_ATTEMPTS}"),
            ));
        }
        if !(1..=MAX_QUEUE).contains(&self.queue) {
            return Err(at("queue", &format!("must be from 1 to {MAX_QUEUE}")));
        }
        Ok(())
    }
}

/// Errors say nothing of the URL itself: it is a secret.
fn parse_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err("expected an http:// or https:// URL".into());
    }
    Ok(parsed)
}

/// `https://hooks.slack.com/services/T0/B0/secret` → `https://hooks.slack.com`
/// (the port too, when given). Anything unparseable → `<invalid URL>`.
fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", u.scheme()),
            (Some(host), None) => format!("{}://{host}", u.scheme()),
            (None, _) => format!("{}:…", u.scheme()),
        },
        Err(_) => "<invalid URL>".into(),
    }
}

/// What the notification says (built by the caller from an approval request).
#[derive(Clone, Debug)]
pub struct Notice {
    /// The approval request's id (`apr_…`); named in every log line.
    pub id: String,
    /// The client whose call needs approval.
    pub requester: String,
    pub route: String,
    /// The model the call asked for, if any.
    pub model: Option<String>,
    /// The policy rule that asked for approval.
    pub rule: String,
    /// Why the rule matched, for the approver.
    pub reason: String,
    /// A preview of the request (e.g. the last user message); shown in a code
    /// block, cut to 500 characters.
    pub summary: String,
    /// `"hold"` (the call waits for the decision) or `"ticket"`.
    pub mode: &'static str,
    /// When the request expires, in ms since the Unix epoch.
    pub expires_at_ms: u64,
    /// Link to the request in the admin console, e.g.
    /// `https://gw-admin.example/ui#apr_…`. An "Open console" button when
    /// present (and an http(s) URL).
    pub console_url: Option<String>,
}

/// One payload on the queue: what it is about (for logs) and the JSON.
struct Message {
    /// E.g. `approval apr_…` or `drift alert chat/llama refusal`.
    subject: String,
    payload: Value,
}

/// Sends notices to the webhook. A cheap handle: clone it freely; the sender
/// task ends once every clone is dropped (see the module doc).
#[derive(Clone)]
pub struct Notifier {
    queue: mpsc::Sender<Message>,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retries: AtomicU64,
    last_drop_warning_secs: AtomicU64,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("sent", &self.sent())
            .field("failed", &self.failed())
            .field("dropped", &self.dropped())
            .field("retries", &self.retries())
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// Spawns the sender task on the current tokio runtime; returns the
    /// handle. Fails on an invalid config or outside a tokio runtime.
    pub fn start(cfg: &WebhookConfig) -> Result<Notifier, String> {
        Notifier::start_at(cfg, KEY_PATH, "approval")
    }

    /// As [`Notifier::start`], for the webhook block at `key_path` (named in
    /// errors); `what` names the notifications in logs.
    pub fn start_at(cfg: &WebhookConfig, key_path: &str, what: &str) -> Result<Notifier, String> {
        cfg.validate_at(key_path)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            format!("{key_path}: cannot start notifications outside a tokio runtime")
        })?;
        let url = parse_url(&cfg.url).map_err(|e| format!("{key_path}.url: {e}"))?;
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            // A redirected POST may turn into a GET, and would take the
            // payload somewhere nobody configured: a 3xx is a failure.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("modelgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("{key_path}: cannot build an HTTP client: {e}"))?;
        let stats = Arc::new(Stats::default());
        let sender = Arc::new(Sender {
            client,
            url,
            shown: shown_url(&cfg.url),
            timeout: cfg.timeout,
            max_attempts: cfg.max_attempts,
            backoff: cfg.backoff,
            stats: stats.clone(),
        });
        log::info!(
            "{what} notifications: webhook {} (up to {} attempts per notice)",
            sender.shown,
            cfg.max_attempts
        );
        let (tx, rx) = mpsc::channel(cfg.queue);
        runtime.spawn(dispatch(sender, rx));
        Ok(Notifier { queue: tx, stats })
    }

    /// Never blocks or awaits: enqueues; when the queue is full the notice is
    /// dropped and counted in [`Notifier::dropped`] (with a warning at most
    /// every 10 s).
    pub fn notify(&self, notice: Notice) {
        self.send(format!("approval {}", notice.id), slack_payload(&notice));
    }

    /// As [`Notifier::notify`], for a payload built by the caller; `subject`
    /// names it in logs (never put a secret there).
    pub fn send(&self, subject: String, payload: Value) {
        let message = Message { subject, payload };
        let (message, why) = match self.queue.try_send(message) {
            Ok(()) => return,
            Err(TrySendError::Full(m)) => (m, "the queue is full"),
            // Only when the runtime is shutting down.
            Err(TrySendError::Closed(m)) => (m, "the sender task has stopped"),
        };
        let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.stats.last_drop_warning_secs.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_EVERY_SECS
            && self
                .stats
                .last_drop_warning_secs
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn!(
                "{}: webhook notification dropped: {why} ({dropped} dropped so far; \
                 next warning in {WARN_EVERY_SECS}s at the earliest)",
                message.subject
            );
        }
    }

    /// Notices the webhook accepted (2xx).
    pub fn sent(&self) -> u64 {
        self.stats.sent.load(Ordering::Relaxed)
    }

    /// Notices given up on: after `max_attempts`, or at once on a final
    /// answer (4xx other than 429, 3xx).
    pub fn failed(&self) -> u64 {
        self.stats.failed.load(Ordering::Relaxed)
    }

    /// Notices dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
    }

    /// Attempts after the first, over all notices.
    pub fn retries(&self) -> u64 {
        self.stats.retries.load(Ordering::Relaxed)
    }
}

/// The sender task: takes notices off the queue as delivery slots free up.
/// Returns once every [`Notifier`] is dropped and the queue is empty;
/// deliveries already started run to their end.
async fn dispatch(sender: Arc<Sender>, mut queue: mpsc::Receiver<Message>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        // The slot first, so that a notice waiting for one still counts
        // against the queue.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(message) = queue.recv().await else {
            return;
        };
        let sender = sender.clone();
        tokio::spawn(async move {
            sender.deliver(message).await;
            drop(slot);
        });
    }
}

struct Sender {
    client: reqwest::Client,
    url: reqwest::Url,
    /// Scheme and host, for logs.
    shown: String,
    timeout: Duration,
    max_attempts: u32,
    backoff: Duration,
    stats: Arc<Stats>,
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    /// Worth another try; `retry_after` from the answer, if any.
    Retry {
        why: String,
        retry_after: Option<Duration>,
    },
    /// Another try would get the same answer.
    Final(String),
}

impl Sender {
    async fn deliver(&self, message: Message) {
        let id = &message.subject;
        let body = match serde_json::to_vec(&message.payload) {
            Ok(body) => body,
            Err(e) => {
                // Not expected: a `Value` always serialises.
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                log::warn!("{id}: cannot serialise the webhook payload: {e}");
                return;
            }
        };
        let mut attempt = 1;
        loop {
            match self.attempt(body.clone()).await {
                Attempt::Delivered => {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    log::debug!(
                        "{id}: webhook notification delivered to {} (attempt {attempt})",
                        self.shown
                    );
                    return;
                }
                Attempt::Final(why) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "{id}: webhook {} refused the notification ({why}); not retrying",
                        self.shown
                    );
                    return;
                }
                Attempt::Retry { why, retry_after } => {
                    if attempt >= self.max_attempts {
                        self.stats.failed.fetch_add(1, Ordering::Relaxed);
                        log::warn!(
                            "{id}: webhook notification to {} failed after {attempt} \
                             attempt(s); last: {why}",
                            self.shown
                        );
                        return;
                    }
                    let delay = retry_delay(self.backoff, attempt, retry_after);
                    log::debug!(
                        "{id}: webhook notification to {} failed ({why}); \
                         retrying in {}",
                        self.shown,
                        humantime::format_duration(delay)
                    );
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn attempt(&self, body: Vec<u8>) -> Attempt {
        let sent = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => {
                return Attempt::Retry {
                    why: self.describe(e),
                    retry_after: None,
                }
            }
        };
        let status = response.status();
        if status.is_success() {
            return Attempt::Delivered;
        }
        let retry_after = if matches!(status.as_u16(), 429 | 503) {
            response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs)
        } else {
            None
        };
        let mut why = format!("HTTP {}", status.as_u16());
        // Best effort, and bounded by the client timeout like the rest.
        let mut text = Vec::new();
        while text.len() < MAX_ERROR_BODY_CHARS * 4 {
            match response.chunk().await {
                Ok(Some(chunk)) => text.extend_from_slice(&chunk),
                _ => break,
            }
        }
        let text: String = String::from_utf8_lossy(&text)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_ERROR_BODY_CHARS)
            .collect();
        let text = text.trim();
        if !text.is_empty() {
            why = format!("{why}: {text}");
        }
        if status.as_u16() == 429 || status.is_server_error() {
            Attempt::Retry { why, retry_after }
        } else {
            Attempt::Final(why)
        }
    }

    /// The error and its causes, without the URL (reqwest puts it in the
    /// message, and it is a secret).
    fn describe(&self, e: reqwest::Error) -> String {
        if e.is_timeout() {
            return format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            );
        }
        let e = e.without_url();
        let mut why = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            let text = c.to_string();
            if !why.contains(&text) {
                why.push_str(": ");
                why.push_str(&text);
            }
            cause = c.source();
        }
        why
    }
}

/// Wait before attempt `attempt + 1`: `backoff` doubled per retry so far, at
/// least `retry_after`, at most [`MAX_DELAY`].
fn retry_delay(backoff: Duration, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    let exponential = backoff.checked_mul(1u32 << doublings).unwrap_or(MAX_DELAY);
    exponential
        .max(retry_after.unwrap_or_default())
        .min(MAX_DELAY)
}

/// The JSON the webhook receives: Slack's incoming-webhook format, a `text`
/// fallback (what notifications and clients without blocks show) and
/// `blocks`. Every value from the request is escaped so that it cannot
/// mention, link or close a code span, and cut to stay within Slack's limits.
pub fn slack_payload(n: &Notice) -> Value {
    let console = n.console_url.as_deref().filter(|u| {
        u.chars().count() <= MAX_BUTTON_URL_CHARS
            && reqwest::Url::parse(u).is_ok_and(|p| matches!(p.scheme(), "http" | "https"))
    });
    let expires = utc_datetime(n.expires_at_ms);

    let mut text = format!(
        "Approval needed: client {} on route {} (rule {}) — expires {expires}",
        code(&n.requester),
        code(&n.route),
        code(&n.rule),
    );
    if let Some(url) = console {
        text.push_str(&format!(" — <{}|Open console>", link_target(url)));
    }

    let model = match n.model.as_deref() {
        Some(m) => code(m),
        None => "_none_".to_string(),
    };
    let field =
        |name: &str, value: String| json!({"type": "mrkdwn", "text": format!("*{name}*\n{value}")});
    let fields = vec![
        field("Requester", code(&n.requester)),
        field("Route", code(&n.route)),
        field("Model", model),
        field("Rule", code(&n.rule)),
        field("Mode", code(n.mode)),
        field("Expires", expires),
        field("Request", code(&n.id)),
    ];

    let reason = escape(&one_line(&n.reason), MAX_REASON_CHARS);
    let summary = escape(&n.summary, MAX_SUMMARY_CHARS);
    let reason = if reason.trim().is_empty() {
        "_none given_".to_string()
    } else {
        reason
    };
    let summary = if summary.trim().is_empty() {
        "_empty_".to_string()
    } else {
        format!("```{summary}```")
    };

    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": "Approval needed"}}),
        json!({"type": "section", "fields": fields}),
        json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": format!("*Reason:* {reason}\n*Summary:*\n{summary}")},
        }),
    ];
    if let Some(url) = console {
        blocks.push(json!({
            "type": "actions",
            "elements": [{
                "type": "button",
                "text": {"type": "plain_text", "text": "Open console"},
                "url": url,
                "action_id": "open_console",
            }],
        }));
    }
    json!({"text": text, "blocks": blocks})
}

/// A Slack payload for a short alert: `text` (the fallback line) as a
/// header-less section, then `fields` as name/value pairs. Values are
/// escaped and cut like an approval notice's.
pub fn alert_payload(title: &str, text: &str, fields: &[(&str, String)]) -> Value {
    let fields: Vec<Value> = fields
        .iter()
        .map(
            |(name, value)| json!({"type": "mrkdwn", "text": format!("*{name}*\n{}", code(value))}),
        )
        .collect();
    let text = escape(&one_line(text), MAX_REASON_CHARS);
    json!({
        "text": text,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title}},
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "section", "fields": fields},
        ],
    })
}

/// A value as inline code on one line: `` `alice` ``, or `_empty_`.
fn code(value: &str) -> String {
    let value = escape(&one_line(value), MAX_VALUE_CHARS);
    if value.trim().is_empty() {
        "_empty_".to_string()
    } else {
        format!("`{value}`")
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Escapes `s` for Slack mrkdwn and cuts it to at most `max_chars`
/// characters, escapes included (an entity is never cut), ending in `…` when
/// cut. `&`, `<`, `>` become entities, so no `<@U…>`, `<!channel>` or
/// `<url|text>` can form; a backtick becomes `ˋ` (U+02CB), so the text
/// cannot close the code span or block it is put in.
fn escape(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars * 4));
    let mut used = 0;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let piece = match c {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            '`' => "ˋ",
            _ => "",
        };
        let width = if piece.is_empty() {
            1
        } else {
            piece.chars().count()
        };
        // Keep one character for the ellipsis unless this is the last one.
        let room = if chars.peek().is_some() {
            max_chars.saturating_sub(1)
        } else {
            max_chars
        };
        if used + width > room {
            out.push('…');
            return out;
        }
        if piece.is_empty() {
            out.push(c);
        } else {
            out.push_str(piece);
        }
        used += width;
    }
    out
}

/// A URL as the target of a mrkdwn `<target|label>` link.
fn link_target(url: &str) -> String {
    url.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('|', "%7C")
}

/// `1717245296000` → `2024-06-01 12:34:56 UTC`.
fn utc_datetime(ms: u64) -> String {
    let secs = ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Mutex, OnceLock};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Every log line of every test, to check that no URL path leaks.
    static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());
    struct Capture;
    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            LOGS.lock()
                .unwrap()
                .push(format!("{} {}", record.level(), record.args()));
        }
        fn flush(&self) {}
    }
    /// Installs the capturing logger (once per test binary). No other unit
    /// test installs a logger; if one ever does, this fails loudly rather
    /// than let the log checks pass unchecked.
    fn capture_logs() {
        static INSTALLED: OnceLock<bool> = OnceLock::new();
        let ok = *INSTALLED.get_or_init(|| {
            let ok = log::set_logger(&Capture).is_ok();
            if ok {
                log::set_max_level(log::LevelFilter::Debug);
            }
            ok
        });
        assert!(
            ok,
            "another logger was installed first; the log checks need theirs"
        );
    }
    fn logs_mentioning(s: &str) -> Vec<String> {
        LOGS.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(s))
            .cloned()
            .collect()
    }

    /// The path of every test server URL: a stand-in for Slack's secret.
    const SECRET_PATH: &str = "/services/T000/B000/XSECRETX?token=XSECRETX";

    #[derive(Clone, Debug)]
    struct Request {
        at: Instant,
        method: String,
        target: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Request {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    #[derive(Clone)]
    struct Reply {
        status: u16,
        headers: Vec<(&'static str, String)>,
        /// Wait this long before answering.
        delay: Duration,
        /// Then, if set, wait until the test releases it (`notify_one`).
        hold: Option<Arc<tokio::sync::Notify>>,
    }

    fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            hold: None,
        }
    }

    type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

    /// A one-request-per-connection HTTP/1.1 server on 127.0.0.1.
    struct Server {
        url: String,
        requests: Arc<Mutex<Vec<Request>>>,
    }

    impl Server {
        async fn start(handler: Handler) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}{SECRET_PATH}", listener.local_addr().unwrap());
            let requests = Arc::new(Mutex::new(Vec::new()));
            let seen = requests.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut sock, _)) = listener.accept().await else {
                        return;
                    };
                    let (seen, handler) = (seen.clone(), handler.clone());
                    tokio::spawn(async move {
                        let Some(request) = read_request(&mut sock).await else {
                            return;
                        };
                        seen.lock().unwrap().push(request.clone());
                        let reply = handler(&request);
                        tokio::time::sleep(reply.delay).await;
                        if let Some(hold) = &reply.hold {
                            hold.notified().await;
                        }
                        let body = if reply.status < 300 {
                            "ok"
                        } else {
                            "no_service"
                        };
                        let mut head = format!(
                            "HTTP/1.1 {} X\r\ncontent-type: text/plain\r\n\
                             content-length: {}\r\nconnection: close\r\n",
                            reply.status,
                            body.len()
                        );
                        for (name, value) in &reply.headers {
                            head.push_str(&format!("{name}: {value}\r\n"));
                        }
                        head.push_str("\r\n");
                        let _ = sock.write_all(format!("{head}{body}").as_bytes()).await;
                        let _ = sock.shutdown().await;
                    });
                }
            });
            Server { url, requests }
        }

        /// Answers with `replies` in order, then 200.
        async fn scripted(replies: Vec<Reply>) -> Self {
            let replies = Mutex::new(VecDeque::from(replies));
            Self::start(Arc::new(move |_| {
                replies.lock().unwrap().pop_front().unwrap_or(status(200))
            }))
            .await
        }

        fn requests(&self) -> Vec<Request> {
            self.requests.lock().unwrap().clone()
        }
    }

    async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Request> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next()?.split(' ');
        let method = request_line.next()?.to_string();
        let target = request_line.next()?.to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = buf[head_end + 4..].to_vec();
        while body.len() < length {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        Some(Request {
            at: Instant::now(),
            method,
            target,
            headers,
            body,
        })
    }

    fn config(url: &str) -> WebhookConfig {
        WebhookConfig {
            url: url.to_string(),
            timeout: Duration::from_secs(5),
            max_attempts: 5,
            backoff: Duration::from_millis(10),
            queue: 100,
        }
    }

    fn notice(id: &str) -> Notice {
        Notice {
            id: id.to_string(),
            requester: "alice".into(),
            route: "chat".into(),
            model: Some("llama-3-70b".into()),
            rule: "payments".into(),
            reason: "card number detected".into(),
            summary: "please pay the invoice".into(),
            mode: "hold",
            // 2024-06-01 12:34:56 UTC
            expires_at_ms: 1_717_245_296_000,
            console_url: Some(format!("https://gw-admin.example/ui#{id}")),
        }
    }

    /// Polls `done` until it holds; panics after 10 s.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "timed out waiting for {what}");
    }

    fn section_texts(payload: &Value) -> Vec<String> {
        let mut texts = Vec::new();
        for block in payload["blocks"].as_array().unwrap() {
            if let Some(t) = block["text"]["text"].as_str() {
                texts.push(t.to_string());
            }
            for f in block["fields"].as_array().into_iter().flatten() {
                texts.push(f["text"].as_str().unwrap().to_string());
            }
        }
        texts
    }

    /// The content of the summary's code block.
    fn summary_of(payload: &Value) -> String {
        let texts = section_texts(payload);
        let t = texts.iter().find(|t| t.contains("*Summary:*")).unwrap();
        let start = t.find("```").unwrap() + 3;
        let end = t.rfind("```").unwrap();
        t[start..end].to_string()
    }

    #[tokio::test]
    async fn delivers_the_payload() {
        capture_logs();
        let server = Server::scripted(vec![]).await;
        let notifier = Notifier::start(&config(&server.url)).unwrap();
        let mut n = notice("apr_deliver");
        n.summary = "hi <@U123> & <!channel> <https://evil.example|click> ```x```".into();
        notifier.notify(n);
        until("delivery", || notifier.sent() == 1).await;
        assert_eq!(
            (notifier.failed(), notifier.retries(), notifier.dropped()),
            (0, 0, 0)
        );

        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        let r = &requests[0];
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, SECRET_PATH);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("user-agent").unwrap().starts_with("modelgate/"));
        let body = String::from_utf8(r.body.clone()).unwrap();
        assert!(!body.contains("<@U123>"), "{body}");
        assert!(!body.contains("<!channel>"), "{body}");
        assert!(!body.contains("<https://evil"), "{body}");

        let p = r.json();
        let text = p["text"].as_str().unwrap();
        assert_eq!(
            text,
            "Approval needed: client `alice` on route `chat` (rule `payments`) — expires \
             2024-06-01 12:34:56 UTC — <https://gw-admin.example/ui#apr_deliver|Open console>"
        );
        let blocks = p["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        let fields = section_texts(&p);
        for expected in [
            "*Requester*\n`alice`",
            "*Route*\n`chat`",
            "*Model*\n`llama-3-70b`",
            "*Rule*\n`payments`",
            "*Mode*\n`hold`",
            "*Expires*\n2024-06-01 12:34:56 UTC",
            "*Request*\n`apr_deliver`",
        ] {
            assert!(
                fields.iter().any(|f| f == expected),
                "{expected:?} in {fields:?}"
            );
        }
        assert!(fields
            .iter()
            .any(|f| f.starts_with("*Reason:* card number detected\n")));
        assert_eq!(
            summary_of(&p),
            "hi &lt;@U123&gt; &amp; &lt;!channel&gt; &lt;https://evil.example|click&gt; ˋˋˋxˋˋˋ"
        );
        let actions = blocks.iter().find(|b| b["type"] == "actions").unwrap();
        let button = &actions["elements"][0];
        assert_eq!(button["type"], "button");
        assert_eq!(button["text"]["text"], "Open console");
        assert_eq!(button["url"], "https://gw-admin.example/ui#apr_deliver");

        // Logs name the host, never the secret path.
        {
            until("the delivery log line", || {
                !logs_mentioning("apr_deliver").is_empty()
            })
            .await;
            assert!(logs_mentioning("XSECRETX").is_empty());
        }
    }

    #[test]
    fn payload_truncates_and_escapes() {
        let mut n = notice("apr_big");
        n.summary = "a".repeat(10 * 1024);
        let p = slack_payload(&n);
        let summary = summary_of(&p);
        assert_eq!(summary.chars().count(), MAX_SUMMARY_CHARS);
        assert!(summary.ends_with('…'));
        assert!(summary.starts_with("aaaa"));

        // Escapes count against the limit and are never cut in half.
        n.summary = "&".repeat(10 * 1024);
        n.reason = "<@U1>".repeat(2000);
        n.requester = "x".repeat(5000);
        let p = slack_payload(&n);
        let summary = summary_of(&p);
        assert!(summary.chars().count() <= MAX_SUMMARY_CHARS);
        assert_eq!(summary.trim_end_matches('…').replace("&amp;", ""), "");
        for t in section_texts(&p) {
            assert!(t.chars().count() <= 2000, "{}", t.len());
            assert!(!t.contains("<@U1>"));
        }
        assert!(p["text"].as_str().unwrap().chars().count() < 1000);

        // Short text is not cut; no console URL, no button and no link.
        n.summary = "fine".into();
        n.console_url = None;
        n.model = None;
        let p = slack_payload(&n);
        assert_eq!(summary_of(&p), "fine");
        assert!(!p["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["type"] == "actions"));
        assert!(!p["text"].as_str().unwrap().contains('<'));
        assert!(section_texts(&p).contains(&"*Model*\n_none_".to_string()));

        // Not an http(s) URL: no button either.
        n.console_url = Some("javascript:alert(1)".into());
        let p = slack_payload(&n);
        assert!(!p.to_string().contains("javascript"));
    }

    #[test]
    fn escape_limits() {
        assert_eq!(escape("abc", 3), "abc");
        assert_eq!(escape("abcd", 3), "ab…");
        assert_eq!(escape("a&", 6), "a&amp;");
        assert_eq!(escape("a&b", 6), "a…");
        assert_eq!(escape("", 3), "");
        assert_eq!(code("a\nb`c"), "`a bˋc`");
        assert_eq!(code(""), "_empty_");
        assert_eq!(
            link_target("https://x/?a=1&b=<2>|3"),
            "https://x/?a=1&amp;b=&lt;2&gt;%7C3"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(utc_datetime(0), "1970-01-01 00:00:00 UTC");
        for secs in [951_782_400u64, 1_709_164_799, 1_717_245_296, 4_102_444_800] {
            let rfc = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs))
                .to_string()
                .replace('T', " ")
                .replace('Z', " UTC");
            assert_eq!(utc_datetime(secs * 1000 + 999), rfc);
        }
    }

    #[test]
    fn delays() {
        let ms = Duration::from_millis;
        let b = ms(100);
        assert_eq!(retry_delay(b, 1, None), ms(100));
        assert_eq!(retry_delay(b, 2, None), ms(200));
        assert_eq!(retry_delay(b, 4, None), ms(800));
        assert_eq!(retry_delay(b, 20, None), MAX_DELAY);
        assert_eq!(retry_delay(Duration::from_secs(3600), 1, None), MAX_DELAY);
        assert_eq!(retry_delay(b, 1, Some(ms(2000))), ms(2000));
        assert_eq!(retry_delay(b, 4, Some(ms(10))), ms(800));
        assert_eq!(
            retry_delay(b, 1, Some(Duration::from_secs(3600))),
            MAX_DELAY
        );
        assert_eq!(retry_delay(Duration::ZERO, 3, None), Duration::ZERO);
    }

    #[tokio::test]
    async fn retries_server_errors() {
        let server = Server::scripted(vec![status(503), status(503)]).await;
        let notifier = Notifier::start(&config(&server.url)).unwrap();
        notifier.notify(notice("apr_503"));
        until("delivery", || notifier.sent() == 1).await;
        assert_eq!((notifier.retries(), notifier.failed()), (2, 0));
        assert_eq!(server.requests().len(), 3);
    }

    #[tokio::test]
    async fn client_errors_are_final() {
        capture_logs();
        let server = Server::scripted(vec![status(400), status(400)]).await;
        let notifier = Notifier::start(&config(&server.url)).unwrap();
        notifier.notify(notice("apr_400"));
        until("failure", || notifier.failed() == 1).await;
        assert_eq!((notifier.sent(), notifier.retries()), (0, 0));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(server.requests().len(), 1);
        {
            let warnings = logs_mentioning("apr_400");
            assert!(
                warnings
                    .iter()
                    .any(|l| l.starts_with("WARN") && l.contains("HTTP 400: no_service")),
                "{warnings:?}"
            );
            assert!(warnings.iter().all(|l| !l.contains("XSECRETX")));
            assert!(warnings.iter().any(|l| l.contains("http://127.0.0.1:")));
        }
    }

    #[tokio::test]
    async fn redirects_are_final() {
        let server = Server::scripted(vec![Reply {
            headers: vec![("location", "http://127.0.0.1:9/elsewhere".into())],
            ..status(302)
        }])
        .await;
        let notifier = Notifier::start(&config(&server.url)).unwrap();
        notifier.notify(notice("apr_302"));
        until("failure", || notifier.failed() == 1).await;
        assert_eq!(server.requests().len(), 1);
    }

    #[tokio::test]
    async fn connection_refused_gives_up_after_max_attempts() {
        capture_logs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let cfg = WebhookConfig {
            max_attempts: 3,
            ..config(&format!("http://{addr}{SECRET_PATH}"))
        };
        let notifier = Notifier::start(&cfg).unwrap();
        notifier.notify(notice("apr_refused"));
        until("failure", || notifier.failed() == 1).await;
        assert_eq!((notifier.sent(), notifier.retries()), (0, 2));
        {
            let warnings = logs_mentioning("apr_refused");
            assert!(
                warnings
                    .iter()
                    .any(|l| l.starts_with("WARN") && l.contains("after 3 attempt(s)")),
                "{warnings:?}"
            );
            assert!(warnings.iter().all(|l| !l.contains("XSECRETX")));
        }
    }

    #[tokio::test]
    async fn timeouts_are_retried() {
        // The first answer never comes (within the test), so only the
        // timeout and a retry can get the notice delivered. The timeout is
        // long enough for the retry's prompt answer even on a busy machine;
        // should the retry time out too, a third attempt still delivers it,
        // hence `>= 1` retries.
        let server = Server::scripted(vec![Reply {
            delay: Duration::from_secs(3600),
            ..status(200)
        }])
        .await;
        let cfg = WebhookConfig {
            timeout: Duration::from_secs(2),
            ..config(&server.url)
        };
        let notifier = Notifier::start(&cfg).unwrap();
        notifier.notify(notice("apr_slow"));
        until("delivery", || notifier.sent() == 1).await;
        assert!(notifier.retries() >= 1, "{}", notifier.retries());
        assert_eq!(notifier.failed(), 0);
        // Every request after the first is a retry.
        assert_eq!(notifier.retries() as usize, server.requests().len() - 1);
    }

    #[tokio::test]
    async fn honours_retry_after() {
        let server = Server::scripted(vec![Reply {
            headers: vec![("retry-after", "1".into())],
            ..status(429)
        }])
        .await;
        let notifier = Notifier::start(&config(&server.url)).unwrap();
        notifier.notify(notice("apr_429"));
        until("delivery", || notifier.sent() == 1).await;
        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        let gap = requests[1].at - requests[0].at;
        assert!(gap >= Duration::from_millis(950), "{gap:?}");
        assert!(gap < Duration::from_secs(5), "{gap:?}");
        assert_eq!(notifier.retries(), 1);
    }

    #[tokio::test]
    async fn a_slow_notice_does_not_hold_up_the_next() {
        // `apr_stuck` gets no answer until the test releases it.
        let release = Arc::new(tokio::sync::Notify::new());
        let hold = release.clone();
        let server = Server::start(Arc::new(move |r: &Request| {
            let stuck = String::from_utf8_lossy(&r.body).contains("apr_stuck");
            Reply {
                hold: stuck.then(|| hold.clone()),
                ..status(200)
            }
        }))
        .await;
        // A timeout far beyond the test, so the held attempt cannot end early.
        let cfg = WebhookConfig {
            timeout: Duration::from_secs(300),
            ..config(&server.url)
        };
        let notifier = Notifier::start(&cfg).unwrap();
        notifier.notify(notice("apr_stuck"));
        notifier.notify(notice("apr_next"));
        let body_has = |id: &str| {
            server
                .requests()
                .iter()
                .any(|r| String::from_utf8_lossy(&r.body).contains(id))
        };
        until("the stuck notice to reach the server", || {
            body_has("apr_stuck")
        })
        .await;
        // Delivered while the stuck one is still held: only apr_next can be.
        until("the second delivery", || notifier.sent() == 1).await;
        assert!(body_has("apr_next"));
        release.notify_one();
        until("both deliveries", || notifier.sent() == 2).await;
        assert_eq!(
            (
                notifier.retries(),
                notifier.failed(),
                server.requests().len()
            ),
            (0, 0, 2)
        );
    }

    #[tokio::test]
    async fn full_queue_drops_without_waiting() {
        let server = Server::scripted(vec![]).await;
        let cfg = WebhookConfig {
            queue: 2,
            ..config(&server.url)
        };
        let notifier = Notifier::start(&cfg).unwrap();
        // This test's runtime has one thread and nothing here awaits, so the
        // sender task takes nothing off the queue meanwhile.
        let started = Instant::now();
        for i in 0..100 {
            notifier.notify(notice(&format!("apr_flood{i}")));
        }
        // `dropped == 98` is what shows that nothing waited for room; this
        // bound only catches a hang, so it is generous for a busy machine.
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(notifier.dropped(), 98);
        until("the queued deliveries", || notifier.sent() == 2).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(server.requests().len(), 2);
    }

    #[tokio::test]
    async fn ends_when_every_handle_is_dropped() {
        let server = Server::scripted(vec![]).await;
        let notifier = Notifier::start(&config(&server.url)).unwrap();
        let stats = Arc::downgrade(&notifier.stats);
        let clone = notifier.clone();
        drop(notifier);
        clone.notify(notice("apr_last"));
        drop(clone);
        // What was queued is still delivered; then the task ends.
        until("the last delivery", || server.requests().len() == 1).await;
        until("the task to end", || stats.strong_count() == 0).await;
    }

    #[test]
    fn start_needs_a_runtime() {
        let err = Notifier::start(&config("https://hooks.example/x")).unwrap_err();
        assert!(err.contains("tokio runtime"), "{err}");
    }

    #[test]
    fn config_validation() {
        let parse =
            |v: Value| serde_json::from_value::<WebhookConfig>(v).map_err(|e| e.to_string());
        let cfg = parse(json!({"url": "https://hooks.slack.com/services/T0/B0/XSECRETX"})).unwrap();
        assert_eq!(cfg.timeout, Duration::from_secs(5));
        assert_eq!(cfg.max_attempts, 5);
        assert_eq!(cfg.backoff, Duration::from_secs(1));
        assert_eq!(cfg.queue, 1000);
        cfg.validate().unwrap();
        let debug = format!("{cfg:?}");
        assert!(debug.contains("https://hooks.slack.com"), "{debug}");
        assert!(!debug.contains("XSECRETX"), "{debug}");

        let cfg = parse(json!({
            "url": "http://127.0.0.1:8080/hook", "timeout": "250ms",
            "max_attempts": 1, "backoff": "2s", "queue": 1,
        }))
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.timeout, Duration::from_millis(250));
        assert_eq!(format!("{cfg:?}").matches("127.0.0.1:8080").count(), 1);

        let err = parse(json!({"url": "https://x", "retries": 3})).unwrap_err();
        assert!(err.contains("unknown field `retries`"), "{err}");
        assert!(parse(json!({"url": "https://x", "timeout": "soon"})).is_err());
        assert!(parse(json!({})).is_err());

        let invalid = |patch: Value| {
            let mut v = json!({"url": "https://hooks.example/XSECRETX"});
            v.as_object_mut()
                .unwrap()
                .extend(patch.as_object().unwrap().clone());
            let err = parse(v).unwrap().validate().unwrap_err();
            assert!(!err.contains("XSECRETX"), "{err}");
            err
        };
        for (patch, expected) in [
            (
                json!({"url": "ftp://hooks.example/XSECRETX"}),
                "approval.webhook.url:",
            ),
            (
                json!({"url": "hooks.example/XSECRETX"}),
                "approval.webhook.url:",
            ),
            (json!({"max_attempts": 0}), "approval.webhook.max_attempts:"),
            (
                json!({"max_attempts": 21}),
                "approval.webhook.max_attempts:",
            ),
            (json!({"queue": 0}), "approval.webhook.queue:"),
            (json!({"timeout": "0s"}), "approval.webhook.timeout:"),
            (json!({"timeout": "1h"}), "approval.webhook.timeout:"),
        ] {
            let err = invalid(patch.clone());
            assert!(err.starts_with(expected), "{patch}: {err}");
        }
    }
}
