//! Drift detection: per route and model, rolling statistics of the answers
//! over a recent window, compared with a baseline by the population
//! stability index, plus fingerprint changes (the answer's `model` and
//! `system_fingerprint`, each upstream's `/v1/models`).
//!
//! Owns the `drift:` config block, the [`Drift`] engine (fed by the audit
//! writer, off the request path: the writer already reassembles each
//! answer, so a call costs the proxy nothing more), baseline files, and
//! alerts ([`Alerts`]: metrics, `drift_alert` audit records, the webhook).
//! [`models`] polls the upstreams' model lists. [`stats`] holds the
//! arithmetic.

pub mod models;
pub mod stats;

use crate::approval::notify::{alert_payload, Notifier, WebhookConfig};
use crate::audit::reassemble::Reassembled;
use crate::audit::record::{Call, Outcome};
use crate::config::ConfigError;
use crate::mask::stream::MaskRules;
use crate::metrics::Metrics;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use stats::{Baseline, Facts, Observation};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The `drift:` block.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// Recent calls per route and model that are compared with the
    /// baseline. Default 500, at least 50.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Calls learned as the baseline of a route and model that has none in
    /// `baseline_file`. Default 500, at least 50.
    #[serde(default = "default_baseline_calls")]
    pub baseline_calls: usize,
    /// Scores are recomputed every this many calls (per route and model).
    /// Default 50, 1 to `window`.
    #[serde(default = "default_evaluate_every")]
    pub evaluate_every: usize,
    /// Baselines read at start (when the file exists) and, with
    /// `save_learned`, written when one is learned. One file can serve
    /// every replica.
    #[serde(default)]
    pub baseline_file: Option<String>,
    /// Write learned baselines to `baseline_file`. Default true.
    #[serde(default = "default_true")]
    pub save_learned: bool,
    /// Score above which a signal alerts, per signal name, with `default`
    /// for the rest. Built in: `default` 0.25, and 0.5 for the timing
    /// signals (`ttft_ms`, `tokens_per_second`), which move with load as
    /// well as with the model; `.inf` never alerts.
    #[serde(default)]
    pub thresholds: BTreeMap<String, f64>,
    /// Phrases (case-insensitive, in the first 400 bytes of an answer)
    /// that make an answer count as a refusal. Default: common English
    /// refusals.
    #[serde(default = "default_refusal_phrases")]
    pub refusal_phrases: Vec<String>,
    /// Distinct models tracked per route; further ones share the model
    /// label `_other` (the model name comes from clients). Default 20.
    #[serde(default = "default_max_models")]
    pub max_models_per_route: usize,
    /// How often each upstream host's model list is fetched and hashed;
    /// `0s` never. Default `5m`.
    #[serde(default = "default_models_interval", with = "humantime_serde")]
    pub models_check_interval: Duration,
    /// The path of the model list. Default `/v1/models`.
    #[serde(default = "default_models_path")]
    pub models_path: String,
    /// Where alerts are posted (Slack-compatible), as `approval.webhook`.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
}

fn default_window() -> usize {
    500
}
fn default_baseline_calls() -> usize {
    500
}
fn default_evaluate_every() -> usize {
    50
}
fn default_true() -> bool {
    true
}
fn default_max_models() -> usize {
    20
}
fn default_models_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_models_path() -> String {
    "/v1/models".into()
}
fn default_refusal_phrases() -> Vec<String> {
    [
        "I'm sorry, but I can't",
        "I am sorry, but I cannot",
        "I'm sorry, I can't",
        "I can't help with",
        "I cannot help with",
        "I can't assist",
        "I cannot assist",
        "I'm not able to help",
        "I am unable to help",
        "I won't be able to help",
        "As an AI language model, I cannot",
    ]
    .map(String::from)
    .to_vec()
}

/// `model` / `system_fingerprint` values remembered per route and model;
/// further new values do not alert.
const MAX_KNOWN_VALUES: usize = 64;

