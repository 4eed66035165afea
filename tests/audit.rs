//! Integration tests of the audit trail: the real gateway writing real files
//! and delivering to a real collector process (tests/es_collector.py, the
//! Elasticsearch `_bulk` wire format), checked with `modelgate audit verify`.

mod common;

use common::*;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn pool(up: &Upstream) -> String {
    format!(
        "upstreams:\n  vllm:\n    hosts: [\"{}\"]\n    health_check: {{interval: 1s}}\nroutes:\n  - {{path_prefix: \"/v1/\", upstream: vllm}}\n",
        up.addr
    )
}

/// A config routing `/v1/` to `up` with an audit file sink at `path`.
/// `options`: lines under `audit:` (indented two spaces); `file_opts`: more
/// keys of the file sink (`, key: value`); `more_sinks`: further sink items.
fn audited(up: &Upstream, path: &Path, options: &str, file_opts: &str, more_sinks: &str) -> String {
    format!(
        "{}audit:\n{options}  sinks:\n    - {{kind: file, path: \"{}\"{file_opts}}}\n{more_sinks}",
        pool(up),
        path.display()
    )
}

/// Every complete record in the audit files of `dir`, in chain order.
fn records(dir: &Path) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for f in audit_files(dir) {
        let text = std::fs::read_to_string(&f).unwrap();
        for line in text.split_inclusive('\n') {
            if line.ends_with('\n') {
                out.push(serde_json::from_str(line.trim_end()).unwrap());
            }
        }
    }
    out.sort_by_key(|r| r["seq"].as_u64().unwrap());
    out
}

fn audit_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

fn of_kind<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["kind"] == kind).collect()
}

