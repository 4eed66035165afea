//! The engine fed synthetic traffic: a stable stream must stay quiet, a
//! shifted one must alert on the signals that moved.

use super::stats::Observation;
use super::*;
use crate::mask::detect::{Detector, BUILTIN};
use crate::mask::replace::Style;

/// xorshift64*: deterministic traffic without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly normal: the sum of four uniforms, scaled.
    fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        let s: f64 = (0..4).map(|_| self.next()).sum();
        mean + (s - 2.0) * sd * 1.73
    }

    fn chance(&mut self, p: f64) -> bool {
        self.next() < p
    }
}

/// How the synthetic model behaves.
#[derive(Clone, Copy)]
struct Behaviour {
    chars: f64,
    refusals: f64,
    fingerprint: &'static str,
}

const STABLE: Behaviour = Behaviour {
    chars: 400.0,
    refusals: 0.03,
    fingerprint: "fp-a",
};

fn observation(rng: &mut Rng, b: Behaviour) -> Observation {
    let chars = rng.normal(b.chars, b.chars / 4.0).max(1.0).round();
    let failed = rng.chance(0.01);
    let refused = rng.chance(b.refusals);
    Observation {
        numeric: [
            (!failed).then_some(chars),
            Some((chars / 4.0).round()),
            Some(rng.normal(120.0, 30.0).max(1.0)),
            Some(rng.normal(40.0, 5.0).max(1.0)),
        ],
        cats: [
            if rng.chance(0.05) { 2 } else { 1 },
            refused as u8,
            failed as u8,
            1,
            rng.chance(0.1) as u8,
        ],
        pii: rng.chance(0.2) as u64,
        model: Some("m-1".into()),
        fingerprint: Some(b.fingerprint.into()),
    }
}

fn config() -> DriftConfig {
    serde_yaml::from_str("{window: 200, baseline_calls: 300, evaluate_every: 20}").unwrap()
}

fn engine(cfg: &DriftConfig) -> (Drift, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let detector = Arc::new(Detector::new(&BUILTIN, &[]).unwrap());
    let rules = Arc::new(MaskRules::uniform(detector, Style::Label, 16384));
    let alerts = Alerts::new(metrics.clone(), None);
    (
        Drift::build(cfg, rules, alerts, &mut Vec::new()).unwrap(),
        metrics,
    )
}

/// Feeds `n` calls; returns the alerts raised.
fn feed(d: &mut Drift, rng: &mut Rng, b: Behaviour, n: usize) -> Vec<Value> {
    let route: Arc<str> = Arc::from("chat");
    (0..n)
        .flat_map(|_| d.add(route.clone(), Some("m-1"), observation(rng, b)))
        .collect()
}