/// Bytes of an answer the detectors read for the `pii_*` signals.
const DETECT_BYTES: usize = 64 * 1024;

/// The threshold when `thresholds` names none.
pub const DEFAULT_THRESHOLD: f64 = 0.25;
/// Signals that measure time: on a shared host they move with load, so
/// they get a higher threshold unless `thresholds` names them.
const TIMING_SIGNALS: [&str; 2] = ["ttft_ms", "tokens_per_second"];
const TIMING_THRESHOLD: f64 = 0.5;
/// A firing alert resolves when its score falls below this share of the
/// threshold (so a score hovering at the threshold does not flap).
const RESOLVE_AT: f64 = 0.8;

impl DriftConfig {
    /// Checks the block; errors name the key.
    pub fn validate(&self, entities: &[String]) -> Result<(), ConfigError> {
        let at = |k: &str, m: String| Err(ConfigError::at(format!("drift.{k}"), m));
        if self.window < 50 {
            return at("window", "must be at least 50 calls".into());
        }
        if self.baseline_calls < 50 {
            return at("baseline_calls", "must be at least 50 calls".into());
        }
        if !(1..=self.window).contains(&self.evaluate_every) {
            return at("evaluate_every", "must be from 1 to `window`".into());
        }
        if self.max_models_per_route == 0 {
            return at("max_models_per_route", "must be at least 1".into());
        }
        if !self.models_check_interval.is_zero()
            && self.models_check_interval < Duration::from_secs(1)
        {
            return at(
                "models_check_interval",
                "must be at least 1s (or 0s: off)".into(),
            );
        }
        if !self.models_path.starts_with('/') {
            return at("models_path", "must start with `/`".into());
        }
        let known = signal_names(entities);
        for (name, t) in &self.thresholds {
            if name != "default" && !known.contains(name) {
                return at(
                    &format!("thresholds.{name}"),
                    format!("unknown signal (known: default, {})", known.join(", ")),
                );
            }
            if t.is_nan() || *t <= 0.0 {
                return at(
                    &format!("thresholds.{name}"),
                    "must be a number above 0 (`.inf`: never)".into(),
                );
            }
        }
        if let Some((i, _)) = self
            .refusal_phrases
            .iter()
            .enumerate()
            .find(|(_, p)| p.trim().is_empty())
        {
            return at(&format!("refusal_phrases[{i}]"), "is empty".into());
        }
        if let Some(w) = &self.webhook {
            w.validate_at("drift.webhook").map_err(ConfigError)?;
        }
        Ok(())
    }

    fn threshold(&self, signal: &str) -> f64 {
        if let Some(t) = self.thresholds.get(signal) {
            return *t;
        }
        if TIMING_SIGNALS.contains(&signal) {
            return TIMING_THRESHOLD;
        }
        self.thresholds
            .get("default")
            .copied()
            .unwrap_or(DEFAULT_THRESHOLD)
    }
}

/// Every signal's name, PII entities included.
pub fn signal_names(entities: &[String]) -> Vec<String> {
    let mut v: Vec<String> = stats::NUMERIC.iter().map(|s| s.to_string()).collect();
    v.extend(stats::CATEGORICAL.iter().map(|(s, _)| s.to_string()));
    v.extend(entities.iter().map(|e| stats::pii_signal(e)));
    v
}

/// Recognises refusals by phrase.
pub struct Refusals(aho_corasick::AhoCorasick);

/// Bytes of an answer searched for refusal phrases.
const REFUSAL_PREFIX: usize = 400;

impl Refusals {
    pub fn new(phrases: &[String]) -> Refusals {
        let phrases: Vec<String> = phrases.iter().map(|p| p.replace('’', "'")).collect();
        Refusals(
            aho_corasick::AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(&phrases)
                .expect("plain phrases build"),
        )
    }

