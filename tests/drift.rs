//! Drift detection end to end: the real gateway in front of the demo model,
//! whose answers the test shapes (`x-demo-text`, `x-demo-fingerprint`).
//! A stable stream must raise nothing; a shifted one (longer answers, more
//! refusals, a new fingerprint, a changed model list) must raise alerts as
//! metrics, audit records and webhook posts.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const REFUSAL: &str = "I'm sorry, but I can't help with that request.";

/// A deterministic stream of answers.
struct Traffic(u64);

impl Traffic {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An answer of `words` ± 40% words, or a refusal with chance `refusals`.
    fn answer(&mut self, words: f64, refusals: f64) -> String {
        if self.next() < refusals {
            return REFUSAL.to_string();
        }
        let n = (words * (0.6 + 0.8 * self.next())).round() as usize;
        let vocab = [
            "the", "model", "answers", "with", "plain", "words", "about", "data",
        ];
        (0..n.max(1))
            .map(|i| vocab[(i * 7 + n) % vocab.len()])
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A webhook receiver: answers 200 and keeps each posted body.
fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice(&body) {
                    keep.lock().unwrap().push(v);
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (url, got)
}

/// Timing signals do not alert here: on a shared test machine they move
/// with its load (the unit tests cover them with synthetic timings).
fn config(up: &Upstream, dir: &Path, hook: &str) -> String {
    format!(
        "upstreams:\n  demo:\n    hosts: [\"{up}\"]\n    health_check: {{interval: 1s}}\n\
         routes:\n  - {{name: chat, path_prefix: \"/v1/\", upstream: demo}}\n\
         audit:\n  sinks:\n    - {{kind: file, path: \"{d}/audit.jsonl\"}}\n\
         drift:\n  window: 100\n  baseline_calls: 100\n  evaluate_every: 10\n\
         \x20 baseline_file: \"{d}/baseline.json\"\n  models_check_interval: 1s\n\
         \x20 webhook: {{url: \"{hook}\", backoff: 100ms}}\n\
         \x20 thresholds: {{ttft_ms: .inf, tokens_per_second: .inf}}\n",
        up = up.addr,
        d = dir.display(),
    )
}

/// Sends `n` chat calls shaped by `words`, `refusals` and `fingerprint`.
fn send(gw: &Gateway, t: &mut Traffic, n: usize, words: f64, refusals: f64, fingerprint: &str) {
    let client = http();
    for i in 0..n {
        let stream = i % 2 == 0;
        let mut body = chat("llama-demo", stream);
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        let r = client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(ALICE_KEY)
            .header("x-demo-text", t.answer(words, refusals))
            .header("x-demo-fingerprint", fingerprint)
            .header("x-demo-delay-ms", "0")
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().unwrap();
    }
}

/// Every complete audit record, in order.
fn records(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn alerts(dir: &Path) -> Vec<Value> {
    records(dir)
        .into_iter()
        .filter(|r| r["kind"] == "drift_alert")
        .collect()
}

/// The value of the metric line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Runs the `modelgate` binary with `args`; it must succeed.
fn modelgate(args: &[&std::ffi::OsStr]) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "modelgate {args:?}: {err}");
}

/// Waits until the writer has recorded `calls` calls.
fn wait_recorded(dir: &Path, calls: usize) {
    wait_until("audit records", Duration::from_secs(20), || {
        records(dir).iter().filter(|r| r["kind"] == "call").count() >= calls
    });
}

#[test]
fn a_shift_raises_alerts_and_a_stable_stream_of_the_same_size_does_not() {
    let up = Upstream::start("up-a");
    let dir = tempfile::tempdir().unwrap();
    let (hook, posted) = webhook();
    let gw = Gateway::start(&config(&up, dir.path(), &hook), &[], true);
    let mut t = Traffic(1);

    // Baseline (100 calls), then 150 more like it, then 150 shifted ones.
    send(&gw, &mut t, 250, 40.0, 0.03, "up-a");
    wait_recorded(dir.path(), 250);
    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            "modelgate_drift_baseline_calls{model=\"llama-demo\",route=\"chat\"}"
        ),
        Some(100.0),
        "{m}"
    );
    let before = alerts(dir.path());
    assert!(before.is_empty(), "alerts on the stable part: {before:#?}");
    let learned = modelgate::drift::BaselineFile::load(&dir.path().join("baseline.json")).unwrap();
    assert_eq!(learned.baselines.len(), 1);
    assert_eq!(learned.baselines[0].baseline.calls, 100);

    send(&gw, &mut t, 150, 110.0, 0.30, "up-b");
    wait_recorded(dir.path(), 400);
    wait_until("drift alerts", Duration::from_secs(10), || {
        alerts(dir.path()).len() >= 3
    });
    let got = alerts(dir.path());
    let fired = |signal: &str| {
        got.iter()
            .find(|a| a["signal"] == signal && a["state"] == "firing")
            .unwrap_or_else(|| panic!("no {signal} alert in {got:#?}"))
    };
    let chars = fired("response_chars");
    assert_eq!(
        (chars["route"].as_str(), chars["model"].as_str()),
        (Some("chat"), Some("llama-demo"))
    );
    assert!(chars["score"].as_f64().unwrap() > 0.25, "{chars}");
    assert!(chars["current"]["median"].as_f64() > chars["baseline"]["median"].as_f64());
    fired("completion_tokens");
    let refusal = fired("refusal");
    assert!(
        refusal["current"]["yes"].as_f64().unwrap() > 0.15,
        "{refusal}"
    );
    let fp = fired("fingerprint");
    assert_eq!(
        (fp["field"].as_str(), fp["seen"].as_str()),
        (Some("system_fingerprint"), Some("up-b"))
    );
    assert!(
        !got.iter()
            .any(|a| ["script", "finish_reason", "error"].contains(&a["signal"].as_str().unwrap())),
        "signals that did not move alerted: {got:#?}"
    );

    let m = gw.metrics();
    let alerting =
        "modelgate_drift_alerting{model=\"llama-demo\",route=\"chat\",signal=\"refusal\"}";
    assert_eq!(metric(&m, alerting), Some(1.0), "{m}");
    let score =
        "modelgate_drift_score{model=\"llama-demo\",route=\"chat\",signal=\"response_chars\"}";
    assert!(metric(&m, score).unwrap() > 0.25, "{m}");
    assert_eq!(
        metric(&m, "modelgate_drift_fingerprint_changes_total{field=\"system_fingerprint\",model=\"llama-demo\",route=\"chat\"}"),
        Some(1.0)
    );

    // The model list changes on the host: the next check alerts.
    let r = http()
        .put(format!("http://{}/__models", up.addr))
        .json(&json!(["demo-model", "llama-demo-v2"]))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_until("the model-list alert", Duration::from_secs(10), || {
        alerts(dir.path())
            .iter()
            .any(|a| a["signal"] == "models_list")
    });
    let list = alerts(dir.path())
        .into_iter()
        .find(|a| a["signal"] == "models_list")
        .unwrap();
    assert_eq!(list["upstream"], "demo");
    assert_eq!(list["models"], json!(["demo-model", "llama-demo-v2"]));
    assert!(list["previous_models"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m == "qwen-demo"));

    // The webhook heard about them.
    wait_until("webhook posts", Duration::from_secs(10), || {
        let p = posted.lock().unwrap();
        ["response_chars", "refusal", "fingerprint", "models_list"]
            .iter()
            .all(|s| p.iter().any(|v| v.to_string().contains(s)))
    });

    // The alerts are part of the sealed chain.
    let audit_file = dir.path().join("audit.jsonl");
    modelgate(&["audit".as_ref(), "verify".as_ref(), audit_file.as_os_str()]);

    // A stable stream of the same size (another gateway, another seed):
    // no alert at all.
    let dir2 = tempfile::tempdir().unwrap();
    let gw2 = Gateway::start(&config(&up, dir2.path(), &hook), &[], true);
    let mut t2 = Traffic(99);
    send(&gw2, &mut t2, 400, 40.0, 0.03, "up-a");
    wait_recorded(dir2.path(), 400);
    let m2 = gw2.metrics();
    let s = metric(&m2, score).expect("scores were computed");
    assert!(s < 0.25, "{s}");
    let quiet: Vec<Value> = alerts(dir2.path())
        .into_iter()
        .filter(|a| a["signal"] != "models_list")
        .collect();
    assert!(quiet.is_empty(), "false alarms: {quiet:#?}");

    // `modelgate drift baseline` learns the same from the audit file.
    let out_file = dir2.path().join("from-audit.json");
    let audit_file = dir2.path().join("audit.jsonl");
    let args = ["drift", "baseline", "--last", "300", "--out"];
    let mut args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    args.extend([out_file.as_os_str(), audit_file.as_os_str()]);
    modelgate(&args);
    let file = modelgate::drift::BaselineFile::load(&out_file).unwrap();
    assert_eq!(file.baselines.len(), 1);
    let b = &file.baselines[0];
    assert_eq!(
        (b.route.as_str(), b.model.as_str(), b.baseline.calls),
        ("chat", "llama-demo", 300)
    );
    assert!(b.source.starts_with("audit:"));
    let live = modelgate::drift::BaselineFile::load(&dir2.path().join("baseline.json")).unwrap();
    let median = |f: &modelgate::drift::BaselineFile| {
        f.baselines[0].baseline.numeric["response_chars"]
            .median
            .unwrap()
    };
    let (a, l) = (median(&file), median(&live));
    assert!((a - l).abs() / l < 0.25, "audit {a} vs live {l}");
    assert_eq!(
        file.baselines[0].baseline.fingerprints,
        live.baselines[0].baseline.fingerprints
    );
}