/// Runs `modelgate audit verify` on `files`: (passed, output).
fn verify(files: &[PathBuf], key: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["audit", "verify"]).args(files);
    if let Some(k) = key {
        cmd.args(["--key-env", "AUDIT_TEST_KEY"])
            .env("AUDIT_TEST_KEY", k);
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The text a client reads from a chat response (streamed or not).
fn client_text(body: &str, stream: bool) -> String {
    if !stream {
        let v: Value = serde_json::from_str(body).unwrap();
        return v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| {
            let v: Value = serde_json::from_str(d).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

struct Answer {
    id: String,
    status: u16,
    text: String,
    body: String,
}

fn call(gw: &Gateway, key: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
    let stream = body["stream"].as_bool().unwrap_or(false);
    let mut req = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let id = resp
        .headers()
        .get("x-request-id")
        .expect("every answer carries x-request-id")
        .to_str()
        .unwrap()
        .to_string();
    let body = resp.text().unwrap();
    let text = if status == 200 {
        client_text(&body, stream)
    } else {
        String::new()
    };
    Answer {
        id,
        status,
        text,
        body,
    }
}

/// Makes `n` calls as alice, alternating streamed and whole answers; each must succeed.
fn calls_ok(gw: &Gateway, n: usize) {
    for i in 0..n {
        let a = call(
            gw,
            ALICE_KEY,
            &chat("m", i % 2 == 0),
            &[("x-demo-delay-ms", "1")],
        );
        assert_eq!(a.status, 200, "{}", a.body);
    }
}

/// Polls `f` every 50 ms until it holds (true) or `timeout` passes (false).
fn poll(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for_records(dir: &Path, what: &str, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let mut last = Vec::new();
    wait_until(what, Duration::from_secs(30), || {
        last = records(dir);
        done(&last)
    });
    last
}

#[test]
fn every_call_has_one_complete_record_with_the_text_the_client_received() {
    let up = Upstream::start("u1");
    let audit = tempfile::tempdir().unwrap();
    let path = audit.path().join("audit.jsonl");
    let mut gw = Gateway::start(&audited(&up, &path, "", "", ""), &[], true);
    let mut answers = Vec::new();
    for i in 0..12 {
        let stream = i % 2 == 0;
        let mut body = chat("llama-3-8b", stream);
        body["messages"][0]["content"] =
            format!("I am carol{i}@example.org. How do I reach support?").into();
        let headers: &[(&str, &str)] = if i % 3 == 2 {
            &[("x-demo-events", "40"), ("x-demo-delay-ms", "1")]
        } else {
            &[("x-demo-delay-ms", "1")]
        };
        let a = call(&gw, ALICE_KEY, &body, headers);
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(!a.text.is_empty());
        answers.push((a, stream));
    }
    let denied = call(&gw, "not-a-key", &chat("llama-3-8b", false), &[]);
    assert_eq!(denied.status, 401);
    // Graceful stop: the writer drains the queue and seals a shutdown record.
    gw.terminate();

    let recs = records(audit.path());
    let calls = of_kind(&recs, "call");
    let begins = of_kind(&recs, "begin");
    assert_eq!(calls.len(), 13, "one call record per call");
    assert_eq!(begins.len(), 12, "one begin record per forwarded call");
    let by_id: HashMap<&str, &Value> = calls
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), *r))
        .collect();
    for (i, (a, stream)) in answers.iter().enumerate() {
        let r = by_id[a.id.as_str()];
        assert_eq!(r["status"], 200);
        assert_eq!(
            r["response"]["text"].as_str().unwrap(),
            a.text,
            "call {i}: stored text differs from what the client read"
        );
        assert_eq!(r["client"]["name"], "alice");
        assert_eq!(r["client"]["groups"], serde_json::json!(["analysts"]));
        assert_eq!(r["model"], "llama-3-8b");
        assert_eq!(r["route"], "vllm");
        assert_eq!(r["pool"], "vllm");
        assert_eq!(r["host"], up.addr.as_str());
        assert_eq!(r["decision"]["action"], "allow");
        assert!(r["duration_ms"].as_f64().unwrap() > 0.0);
        assert!(r["ttfb_ms"].as_f64().unwrap() <= r["duration_ms"].as_f64().unwrap());
        if !stream {
            assert!(r["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{r}");
        }
        // A JSON body is stored as JSON, masked.
        let prompt = r["request"]["body"]["messages"][0]["content"]
            .as_str()
            .unwrap();
        assert_eq!(
            prompt,
            format!("I am [EMAIL]. How do I reach support?"),
            "request body stored masked"
        );
        assert_eq!(r["request"]["stored"], "masked");
        if i % 3 != 2 {
            // The canned answer carries PII, masked on the way to the client.
            assert!(
                r["masked"]["response"]["EMAIL"].as_u64().unwrap() >= 1,
                "{r}"
            );
            assert!(a.text.contains("[EMAIL]"));
        }
        let begin = begins.iter().find(|b| b["id"] == a.id.as_str()).unwrap();
        assert!(
            begin["seq"].as_u64() < r["seq"].as_u64(),
            "begin comes first"
        );
    }
    let d = by_id[denied.id.as_str()];
    assert_eq!(d["status"], 401);
    assert_eq!(d["decision"]["action"], "deny");
    assert_eq!(d["error"]["code"], "invalid_api_key");
    assert!(d["client"].is_null());
    assert_eq!(recs.last().unwrap()["kind"], "shutdown");

    let (ok, out) = verify(&audit_files(audit.path()), None);
    assert!(ok, "{out}");
    assert!(
        out.contains("13 calls complete, 0 begun without an end record"),
        "{out}"
    );
    assert!(out.contains("clean shutdown"), "{out}");
}

#[test]
fn editing_or_deleting_a_record_makes_verify_fail_at_that_record() {
    let up = Upstream::start("u1");
    let audit = tempfile::tempdir().unwrap();
    let path = audit.path().join("audit.jsonl");
    let mut gw = Gateway::start(
        &audited(
            &up,
            &path,
            "  hmac_key: \"${AUDIT_TEST_KEY}\"
",
            ", rotate_bytes: 6000",
            "",
        ),
        &[("AUDIT_TEST_KEY", "k3y")],
        true,
    );
    calls_ok(&gw, 8);
    gw.terminate();
    let mut files = audit_files(audit.path());
    assert!(
        files.len() >= 3,
        "rotation by size made several files: {files:?}"
    );
    // Any order: verify sorts them by sequence number.
    files.reverse();
    let (ok, out) = verify(&files, Some("k3y"));
    assert!(ok, "{out}");
    assert!(out.contains("8 calls complete"), "{out}");
    let (ok, out) = verify(&files, None);
    assert!(
        !ok && out.contains("hash does not match"),
        "a keyed chain needs its key: {out}"
    );
    let (ok, out) = verify(&files, Some("wrong"));
    assert!(!ok && out.contains("hash does not match"), "{out}");

    // Work on a copy of the current file.
    let work = tempfile::tempdir().unwrap();
    let copy = work.path().join("audit.jsonl");
    let original = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert!(lines.len() >= 4, "{original}");

    // Edit record on line 3.
    let edited: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if i == 2 {
                l.replacen("\"status\":200", "\"status\":201", 1).replacen(
                    "\"kind\":\"begin\"",
                    "\"kind\":\"nigeb\"",
                    1,
                )
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_ne!(edited[2], lines[2]);
    std::fs::write(&copy, edited.join("\n") + "\n").unwrap();
    let (ok, out) = verify(std::slice::from_ref(&copy), Some("k3y"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("audit.jsonl:3 ") && out.contains("edited"),
        "{out}"
    );

    // Delete record on line 3: the next one no longer links.
    let deleted: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, l)| *l)
        .collect();
    std::fs::write(&copy, deleted.join("\n") + "\n").unwrap();
    let (ok, out) = verify(std::slice::from_ref(&copy), Some("k3y"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("audit.jsonl:3 ") && out.contains("deleted"),
        "{out}"
    );

    // A whole rotated file missing from the middle breaks the chain too.
    let mut sorted = audit_files(audit.path());
    sorted.sort();
    if sorted.len() >= 3 {
        let without: Vec<PathBuf> = sorted
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, p)| p.clone())
            .collect();
        let (ok, out) = verify(&without, Some("k3y"));
        assert!(!ok && out.contains("deleted, inserted or altered"), "{out}");
    }

    // A torn last line (crash mid-write) is reported, not a failure.
    std::fs::write(&copy, original.clone() + "{\"seq\":99,\"prev\":\"ab").unwrap();
    let (ok, out) = verify(std::slice::from_ref(&copy), Some("k3y"));
    assert!(ok && out.contains("torn line"), "{out}");
}

/// A collector process (tests/es_collector.py).
struct Collector {
    _proc: Proc,
}

impl Collector {
    fn start(port: u16, store: &Path, hang: bool) -> Collector {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/es_collector.py");
        let python = std::env::var("MODELGATE_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut cmd = Command::new(python);
        cmd.arg(script).arg(port.to_string()).arg(store);
        if hang {
            cmd.arg("--hang");
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut c = Collector { _proc: Proc(child) };
        wait_listening(&mut c._proc, port, "collector");
        c
    }
}

fn stored_hashes(store: &Path) -> Vec<String> {
    std::fs::read_to_string(store)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["hash"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn the_http_sink_delivers_every_record_and_survives_a_collector_restart() {
    let up = Upstream::start("u1");
    let audit = tempfile::tempdir().unwrap();
    let path = audit.path().join("audit.jsonl");
    let store = audit.path().join("collector.store");
    let port = free_port();
    let collector = Collector::start(port, &store, false);
    let gw = Gateway::start(
        &audited(&up, &path, "  fail_closed_after: 60s
", "", &format!("    - {{kind: elasticsearch, url: \"http://127.0.0.1:{port}\", batch_size: 5, flush_interval: 100ms, timeout: 2s}}
")),
        &[],
        true,
    );
    let file_hashes = |recs: &[Value]| -> HashSet<String> {
        recs.iter()
            .map(|r| r["hash"].as_str().unwrap().to_string())
            .collect()
    };
    calls_ok(&gw, 10);
    wait_until(
        "collector has every record",
        Duration::from_secs(20),
        || {
            let recs = records(audit.path());
            of_kind(&recs, "call").len() == 10
                && stored_hashes(&store).into_iter().collect::<HashSet<_>>() == file_hashes(&recs)
        },
    );

    // The collector goes away; calls go on (the file sink has them).
    drop(collector);
    calls_ok(&gw, 10);
    // The sink notices in the background: poll for its error count.
    let mut metrics = String::new();
    let counted = poll(Duration::from_secs(10), || {
        metrics = gw.metrics();
        metrics.contains("modelgate_audit_sink_errors_total{sink=\"elasticsearch:")
    });
    assert!(counted, "sink errors are counted: {metrics}");

    // It comes back on the same port and receives what it missed, once.
    let _collector = Collector::start(port, &store, false);
    wait_until("collector caught up", Duration::from_secs(40), || {
        let recs = records(audit.path());
        of_kind(&recs, "call").len() == 20
            && stored_hashes(&store).into_iter().collect::<HashSet<_>>() == file_hashes(&recs)
    });
    let stored = stored_hashes(&store);
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "no record stored twice");
}

/// Config of a gateway whose HTTP sink points at `port` with a one-record
/// buffer, so a stuck collector stops the writer and fills the queue.
fn stuck_sink_config(up: &Upstream, path: &Path, port: u16, audit_extra: &str) -> String {
    audited(
        up,
        path,
        &format!("  queue_capacity: 4
{audit_extra}"),
        "",
        &format!("    - {{kind: elasticsearch, url: \"http://127.0.0.1:{port}\", batch_size: 1, max_buffer: 1, flush_interval: 10ms, timeout: 1s}}
"),
    )
}

#[test]
fn a_full_queue_under_fail_closed_refuses_calls_and_none_goes_unrecorded() {
    let up = Upstream::start("u1");
    let audit = tempfile::tempdir().unwrap();
    let path = audit.path().join("audit.jsonl");
    let store = audit.path().join("collector.store");
    let port = free_port();
    // A healthy collector first, so that calls are served however long the
    // gateway takes to start; it gets stuck (hangs) only once they are in.
    let healthy = Collector::start(port, &store, false);
    let gw = Gateway::start(
        &stuck_sink_config(&up, &path, port, "  fail_closed_after: 300ms\n"),
        &[],
        true,
    );
    let mut served = Vec::new();
    for i in 0..3 {
        let a = call(
            &gw,
            ALICE_KEY,
            &chat("m", i % 2 == 0),
            &[("x-demo-delay-ms", "0")],
        );
        assert_eq!(a.status, 200, "{}", a.body);
        served.push(a.id);
    }
    // Every record written so far is delivered and acknowledged: the sink
    // is idle and healthy when the collector gets stuck.
    let es_written =
        format!("modelgate_audit_written_total{{sink=\"elasticsearch:http://127.0.0.1:{port}");
    let mut written = (0, None);
    wait_until(
        "the collector has every record",
        Duration::from_secs(30),
        || {
            let in_file = records(audit.path()).len();
            let delivered = gw
                .metrics()
                .lines()
                .find(|l| l.starts_with(&es_written))
                .and_then(|l| l.rsplit(' ').next()?.parse::<usize>().ok());
            written = (in_file, delivered);
            in_file == 1 + 2 * served.len() && delivered == Some(in_file)
        },
    );
    assert_eq!(stored_hashes(&store).len(), written.0);
    drop(healthy);
    let stuck = Collector::start(port, &store, true);
    let mut refused = 0;
    let mut served_while_stuck = 0;
    for i in 0..30 {
        let a = call(
            &gw,
            ALICE_KEY,
            &chat("m", i % 2 == 0),
            &[("x-demo-delay-ms", "0")],
        );
        match a.status {
            200 => {
                served.push(a.id);
                served_while_stuck += 1;
            }
            503 => {
                let v: Value = serde_json::from_str(&a.body).unwrap();
                assert_eq!(v["error"]["code"], "audit_unavailable", "{}", a.body);
                refused += 1;
            }
            s => panic!("unexpected status {s}: {}", a.body),
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    // The first call after the collector got stuck finds an empty queue and
    // a healthy sink; its records then wait behind the stuck writer.
    assert!(
        served_while_stuck > 0,
        "no call was served while the collector hung"
    );
    assert!(refused > 0, "the queue never filled");
    let metrics = gw.metrics();
    assert!(
        metrics.contains(&format!("modelgate_audit_refused_total {refused}")),
        "every refusal counted: {metrics}"
    );
    // Only calls that were served reached the model.
    assert_eq!(up.seen().len(), served.len());

    // The collector recovers; every served call's records reach the file.
    drop(stuck);
    std::fs::remove_file(&store).ok();
    let _collector = Collector::start(port, &store, false);
    let recs = wait_for_records(audit.path(), "records of served calls", |recs| {
        let ids: HashSet<&str> = of_kind(recs, "call")
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        served.iter().all(|id| ids.contains(id.as_str()))
    });
    for id in &served {
        assert_eq!(
            of_kind(&recs, "begin")
                .iter()
                .filter(|r| r["id"] == id.as_str())
                .count(),
            1
        );
        assert_eq!(
            of_kind(&recs, "call")
                .iter()
                .filter(|r| r["id"] == id.as_str())
                .count(),
            1
        );
    }
    // A refused call that had its final slot is recorded as refused, never as forwarded.
    for r in of_kind(&recs, "call") {
        if r["status"] == 503 {
            assert_eq!(r["decision"]["action"], "refused", "{r}");
            assert!(of_kind(&recs, "begin").iter().all(|b| b["id"] != r["id"]));
        }
    }
    let (ok, out) = verify(&audit_files(audit.path()), None);
    assert!(ok, "{out}");
}

#[test]
fn block_waits_a_bounded_time_and_drop_serves_and_counts() {
    let up = Upstream::start("u1");
    let port = free_port();
    let audit = tempfile::tempdir().unwrap();
    let _stuck = Collector::start(port, &audit.path().join("s"), true);

    let path = audit.path().join("block.jsonl");
    let gw = Gateway::start(
        &stuck_sink_config(
            &up,
            &path,
            port,
            "  on_full: block\n  block_timeout: 400ms\n  fail_closed_after: 1h\n",
        ),
        &[],
        true,
    );
    let mut waited = None;
    for _ in 0..20 {
        let t = Instant::now();
        let a = call(
            &gw,
            ALICE_KEY,
            &chat("m", false),
            &[("x-demo-delay-ms", "0")],
        );
        if a.status == 503 {
            waited = Some(t.elapsed());
            break;
        }
        assert_eq!(a.status, 200);
    }
    let waited = waited.expect("the queue never filled under block");
    assert!(
        waited >= Duration::from_millis(380),
        "refused after {waited:?}, before block_timeout"
    );
    drop(gw);

    let path = audit.path().join("drop.jsonl");
    let gw = Gateway::start(
        &stuck_sink_config(&up, &path, port, "  on_full: drop\n"),
        &[],
        true,
    );
    calls_ok(&gw, 10);
    let metrics = gw.metrics();
    assert!(
        metrics.contains("modelgate_audit_dropped_total{reason=\"sink_buffer_full\"}"),
        "{metrics}"
    );
    // The file sink still has every call.
    let drop_calls = || -> usize {
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| serde_json::from_str::<Value>(l).unwrap()["kind"] == "call")
            .count()
    };
    wait_until("drop-mode records", Duration::from_secs(20), || {
        drop_calls() >= 10
    });
    assert_eq!(drop_calls(), 10, "exactly one record per call");
}

#[test]
fn kill_9_under_load_leaves_whole_records_and_the_restarted_writer_resumes_the_chain() {
    let up = Upstream::start("u1");
    let audit = tempfile::tempdir().unwrap();
    let path = audit.path().join("audit.jsonl");
    let config = audited(&up, &path, "", "", "");
    let mut gw = Gateway::start(&config, &[], true);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _stop = StopOnDrop(stop.clone());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let url = gw.url("/v1/chat/completions");
    let load: Vec<_> = (0..4)
        .map(|t| {
            let (stop, done, url) = (stop.clone(), done.clone(), url.clone());
            std::thread::spawn(move || {
                let c = http();
                let mut ok = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = c
                        .post(&url)
                        .bearer_auth(ALICE_KEY)
                        .header("x-demo-delay-ms", "1")
                        .json(&chat("m", t % 2 == 0))
                        .send()
                        .and_then(|r| r.text());
                    if r.is_ok() {
                        ok += 1;
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                ok
            })
        })
        .collect();
    // Kill while the load runs, once enough calls were served and recorded,
    // however fast this machine is.
    wait_until("load served and recorded", Duration::from_secs(60), || {
        done.load(std::sync::atomic::Ordering::Relaxed) > 20
            && of_kind(&records(audit.path()), "call").len() > 10
    });
    gw.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served: u32 = load.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(served > 20, "load was too light: {served}");

    let (ok, out) = verify(std::slice::from_ref(&path), None);
    assert!(ok, "after kill -9: {out}");
    let before = records(audit.path());
    let last_seq = before.last().unwrap()["seq"].as_u64().unwrap();
    assert!(of_kind(&before, "call").len() > 10, "{out}");

    // Whatever the kill left, also simulate the worst case: a torn write.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map(|mut f| std::io::Write::write_all(&mut f, b"{\"seq\":"))
        .unwrap()
        .unwrap();

    let mut gw = Gateway::start(&config, &[], true);
    calls_ok(&gw, 3);
    gw.terminate();
    let (ok, out) = verify(&audit_files(audit.path()), None);
    assert!(ok, "after restart: {out}");
    assert!(out.contains("restart(s) after a crash"), "{out}");
    let after = records(audit.path());
    let start = after
        .iter()
        .find(|r| r["kind"] == "start" && r["seq"].as_u64().unwrap() > last_seq)
        .unwrap();
    assert_eq!(
        start["seq"].as_u64().unwrap(),
        last_seq + 1,
        "the chain resumes right after the last whole record"
    );
    assert_eq!(start["resumed_after_seq"].as_u64().unwrap(), last_seq);
    let torn = &start["torn"][0];
    assert!(torn["bytes"].as_u64().unwrap() >= 7, "{start}");
    let saved = std::fs::read(torn["saved_to"].as_str().unwrap()).unwrap();
    assert!(
        saved.ends_with(b"{\"seq\":"),
        "the torn bytes are kept for inspection"
    );
    assert_eq!(after.last().unwrap()["kind"], "shutdown");
    println!(
        "FAULT kill -9 under load: {} call records whole, the chain verifies; a torn tail ({} bytes) is set aside, the restarted writer resumes at seq {}",
        of_kind(&before, "call").len(),
        torn["bytes"],
        last_seq + 1
    );
}

#[test]
fn an_unwritable_audit_path_or_bad_option_fails_the_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let base = "listen: [\"127.0.0.1:1\"]\nupstreams: {u: {hosts: [\"127.0.0.1:2\"]}}\nroutes: [{upstream: u}]\n";
    let (ok, err) = check_config(
        dir.path(),
        &format!(
            "{base}audit:\n  sinks:\n    - {{kind: file, path: \"{}/audit.jsonl\"}}\n",
            blocker.display()
        ),
    );
    assert!(!ok);
    assert!(
        err.contains("audit.sinks[0].path") && err.contains("cannot open"),
        "{err}"
    );

    let (ok, err) = check_config(
        dir.path(),
        &format!("{base}audit:\n  on_full: maybe\n  sinks: []\n"),
    );
    assert!(!ok);
    assert!(
        err.contains("on_full") && err.contains("fail_closed"),
        "{err}"
    );

    let (ok, err) = check_config(
        dir.path(),
        &format!(
            "{base}audit:\n  sinks:\n    - {{kind: elasticsearch, url: \"https://es:9200\"}}\n"
        ),
    );
    assert!(!ok);
    assert!(err.contains("audit.sinks[0].url"), "{err}");
}

#[test]
fn more_calls_in_flight_than_queue_capacity_are_all_served_and_recorded() {
    // The queue bounds records waiting for the writer, not open calls: a
    // long stream holds no queue space while it runs.
    let up = Upstream::start("u1");
    let audit = tempfile::tempdir().unwrap();
    let path = audit.path().join("audit.jsonl");
    // `block`: a writer stalled (a slow fsync on a busy machine) while
    // `begin` records pile up makes a call wait, not fail. A queue that
    // wrongly capped open calls would make the 9th wait for the first to
    // end, which the in-flight check below catches.
    let gw = Gateway::start(
        &audited(
            &up,
            &path,
            "  queue_capacity: 8\n  on_full: block\n  block_timeout: 30s\n",
            "",
            "",
        ),
        &[],
        true,
    );
    let url = gw.url("/v1/chat/completions");
    // 30 streams of ~6 s, started 100 ms apart (over ~3 s): all open at
    // once, while the writer keeps up with their records.
    let t0 = Instant::now();
    let streams: Vec<_> = (0..30)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            let url = url.clone();
            std::thread::spawn(move || {
                let r = http()
                    .post(&url)
                    .bearer_auth(ALICE_KEY)
                    .header("x-demo-events", "25")
                    .header("x-demo-delay-ms", "250")
                    .json(&chat("m", true))
                    .send()
                    .unwrap();
                // Headers in: the call was admitted and is in flight.
                let open = t0.elapsed();
                let status = r.status().as_u16();
                let body = r.text().unwrap();
                (status, body, open, t0.elapsed())
            })
        })
        .collect();
    let (mut last_open, mut first_done) = (Duration::ZERO, Duration::MAX);
    for s in streams {
        let (status, body, open, done) = s.join().unwrap();
        assert_eq!(status, 200, "{body}");
        last_open = last_open.max(open);
        first_done = first_done.min(done);
    }
    assert!(
        last_open < first_done,
        "the 30 calls were not all in flight at once (last admitted at {last_open:?}, first done at {first_done:?})"
    );
    let metrics = gw.metrics();
    assert!(
        metrics.contains("modelgate_audit_refused_total 0"),
        "{metrics}"
    );
    wait_for_records(audit.path(), "30 call records", |recs| {
        of_kind(recs, "call").len() == 30
    });
}