    pub fn matches(&self, text: &str) -> bool {
        let mut end = text.len().min(REFUSAL_PREFIX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let head = text[..end].replace('’', "'");
        self.0.is_match(&head)
    }
}

/// One baseline in a file, with the route and model it is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyedBaseline {
    pub route: String,
    pub model: String,
    /// When it was made, and from what (`live` or `audit:<file>`).
    pub learned_at: String,
    pub source: String,
    #[serde(flatten)]
    pub baseline: Baseline,
}

/// A baseline file: `{"version": 1, "baselines": [...]}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineFile {
    pub version: u32,
    pub baselines: Vec<KeyedBaseline>,
}

impl BaselineFile {
    /// Reads `path`; a file that does not exist is an empty set.
    pub fn load(path: &Path) -> Result<BaselineFile, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(BaselineFile {
                    version: 1,
                    baselines: Vec::new(),
                })
            }
            Err(e) => return Err(format!("cannot read: {e}")),
        };
        let file: BaselineFile =
            serde_json::from_str(&text).map_err(|e| format!("not a baseline file: {e}"))?;
        if file.version != 1 {
            return Err(format!("version {} (this gateway reads 1)", file.version));
        }
        for b in &file.baselines {
            b.baseline
                .check()
                .map_err(|e| format!("route `{}` model `{}`: {e}", b.route, b.model))?;
        }
        Ok(file)
    }

    /// Writes the file whole: a temporary file (a name no other process
    /// or thread uses), synced, renamed over it, so that a reader never sees
    /// half of one, even after a crash.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        use std::io::Write;
        static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = path
            .file_name()
            .map_or_else(|| "baseline".into(), |n| n.to_string_lossy().into_owned());
        let tmp = path.with_file_name(format!(
            ".{name}.{}.{}.{n}.tmp",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let json = serde_json::to_vec_pretty(self).expect("baselines serialise");
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok::<_, std::io::Error>(())
        })();
        written.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {}: {e}", path.display())
        })
    }

    /// Puts `b` into the file at `path`, keeping every other baseline as
    /// it is on disk now (another replica may have written some). Holds
    /// `<path>.lock` while reading and writing. A damaged file is replaced.
    pub fn merge_one(path: &Path, b: KeyedBaseline) -> Result<(), String> {
        let lock_path = path.with_file_name(format!(
            "{}.lock",
            path.file_name()
                .map_or_else(|| "baseline".into(), |n| n.to_string_lossy())
        ));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("{}: {e}", lock_path.display()))?;
        lock.lock()
            .map_err(|e| format!("{}: {e}", lock_path.display()))?;
        let mut file = BaselineFile::load(path).unwrap_or_else(|e| {
            log::error!(
                "drift: {} is damaged ({e}); writing a new one",
                path.display()
            );
            BaselineFile::default()
        });
        file.version = 1;
        file.put(b);
        file.save(path)
    }

    /// Replaces the baseline of `b`'s route and model, or adds it.
    pub fn put(&mut self, b: KeyedBaseline) {
        self.baselines
            .retain(|x| (x.route.as_str(), x.model.as_str()) != (&b.route, &b.model));
        self.baselines.push(b);
    }
}

/// Where alerts go besides the audit trail: metrics and the webhook.
pub struct Alerts {
    metrics: Arc<Metrics>,
    webhook: Option<WebhookConfig>,
    notifier: OnceLock<Option<Notifier>>,
}

impl Alerts {
    pub fn new(metrics: Arc<Metrics>, webhook: Option<WebhookConfig>) -> Arc<Alerts> {
        Arc::new(Alerts {
            metrics,
            webhook,
            notifier: OnceLock::new(),
        })
    }