#[test]
fn drift_needs_the_audit_trail_and_names_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let base = "listen: [\"127.0.0.1:1\"]\nupstreams: {u: {hosts: [\"127.0.0.1:2\"]}}\nroutes: [{upstream: u}]\n";
    let (ok, err) = check_config(dir.path(), &format!("{base}drift: {{}}\n"));
    assert!(!ok && err.contains("drift: needs `audit:`"), "{err}");
    let audit = format!(
        "{base}audit:\n  sinks:\n    - {{kind: file, path: \"{}/a.jsonl\"}}\n",
        dir.path().display()
    );
    let (ok, err) = check_config(
        dir.path(),
        &format!("{audit}drift: {{thresholds: {{lenght: 0.2}}}}\n"),
    );
    assert!(
        !ok && err.contains("drift.thresholds.lenght: unknown signal"),
        "{err}"
    );
    // A damaged baseline file is a warning: the gateway would start and
    // learn baselines again.
    std::fs::write(dir.path().join("b.json"), "not json").unwrap();
    let (ok, err) = check_config(
        dir.path(),
        &format!(
            "{audit}drift: {{baseline_file: \"{}/b.json\"}}\n",
            dir.path().display()
        ),
    );
    assert!(
        ok && err.contains("warning: drift.baseline_file") && err.contains("not a baseline file"),
        "{err}"
    );
    let (ok, err) = check_config(dir.path(), &format!("{audit}drift: {{window: 100}}\n"));
    assert!(ok, "{err}");
}