/// Learned baselines are saved by a thread of their own.
fn wait_for(mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signals(alerts: &[Value], state: &str) -> BTreeSet<String> {
    alerts
        .iter()
        .filter(|a| a["state"] == state)
        .map(|a| a["signal"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_stable_stream_raises_no_alert() {
    // The false-alarm check: several seeds, 2,000 calls after the baseline.
    for seed in 1..=8u64 {
        let (mut d, metrics) = engine(&config());
        let mut rng = Rng(0x9E3779B97F4A7C15 ^ seed);
        assert!(feed(&mut d, &mut rng, STABLE, 300).is_empty());
        let alerts = feed(&mut d, &mut rng, STABLE, 2000);
        assert!(alerts.is_empty(), "seed {seed}: {alerts:#?}");
        let score = metrics
            .drift_score
            .with_label_values(&["chat", "m-1", "response_chars"])
            .get();
        assert!(score > 0.0 && score < 0.15, "seed {seed}: {score}");
    }
}

#[test]
fn a_shifted_stream_alerts_on_what_moved_and_resolves_when_it_returns() {
    let (mut d, metrics) = engine(&config());
    let mut rng = Rng(42);
    feed(&mut d, &mut rng, STABLE, 300);
    assert!(feed(&mut d, &mut rng, STABLE, 400).is_empty());
    let shifted = Behaviour {
        chars: 900.0,
        refusals: 0.25,
        fingerprint: "fp-b",
    };
    let alerts = feed(&mut d, &mut rng, shifted, 400);
    let fired = signals(&alerts, "firing");
    for s in [
        "response_chars",
        "completion_tokens",
        "refusal",
        "fingerprint",
    ] {
        assert!(fired.contains(s), "{s} did not fire: {fired:?}");
    }
    // What did not move stays quiet.
    for s in ["ttft_ms", "finish_reason", "pii_email", "script", "error"] {
        assert!(!fired.contains(s), "{s} fired: {alerts:#?}");
    }
    // One alert per change, not one per evaluation.
    let chars: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["signal"] == "response_chars")
        .collect();
    assert_eq!(chars.len(), 1, "{chars:#?}");
    let a = chars[0];
    assert_eq!(
        (a["route"].as_str(), a["model"].as_str()),
        (Some("chat"), Some("m-1"))
    );
    assert!(a["score"].as_f64().unwrap() > 0.25);
    assert!(a["current"]["median"].as_f64().unwrap() > a["baseline"]["median"].as_f64().unwrap());
    let fp = alerts
        .iter()
        .find(|a| a["signal"] == "fingerprint")
        .unwrap();
    assert_eq!(
        (fp["field"].as_str(), fp["seen"].as_str()),
        (Some("system_fingerprint"), Some("fp-b"))
    );
    assert_eq!(fp["known"], json!(["fp-a"]));
    let m = &metrics;
    assert_eq!(
        m.drift_alerting
            .with_label_values(&["chat", "m-1", "refusal"])
            .get(),
        1
    );
    assert_eq!(
        m.drift_fingerprint_changes
            .with_label_values(&["chat", "m-1", "system_fingerprint"])
            .get(),
        1
    );

    // Back to normal (the new fingerprint is known now): alerts resolve.
    let back = Behaviour {
        fingerprint: "fp-b",
        ..STABLE
    };
    let alerts = feed(&mut d, &mut rng, back, 400);
    let resolved = signals(&alerts, "resolved");
    assert!(
        resolved.contains("response_chars") && resolved.contains("refusal"),
        "{alerts:#?}"
    );
    assert!(signals(&alerts, "firing").is_empty(), "{alerts:#?}");
    assert_eq!(
        m.drift_alerting
            .with_label_values(&["chat", "m-1", "refusal"])
            .get(),
        0
    );
}

#[test]
fn learned_baselines_are_saved_and_loaded_by_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baseline.json");
    let mut cfg = config();
    cfg.baseline_file = Some(path.display().to_string());
    let (mut d, _) = engine(&cfg);
    let mut rng = Rng(7);
    feed(&mut d, &mut rng, STABLE, 300);
    wait_for(|| path.exists());
    let file = BaselineFile::load(&path).unwrap();
    assert_eq!(file.baselines.len(), 1);
    let b = &file.baselines[0];
    assert_eq!(
        (b.route.as_str(), b.model.as_str(), b.baseline.calls),
        ("chat", "m-1", 300)
    );
    assert_eq!(b.source, "live");

    // A new engine starts from the file: the shift shows without relearning.
    let (mut d, metrics) = engine(&cfg);
    assert_eq!(
        metrics
            .drift_baseline_calls
            .with_label_values(&["chat", "m-1"])
            .get(),
        300
    );
    let shifted = Behaviour {
        chars: 900.0,
        ..STABLE
    };
    let alerts = feed(&mut d, &mut rng, shifted, 200);
    assert!(
        signals(&alerts, "firing").contains("response_chars"),
        "{alerts:#?}"
    );

    // A damaged file (a crash, a bad edit) does not stop the gateway: a
    // warning names it, baselines are learned again and replace it.
    std::fs::write(&path, "{\"version\": 1, \"baselines\": [{}]}").unwrap();
    let metrics = Arc::new(Metrics::new());
    let detector = Arc::new(Detector::new(&BUILTIN, &[]).unwrap());
    let rules = Arc::new(MaskRules::uniform(detector, Style::Label, 16384));
    let mut warnings = Vec::new();
    let mut d = Drift::build(&cfg, rules, Alerts::new(metrics, None), &mut warnings).unwrap();
    assert!(
        warnings.len() == 1 && warnings[0].contains("not a baseline file"),
        "{warnings:?}"
    );
    feed(&mut d, &mut rng, STABLE, 300);
    wait_for(|| BaselineFile::load(&path).is_ok_and(|f| f.baselines.len() == 1));

    // Saving one baseline keeps the others on disk as they are now.
    let kept = BaselineFile::load(&path).unwrap().baselines[0]
        .baseline
        .clone();
    let other = KeyedBaseline {
        route: "other".into(),
        model: "x".into(),
        learned_at: now(),
        source: "operator".into(),
        baseline: kept,
    };
    BaselineFile::merge_one(&path, other).unwrap();
    let mut d2 = engine(&cfg).0;
    let route: Arc<str> = Arc::from("chat");
    for _ in 0..300 {
        d2.add(route.clone(), Some("m-2"), observation(&mut rng, STABLE));
    }
    wait_for(|| BaselineFile::load(&path).is_ok_and(|f| f.baselines.len() == 3));
    let f = BaselineFile::load(&path).unwrap();
    let sources: BTreeSet<&str> = f.baselines.iter().map(|b| b.source.as_str()).collect();
    assert_eq!(sources, BTreeSet::from(["live", "operator"]));
}

#[test]
fn client_chosen_model_names_are_bounded_per_route() {
    let mut cfg = config();
    cfg.max_models_per_route = 2;
    let (mut d, _) = engine(&cfg);
    let mut rng = Rng(3);
    let route: Arc<str> = Arc::from("chat");
    // Calls for a model the upstream refuses take no slot.
    let mut failed = observation(&mut rng, STABLE);
    failed.cats[2] = 1;
    d.add(route.clone(), Some("no-such-model"), failed);
    // A name no model has (a log line, a query) is not a label.
    d.add(route.clone(), Some("x\ny'}"), observation(&mut rng, STABLE));
    for i in 0..10 {
        d.add(
            route.clone(),
            Some(&format!("m{i}")),
            observation(&mut rng, STABLE),
        );
    }
    let mut models: Vec<&str> = d.keys.keys().map(|(_, m)| &**m).collect();
    models.sort();
    assert_eq!(models, ["_invalid", "_other", "m0"]);
    assert_eq!(
        model_name(Some("llama-3.1-8b-instruct:q4")),
        "llama-3.1-8b-instruct:q4"
    );
    assert_eq!(model_name(Some(&"x".repeat(101))), "_invalid");
    assert_eq!(model_name(None), "-");
}

#[test]
fn refusal_phrases_match_case_and_apostrophes() {
    let r = Refusals::new(&default_refusal_phrases());
    assert!(r.matches("I’m sorry, but I can’t help with that."));
    assert!(r.matches("i CANNOT ASSIST with this request"));
    assert!(!r.matches("Sure! Here is the summary you asked for."));
    // Only the start of an answer counts.
    let late = format!("{} I cannot help with", "x".repeat(500));
    assert!(!r.matches(&late));
}

#[test]
fn the_config_names_its_mistakes() {
    let bad = |yaml: &str| {
        let cfg: DriftConfig = serde_yaml::from_str(yaml).unwrap();
        cfg.validate(&["EMAIL".into()]).unwrap_err().to_string()
    };
    assert!(
        bad("{thresholds: {refusals: 0.1}}").contains("drift.thresholds.refusals: unknown signal")
    );
    assert!(bad("{thresholds: {pii_email: 0}}").contains("above 0"));
    assert!(bad("{window: 10}").contains("drift.window"));
    assert!(bad("{evaluate_every: 900}").contains("drift.evaluate_every"));
    assert!(bad("{models_path: v1/models}").contains("drift.models_path"));
    let ok: DriftConfig =
        serde_yaml::from_str("{thresholds: {default: 0.3, ttft_ms: .inf, pii_email: 0.1}}")
            .unwrap();
    ok.validate(&["EMAIL".into()]).unwrap();
    assert_eq!(ok.threshold("ttft_ms"), f64::INFINITY);
    assert_eq!(ok.threshold("tokens_per_second"), 0.5);
    assert_eq!(ok.threshold("refusal"), 0.3);
}