    /// Posts `record` (a `drift_alert`) to the webhook, if one is set. The
    /// notifier starts on first use, in the caller's runtime.
    pub fn notify(&self, record: &Value) {
        let notifier = self.notifier.get_or_init(|| {
            let w = self.webhook.as_ref()?;
            match Notifier::start_at(w, "drift.webhook", "drift alert") {
                Ok(n) => Some(n),
                Err(e) => {
                    log::error!("drift: no webhook notifications: {e}");
                    None
                }
            }
        });
        let s = |k: &str| record.get(k).and_then(Value::as_str).unwrap_or("-");
        let signal = s("signal");
        let where_ = match record.get("upstream") {
            Some(_) => format!("upstream {} host {}", s("upstream"), s("host")),
            None => format!("route {} model {}", s("route"), s("model")),
        };
        let text = format!("Drift {}: {signal} on {where_}", s("state"));
        let score = record
            .get("score")
            .map_or(String::new(), |v| format!(" (score {v})"));
        // {:?}: names from clients and upstreams cannot forge log lines.
        log::warn!("drift {}: {signal} on {where_:?}{score}", s("state"));
        let Some(n) = notifier else {
            return;
        };
        let mut fields = vec![("Signal", signal.to_string()), ("State", s("state").into())];
        for key in ["route", "model", "upstream", "host", "field", "seen"] {
            if let Some(v) = record.get(key).and_then(Value::as_str) {
                fields.push((key, v.to_string()));
            }
        }
        if let Some(score) = record.get("score").and_then(Value::as_f64) {
            let threshold = record.get("threshold").and_then(Value::as_f64);
            fields.push((
                "Score",
                format!("{score:.3} (threshold {})", threshold.unwrap_or(f64::NAN)),
            ));
        }
        fields.truncate(10); // Slack's limit per section
        n.send(
            format!("drift alert {where_} {signal}"),
            alert_payload("Model drift", &text, &fields),
        );
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

pub use crate::audit::record::now;

/// Per route and model.
struct KeyState {
    baseline: Option<Baseline>,
    learning: Vec<Observation>,
    window: VecDeque<Observation>,
    since_eval: usize,
    /// Signals whose alert is firing.
    firing: BTreeSet<String>,
    /// `model` and `system_fingerprint` values known (the baseline's, then
    /// every one alerted on).
    models: BTreeSet<String>,
    fingerprints: BTreeSet<String>,
}

/// The engine: fed one call at a time by the audit writer.
pub struct Drift {
    cfg: DriftConfig,
    refusals: Refusals,
    /// The audit's entities: PII bits index into these names.
    rules: Arc<MaskRules>,
    entities: Vec<String>,
    keys: HashMap<(Arc<str>, Arc<str>), KeyState>,
    slots: ModelSlots,
    file: BaselineFile,
    alerts: Arc<Alerts>,
}

impl Drift {
    /// `rules`: the audit's masking rules (every entity).
    /// A baseline file that cannot be read is a warning (in `warnings`),
    /// not an error: the gateway starts and learns baselines again.
    pub fn build(
        cfg: &DriftConfig,
        rules: Arc<MaskRules>,
        alerts: Arc<Alerts>,
        warnings: &mut Vec<String>,
    ) -> Result<Drift, ConfigError> {
        let entities = rules.detector.names().to_vec();
        cfg.validate(&entities)?;
        let file = match &cfg.baseline_file {
            Some(p) => BaselineFile::load(Path::new(p)).unwrap_or_else(|e| {
                let w = format!(
                    "drift.baseline_file: `{p}`: {e}; baselines will be learned again and the file replaced"
                );
                log::warn!("{w}");
                warnings.push(w);
                BaselineFile::default()
            }),
            None => BaselineFile::default(),
        };
        for b in &file.baselines {
            alerts
                .metrics
                .drift_baseline_calls
                .with_label_values(&[b.route.as_str(), b.model.as_str()])
                .set(b.baseline.calls as i64);
        }
        Ok(Drift {
            refusals: Refusals::new(&cfg.refusal_phrases),
            cfg: cfg.clone(),
            rules,
            entities,
            keys: HashMap::new(),
            slots: ModelSlots::new(cfg.max_models_per_route),
            file,
            alerts,
        })
    }

    /// Observes a finished call (forwarded calls only; others are not the
    /// model's doing). Returns the `drift_alert` records it raised.
    pub fn observe(&mut self, call: &Call, o: &Outcome, r: &Reassembled) -> Vec<Value> {
        let Some(route) = call.route.clone() else {
            return Vec::new();
        };
        if o.host.is_none() {
            return Vec::new();
        }
        let facts = Facts {
            text: &r.text,
            refusal_field: &r.refusal,
            finish_reason: r.finish_reason.as_deref(),
            completion_tokens: r.usage.as_ref().and_then(|u| u.completion_tokens),
            ttft_ms: o.ttft.map(|d| d.as_secs_f64() * 1000.0),
            duration_ms: o.duration.as_secs_f64() * 1000.0,
            streamed: is_stream(&o.content_type),
            failed: o.status >= 400 || o.error.is_some() || r.error.is_some(),
            pii: self.live_pii(o, &r.text),
            model: r.model.as_deref(),
            fingerprint: r.system_fingerprint.as_deref(),
        };
        let refused = self.refusals.matches(&r.text);
        let obs = Observation::new(&facts, refused);
        self.add(route, call.model.as_deref(), obs)
    }

    /// Entities in the answer: those the stream masker replaced, and those
    /// the audit's detectors find in what the client got.
    fn live_pii(&self, o: &Outcome, text: &str) -> u64 {
        let mut bits = 0;
        if let Some(rules) = &o.response_masks.rules {
            for (name, n) in rules.detector.names().iter().zip(&o.response_masks.counts) {
                if *n > 0 {
                    bits |= self.bit(name);
                }
            }
        }
        if !o.response_fully_masked && !text.is_empty() {
            bits |= self.detected(text);
        }
        bits
    }

    fn bit(&self, entity: &str) -> u64 {
        match self.entities.iter().position(|e| e == entity) {
            Some(i) if i < 64 => 1 << i,
            _ => 0,
        }
    }

    /// Entities the audit's detectors find in `text` (its first 64 KiB:
    /// the writer's time is shared with the audit trail).
    pub fn detected(&self, text: &str) -> u64 {
        let mut end = text.len().min(DETECT_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut counts = vec![0u32; self.entities.len()];
        let _ = self.rules.mask_all(&text[..end], &mut counts);
        counts
            .iter()
            .enumerate()
            .filter(|(i, n)| **n > 0 && *i < 64)
            .fold(0, |bits, (i, _)| bits | 1 << i)
    }

    /// Adds one observation for `route` and the requested `model`.
    pub fn add(&mut self, route: Arc<str>, model: Option<&str>, obs: Observation) -> Vec<Value> {
        let model: Arc<str> = Arc::from(self.slots.label(&route, model, obs.cats[2] == 1));
        let key = (route, model);
        if !self.keys.contains_key(&key) {
            let state = self.new_state(&key);
            self.keys.insert(key.clone(), state);
        }
        let mut alerts = Vec::new();
        if self.keys[&key].baseline.is_none() {
            let b = {
                let state = self.keys.get_mut(&key).expect("inserted");
                state.models.extend(obs.model.clone());
                state.fingerprints.extend(obs.fingerprint.clone());
                state.learning.push(obs);
                if state.learning.len() < self.cfg.baseline_calls {
                    return alerts;
                }
                let b = Baseline::learn(&state.learning, &self.entities);
                state.learning = Vec::new();
                state.baseline = Some(b.clone());
                b
            };
            self.learned(&key, b);
            return alerts;
        }
        let state = self.keys.get_mut(&key).expect("inserted");
        let (route, model) = (&*key.0, &*key.1);
        for (field, value, known) in [
            ("model", &obs.model, &mut state.models),
            (
                "system_fingerprint",
                &obs.fingerprint,
                &mut state.fingerprints,
            ),
        ] {
            let Some(v) = value else { continue };
            if known.contains(v) || known.len() >= MAX_KNOWN_VALUES {
                // Past the cap (an upstream inventing a value per answer)
                // new values no longer alert: one per value would flood.
                continue;
            }
            let record = json!({
                "kind": "drift_alert",
                "ts": now(),
                "state": "firing",
                "signal": "fingerprint",
                "route": route,
                "model": model,
                "field": field,
                "seen": v,
                "known": known.iter().collect::<Vec<_>>(),
            });
            known.insert(v.clone());
            self.alerts
                .metrics
                .drift_fingerprint_changes
                .with_label_values(&[route, model, field])
                .inc();
            self.alerts.notify(&record);
            alerts.push(record);
        }
        state.window.push_back(obs);
        if state.window.len() > self.cfg.window {
            state.window.pop_front();
        }
        state.since_eval += 1;
        if state.window.len() < self.cfg.window || state.since_eval < self.cfg.evaluate_every {
            return alerts;
        }
        state.since_eval = 0;
        let baseline = state.baseline.as_ref().expect("learned");
        let refs: Vec<&Observation> = state.window.iter().collect();
        let current = baseline.window(&refs, &self.entities);
        for (signal, score, floor) in baseline.scores(&current) {
            let m = &self.alerts.metrics;
            m.drift_score
                .with_label_values(&[route, model, &signal])
                .set(score);
            let threshold = self.cfg.threshold(&signal);
            let firing = state.firing.contains(&signal);
            let new_state = if !firing && score > threshold && score > floor {
                state.firing.insert(signal.clone());
                m.drift_alerts
                    .with_label_values(&[route, model, &signal])
                    .inc();
                "firing"
            } else if firing && score < threshold * RESOLVE_AT {
                state.firing.remove(&signal);
                "resolved"
            } else {
                continue;
            };
            m.drift_alerting
                .with_label_values(&[route, model, &signal])
                .set((new_state == "firing") as i64);
            let record = json!({
                "kind": "drift_alert",
                "ts": now(),
                "state": new_state,
                "signal": signal,
                "route": route,
                "model": model,
                "score": (score * 1e4).round() / 1e4,
                "threshold": if threshold.is_finite() { json!(threshold) } else { Value::Null },
                "method": "psi",
                "noise_floor": if floor.is_finite() { json!((floor * 1e4).round() / 1e4) } else { Value::Null },
                "baseline_calls": baseline.calls,
                "window_calls": current.calls,
                "baseline": baseline.describe(&signal),
                "current": current.describe(&signal),
            });
            self.alerts.notify(&record);
            alerts.push(record);
        }
        alerts
    }

    fn new_state(&self, key: &(Arc<str>, Arc<str>)) -> KeyState {
        let baseline = self
            .file
            .baselines
            .iter()
            .find(|b| (b.route.as_str(), b.model.as_str()) == (&*key.0, &*key.1))
            .map(|b| b.baseline.clone());
        if baseline.is_some() {
            log::info!(
                "drift: route {} model {}: baseline from the baseline file",
                key.0,
                key.1
            );
        }
        KeyState {
            models: baseline
                .as_ref()
                .map(|b| b.models.clone())
                .unwrap_or_default(),
            fingerprints: baseline
                .as_ref()
                .map(|b| b.fingerprints.clone())
                .unwrap_or_default(),
            baseline,
            learning: Vec::new(),
            window: VecDeque::new(),
            since_eval: 0,
            firing: BTreeSet::new(),
        }
    }

    /// A baseline was just learned: metrics, log, and the file.
    fn learned(&mut self, key: &(Arc<str>, Arc<str>), b: Baseline) {
        let (route, model) = (&*key.0, &*key.1);
        self.alerts
            .metrics
            .drift_baseline_calls
            .with_label_values(&[route, model])
            .set(b.calls as i64);
        log::info!(
            "drift: route {route} model {model}: baseline learned from {} calls",
            b.calls
        );
        let (Some(path), true) = (&self.cfg.baseline_file, self.cfg.save_learned) else {
            return;
        };
        let keyed = KeyedBaseline {
            route: route.to_string(),
            model: model.to_string(),
            learned_at: now(),
            source: "live".into(),
            baseline: b,
        };
        // Off the writer's task: the file may sit on a slow shared volume.
        let path = PathBuf::from(path);
        let spawned = std::thread::Builder::new()
            .name("drift-baseline-save".into())
            .spawn(move || {
                if let Err(e) = BaselineFile::merge_one(&path, keyed) {
                    log::error!("drift: a learned baseline was not saved: {e}");
                }
            });
        if let Err(e) = spawned {
            log::error!("drift: a learned baseline was not saved: {e}");
        }
    }
}

/// Builds baselines from audit files (`modelgate drift baseline`): the
/// newest `last` forwarded calls of each route and model, observed as the
/// gateway would have observed them live. Returns the file and a line per
/// route and model for the operator.
pub fn baseline_from_audit(
    cfg: &DriftConfig,
    rules: Arc<MaskRules>,
    files: &[PathBuf],
    last: usize,
) -> Result<(BaselineFile, Vec<String>), String> {
    let entities = rules.detector.names().to_vec();
    let alerts = Alerts::new(Arc::new(Metrics::new()), None);
    let mut quiet = cfg.clone();
    quiet.baseline_file = None;
    let d = Drift::build(&quiet, rules, alerts, &mut Vec::new()).map_err(|e| e.to_string())?;
    let mut calls: Vec<(u64, String, Option<String>, Observation)> = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let rec: Value = serde_json::from_str(line)
                .map_err(|e| format!("{}:{}: not a JSON record: {e}", path.display(), n + 1))?;
            if let Some((route, model, obs)) = d.observe_record(&rec)? {
                let seq = rec.get("seq").and_then(Value::as_u64).unwrap_or(0);
                calls.push((seq, route, model, obs));
            }
        }
    }
    calls.sort_by_key(|c| c.0);
    // Model labels as the live engine gives them.
    let mut slots = ModelSlots::new(cfg.max_models_per_route);
    let mut groups: BTreeMap<(String, String), Vec<Observation>> = BTreeMap::new();
    for (_, route, model, obs) in calls {
        let label = slots.label(&route, model.as_deref(), obs.cats[2] == 1);
        groups.entry((route, label)).or_default().push(obs);
    }
    let mut file = BaselineFile {
        version: 1,
        baselines: Vec::new(),
    };
    let mut report = Vec::new();
    let source = files
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(",");
    for ((route, model), obs) in groups {
        let newest = &obs[obs.len().saturating_sub(last)..];
        if newest.len() < 50 {
            report.push(format!(
                "route {route} model {model}: skipped, {} calls (at least 50 are needed)",
                newest.len()
            ));
            continue;
        }
        report.push(format!(
            "route {route} model {model}: baseline of {} calls",
            newest.len()
        ));
        file.baselines.push(KeyedBaseline {
            route,
            model,
            learned_at: now(),
            source: format!("audit:{source}"),
            baseline: Baseline::learn(newest, &entities),
        });
    }
    Ok((file, report))
}

impl Drift {
    /// The observation an audit `call` record makes, with its route and
    /// requested model: `None` for other records and calls not forwarded; `Err` when the file cannot give one
    /// (records without bodies).
    pub fn observe_record(
        &self,
        rec: &Value,
    ) -> Result<Option<(String, Option<String>, Observation)>, String> {
        let str_at = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        if rec.get("kind").and_then(Value::as_str) != Some("call")
            || rec.get("host").is_none_or(Value::is_null)
        {
            return Ok(None);
        }
        let Some(route) = str_at(rec, "route") else {
            return Ok(None);
        };
        let model = str_at(rec, "model");
        let response = rec.get("response").cloned().unwrap_or(Value::Null);
        let stored = str_at(&response, "stored").unwrap_or_default();
        if stored == "none" {
            return Err(
                "the audit file was written with `bodies: none`: answer texts are not in it, \
                 so lengths, refusals and text features cannot be learned from it"
                    .into(),
            );
        }
        let text = str_at(&response, "text").unwrap_or_default();
        let refusal = str_at(&response, "refusal").unwrap_or_default();
        let mut pii = 0;
        if let Some(m) = rec.pointer("/masked/response").and_then(Value::as_object) {
            for (entity, n) in m {
                if n.as_u64().unwrap_or(0) > 0 {
                    pii |= self.bit(entity);
                }
            }
        }
        if stored == "masked" {
            // The audit masks every entity with its label.
            for entity in &self.entities {
                if text.contains(&format!("[{entity}]")) {
                    pii |= self.bit(entity);
                }
            }
        }
        pii |= self.detected(&text);
        let status = rec.get("status").and_then(Value::as_u64).unwrap_or(0);
        let finish = str_at(rec, "finish_reason");
        let upstream_model = str_at(rec, "upstream_model");
        let fingerprint = str_at(rec, "system_fingerprint");
        let facts = Facts {
            text: &text,
            refusal_field: &refusal,
            finish_reason: finish.as_deref(),
            completion_tokens: rec
                .pointer("/usage/completion_tokens")
                .and_then(Value::as_u64),
            ttft_ms: rec.get("ttft_ms").and_then(Value::as_f64),
            duration_ms: rec
                .get("duration_ms")
                .and_then(Value::as_f64)
                .unwrap_or(0.0),
            streamed: is_stream(&str_at(&response, "content_type").unwrap_or_default()),
            failed: status >= 400 || rec.get("error").is_some_and(|e| !e.is_null()),
            pii,
            model: upstream_model.as_deref(),
            fingerprint: fingerprint.as_deref(),
        };
        let obs = Observation::new(&facts, self.refusals.matches(&text));
        Ok(Some((route, model, obs)))
    }
}

/// Which requested models get a label of their own on each route: the
/// first `max_models_per_route` names that were answered without failing
/// (so requests for models that do not exist cannot take the places); the
/// rest share `_other`. The live engine and `drift baseline` both use it.
struct ModelSlots {
    max: usize,
    taken: HashMap<String, Vec<String>>,
}

const OTHER: &str = "_other";

impl ModelSlots {
    fn new(max: usize) -> Self {
        ModelSlots {
            max,
            taken: HashMap::new(),
        }
    }

    /// The label of `model` requested on `route` ([`model_name`], or `_other`).
    fn label(&mut self, route: &str, model: Option<&str>, failed: bool) -> String {
        let name = model_name(model);
        if !self.taken.contains_key(route) {
            self.taken.insert(route.to_string(), Vec::new());
        }
        let taken = self.taken.get_mut(route).expect("inserted");
        if name == OTHER || taken.iter().any(|m| m == name) {
            return name.to_string();
        }
        if failed || taken.len() >= self.max {
            return OTHER.to_string();
        }
        taken.push(name.to_string());
        name.to_string()
    }
}

/// The label of a requested model: its name when it is a plain model name
/// (at most 100 characters of letters, digits and `._:/@+-`), `-` when
/// none was asked for, else `_invalid` (the name comes from the client).
pub fn model_name(model: Option<&str>) -> &str {
    match model {
        None => "-",
        Some(m)
            if !m.is_empty()
                && m.len() <= 100
                && m.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:/@+-".contains(&b)) =>
        {
            m
        }
        Some(_) => "_invalid",
    }
}

/// Whether a response of this content type is a stream (SSE or NDJSON).
pub fn is_stream(content_type: &str) -> bool {
    let ct = content_type.to_ascii_lowercase();
    ct.contains("event-stream") || ct.contains("ndjson")
}

#[cfg(test)]
mod tests;
