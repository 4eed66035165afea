//! Fault tests: the real gateway against broken upstreams, hostile clients,
//! a full disk, and a graceful upgrade under load. Loopback only, each
//! bounded in time. Each test prints one line, `FAULT <what>: <what held>`,
//! for the README's fault table.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One pool (`read_timeout` 1 s), a catch-all route, a file audit sink
/// that fsyncs every batch and fails closed after 1 s.
fn config(hosts: &[&str], dir: &Path) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "limits: {{client_body_timeout: 1s}}\n\
         upstreams:\n  demo:\n    hosts: [{}]\n    read_timeout: 1s\n    health_check: {{kind: tcp, interval: 1s}}\n\
         routes:\n  - {{path_prefix: \"/\", upstream: demo}}\n\
         audit:\n  fail_closed_after: 1s\n  sinks:\n    - {{kind: file, path: \"{}/audit.jsonl\", fsync_interval: 0s}}\n",
        hosts.join(", "),
        dir.display()
    )
}

fn records(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("no torn or invalid line"))
        .collect()
}

/// The `call` record of request `id`, once written.
fn call_record(dir: &Path, id: &str) -> Value {
    let mut found = None;
    wait_until("the call record", Duration::from_secs(10), || {
        found = records(dir)
            .into_iter()
            .find(|r| r["kind"] == "call" && r["id"] == id);
        found.is_some()
    });
    found.unwrap()
}

fn verify_chain(dir: &Path) {
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(dir.join("audit.jsonl"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "audit verify: {err}");
}

/// `POST /__raw` (the demo model answers with exactly these chunks).
fn raw(gw: &Gateway, body: Value) -> reqwest::blocking::Response {
    http()
        .post(gw.url("/__raw"))
        .bearer_auth(ALICE_KEY)
        .json(&body)
        .send()
        .unwrap()
}

fn sse(content: &str) -> String {
    let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
    format!("data: {chunk}\n\n")
}

fn request_id(r: &reqwest::blocking::Response) -> String {
    r.headers()["x-request-id"].to_str().unwrap().to_string()
}

/// A normal call still works.
fn still_serves(gw: &Gateway) {
    let r = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(ALICE_KEY)
        .header("x-demo-delay-ms", "0")
        .json(&chat("demo-model", true))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().unwrap().contains("[DONE]"));
}

#[test]
fn an_upstream_that_dies_mid_stream() {
    let up = Upstream::start("u1");
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&config(&[&up.addr], dir.path()), &[], true);
    let started = Instant::now();
    let r = raw(
        &gw,
        json!({"headers": {"content-type": "text/event-stream"},
               "chunks": [sse("Hello "), sse("mail bob@corp"), sse(".com and more")],
               "delay_ms": 20, "abort": true}),
    );
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let mut body = Vec::new();
    let mut reader = r;
    let read = reader.read_to_end(&mut body);
    let text = String::from_utf8_lossy(&body).to_string();
    // The client sees the stream cut off (no clean end it could mistake
    // for a whole answer), at once, and no half-masked text.
    assert!(read.is_err(), "the stream must not look complete: {text}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        text.contains("Hello ") && !text.contains("bob@corp"),
        "{text}"
    );
    // What the client read, event by event.
    let read: String = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    let rec = call_record(dir.path(), &id);
    assert_eq!(rec["status"], 200);
    assert_eq!(
        rec["error"]["code"], "upstream_closed_mid_response",
        "{rec}"
    );
    // The record holds what the client was sent, no more.
    assert_eq!(
        rec["response"]["text"].as_str(),
        Some(read.as_str()),
        "client read: {text}"
    );
    still_serves(&gw);
    verify_chain(dir.path());
    println!(
        "FAULT upstream dies mid-stream: client stream cut off after {:?} (no fake end, no unmasked text); audit error upstream_closed_mid_response with the text sent; next call served",
        started.elapsed()
    );
}

#[test]
fn an_upstream_that_hangs() {
    let up = Upstream::start("u1");
    let dir = tempfile::tempdir().unwrap();
    // A host that accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for s in silent.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    let gw = Gateway::start(&config(&[&silent_addr], dir.path()), &[], false);
    let started = Instant::now();
    let r = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(ALICE_KEY)
        .json(&chat("demo-model", false))
        .send()
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status(), 504);
    let id = request_id(&r);
    let err: Value = r.json().unwrap();
    assert_eq!(err["error"]["code"], "upstream_timeout");
    // read_timeout is 1 s.
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let rec = call_record(dir.path(), &id);
    assert_eq!(
        (rec["status"].as_u64(), rec["error"]["code"].as_str()),
        (Some(504), Some("upstream_timeout"))
    );

    // A host that goes quiet in the middle of a stream.
    let dir2 = tempfile::tempdir().unwrap();
    let gw2 = Gateway::start(&config(&[&up.addr], dir2.path()), &[], true);
    let started = Instant::now();
    let r = raw(
        &gw2,
        json!({"headers": {"content-type": "text/event-stream"},
               "chunks": [sse("first "), sse("second")], "delay_ms": 60000}),
    );
    let id = request_id(&r);
    let mut body = Vec::new();
    let mut reader = r;
    let read = reader.read_to_end(&mut body);
    let stalled = started.elapsed();
    assert!(read.is_err(), "{}", String::from_utf8_lossy(&body));
    // Cut off by the gateway's 1 s read timeout: long before the model's
    // next chunk (60 s) or the client's own timeout (30 s).
    assert!(stalled < Duration::from_secs(20), "{stalled:?}");
    assert!(String::from_utf8_lossy(&body).contains("first "));
    let rec = call_record(dir2.path(), &id);
    assert_eq!(rec["error"]["code"], "upstream_timeout", "{rec}");
    still_serves(&gw2);
    println!(
        "FAULT upstream hangs: silent host -> 504 upstream_timeout after {waited:?}; stream stalled mid-answer -> cut off after {stalled:?}; both recorded with upstream_timeout; next call served"
    );
}

/// What a [`holding_model`] saw of one call.
enum Held {
    /// It has read (the start of) the request.
    Asked,
    /// The gateway closed the connection, this long after the request.
    Closed(Duration),
}

/// A model host that reads each request, answers with `answer` (nothing if
/// empty) and then holds the connection; for every call it reports when it
/// has the request, then how long after the request it saw the gateway
/// close the connection.
fn holding_model(answer: &'static str) -> (String, std::sync::mpsc::Receiver<Held>) {
    raw_model(move |mut s, tx| {
        let mut buf = [0u8; 16384];
        // Health checks connect and close without a request.
        if !matches!(s.read(&mut buf), Ok(n) if n > 0) {
            return;
        }
        let asked = Instant::now();
        let _ = tx.send(Held::Asked);
        if !answer.is_empty() {
            s.write_all(answer.as_bytes()).unwrap();
        }
        // Whatever is still to come of the request, then the close.
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = tx.send(Held::Closed(asked.elapsed()));
    })
}

/// A raw client call of the chat endpoint (Content-Length body).
fn raw_chat(gw: &Gateway, stream: bool) -> TcpStream {
    let body = chat("demo-model", stream).to_string();
    let mut c = TcpStream::connect(&gw.addr).unwrap();
    write!(
        c,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ALICE_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    c
}

#[test]
fn a_client_that_leaves_ends_the_model_call() {
    // The gateway's upstream read timeout (30 s) and the model's own (20 s)
    // are far beyond what the test waits: the upstream connection must
    // close because the client left.
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
    let event = sse("first ");
    let answer: &'static str =
        Box::leak(format!("{head}{:x}\r\n{event}\r\n", event.len()).into_boxed_str());
    for (what, answer, stream) in [
        ("before the answer", "", false),
        ("mid-stream", answer, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (addr, closed) = holding_model(answer);
        let cfg = config(&[&addr], dir.path()).replace("read_timeout: 1s", "read_timeout: 30s");
        let gw = Gateway::start(&cfg, &[], true);
        let mut c = raw_chat(&gw, stream);
        if stream {
            // The client reads the first event's whole chunk (nothing left
            // unread, so its close is a FIN, not a reset), then leaves.
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !(String::from_utf8_lossy(&got).contains("first ") && got.ends_with(b"\n\r\n")) {
                let n = c.read(&mut buf).unwrap();
                assert!(n > 0, "{}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
        } else {
            // The client leaves before the answer, once the model has the
            // request (not before the gateway forwarded it).
            assert!(
                matches!(
                    closed.recv_timeout(Duration::from_secs(10)),
                    Ok(Held::Asked)
                ),
                "the model never got the request"
            );
        }
        drop(c);
        let held = loop {
            match closed.recv_timeout(Duration::from_secs(10)) {
                Ok(Held::Closed(held)) => break held,
                Ok(Held::Asked) => {}
                Err(e) => panic!("{what}: the gateway never closed the model's connection: {e}"),
            }
        };
        assert!(held < Duration::from_secs(5), "{what}: {held:?}");
        // The call is recorded as ended by the client, with what it was sent.
        let mut rec = None;
        wait_until("the call record", Duration::from_secs(10), || {
            rec = records(dir.path())
                .into_iter()
                .find(|r| r["kind"] == "call");
            rec.is_some()
        });
        let rec = rec.unwrap();
        assert_eq!(
            rec["error"]["message"], "ConnectionClosed (Downstream)",
            "{what}: {rec}"
        );
        let sent = if stream { "first " } else { "" };
        assert_eq!(rec["response"]["text"], sent, "{what}: {rec}");
        verify_chain(dir.path());
        println!(
            "FAULT client leaves {what}: the gateway closed the model's connection {held:?} after the request; recorded as closed by the client, with the text sent"
        );
    }
}

#[test]
fn malformed_upstream_sse_and_json() {
    let up = Upstream::start("u1");
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&config(&[&up.addr], dir.path()), &[], true);
    // An event cut off mid-JSON, an event that is no JSON at all, both
    // with an email in them, between well-formed ones.
    let r = raw(
        &gw,
        json!({"headers": {"content-type": "text/event-stream"},
               "chunks": [
                   sse("ok "),
                   "data: {\"choices\":[{\"delta\":{\"content\":\"mail bob@corp.com",
                   "\n\ndata: not json at all alice@corp.com\n\n",
                   sse("end"),
                   "data: [DONE]\n\n"]}),
    );
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let text = r.text().unwrap();
    // Unparseable events are masked as plain text, never passed raw.
    assert!(
        !text.contains("bob@corp.com") && !text.contains("alice@corp.com"),
        "{text}"
    );
    assert!(
        text.contains("ok ") && text.contains("end") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    let rec = call_record(dir.path(), &id);
    assert!(
        rec["masked"]["response"]["EMAIL"].as_u64() >= Some(1),
        "{rec}"
    );
    // A JSON body cut off in the middle.
    let r = raw(
        &gw,
        json!({"headers": {"content-type": "application/json"},
               "chunks": ["{\"choices\":[{\"message\":{\"content\":\"bob@corp.com"]}),
    );
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let text = r.text().unwrap();
    assert!(
        !text.contains("bob@corp.com") && text.contains("[EMAIL]"),
        "{text}"
    );
    call_record(dir.path(), &id);
    still_serves(&gw);
    verify_chain(dir.path());
    println!(
        "FAULT malformed upstream SSE/JSON: unparseable events and a cut JSON body reach the client masked as text (no email passes), recorded; next call served"
    );
}

#[test]
fn slowloris_clients_do_not_starve_others() {
    let up = Upstream::start("u1");
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&config(&[&up.addr], dir.path()), &[], true);
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(&gw.addr).unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"mo"
        );
        s.write_all(head.as_bytes()).unwrap();
        slow.push(s);
    }
    let started = Instant::now();
    for _ in 0..10 {
        still_serves(&gw);
    }
    let served_in = started.elapsed();
    assert!(served_in < Duration::from_secs(5), "{served_in:?}");
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0; 512];
        let n = s.read(&mut buf).unwrap_or(0);
        let answer = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    println!(
        "FAULT slowloris: 50 clients holding half-sent bodies; 10 other calls served in {served_in:?}; each slow client got 408 after client_body_timeout (1 s)"
    );
}

#[test]
fn a_full_disk_fails_closed_and_loses_no_record() {
    let up = Upstream::start("u1");
    let dir = tempfile::tempdir().unwrap();
    // The gateway may write at most 8 KiB per file (RLIMIT_FSIZE), as if the
    // disk were full; SIGXFSZ is ignored so writes fail with EFBIG instead.
    let wrapper = [
        "bash",
        "-c",
        "trap '' XFSZ; exec prlimit --fsize=8192:unlimited -- \"$@\"",
        "wrap",
    ];
    let listen = |addr: &str| format!("listen: [\"{addr}\"]\n");
    let gw = Gateway::start_wrapped(
        &wrapper,
        &listen,
        &clients_yaml(),
        &config(&[&up.addr], dir.path()),
        &[],
        true,
    );
    let mut served = Vec::new();
    let mut refused = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) && refused < 3 {
        let r = http()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(ALICE_KEY)
            .header("x-demo-delay-ms", "0")
            .json(&chat("demo-model", false))
            .send()
            .unwrap();
        match r.status().as_u16() {
            200 => served.push(request_id(&r)),
            503 => refused += 1,
            s => panic!("unexpected {s}: {}", r.text().unwrap()),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused_after = started.elapsed();
    assert_eq!(refused, 3, "the gateway must refuse calls it cannot record");
    assert!(!served.is_empty());
    assert!(gw.metrics().contains("modelgate_audit_sink_errors_total"));
    // The disk has room again.
    let ok = Command::new("prlimit")
        .args(["--pid", &gw.pid().to_string(), "--fsize=unlimited"])
        .status()
        .unwrap();
    assert!(ok.success());
    wait_until(
        "records of every served call",
        Duration::from_secs(15),
        || {
            let recs = records(dir.path());
            served
                .iter()
                .all(|id| recs.iter().any(|r| r["kind"] == "call" && &r["id"] == id))
        },
    );
    still_serves(&gw);
    verify_chain(dir.path());
    println!(
        "FAULT full disk (writes fail with EFBIG): {} calls served while the sink retried, then 503 (fail closed) within {refused_after:?}; room again -> every served call's record written, chain intact, calls served again",
        served.len()
    );
}

/// Kills a process by id when dropped (the daemonised new gateway).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

#[test]
fn a_graceful_reload_under_load_fails_no_call() {
    let up = Upstream::start("u1");
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(&config(&[&up.addr], dir.path()), &[], true);
    let old_pid = gw.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop = StopOnDrop(stop.clone());
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (stop, failed, served, url) = (
            stop.clone(),
            failed.clone(),
            served.clone(),
            gw.url("/v1/chat/completions"),
        );
        workers.push(std::thread::spawn(move || {
            let client = http();
            let mut ids = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let streaming = (i + w) % 2 == 0;
                let sent = client
                    .post(&url)
                    .bearer_auth(ALICE_KEY)
                    .header("x-demo-delay-ms", "2")
                    .json(&chat("demo-model", streaming))
                    .send();
                let outcome = match sent {
                    Ok(r) if r.status() == 200 => {
                        let id = request_id(&r);
                        match r.text() {
                            Ok(t) if !streaming || t.contains("[DONE]") => Ok(id),
                            Ok(t) => Err(format!("incomplete stream: {t}")),
                            Err(e) => Err(format!("body: {e:?}")),
                        }
                    }
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(format!("{e:?}")),
                };
                match outcome {
                    Ok(id) => {
                        ids.push(id);
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failed.lock().unwrap().push(e),
                }
            }
            ids
        }));
    }
    // The load is running before the reload starts.
    wait_until(
        "calls served before the reload",
        Duration::from_secs(30),
        || served.load(Ordering::Relaxed) >= 10,
    );
    // The documented procedure: `modelgate -c FILE reload`.
    let conf = gw.dir.path().join("modelgate.yaml");
    let reload = std::thread::spawn(move || {
        Command::new(BIN)
            .arg("-c")
            .arg(&conf)
            .arg("reload")
            .output()
            .unwrap()
    });
    // Reap the old process once it exits (it is this test's child).
    let started = Instant::now();
    while !reload.is_finished() && started.elapsed() < Duration::from_secs(60) {
        gw.is_running();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        reload.is_finished(),
        "reload hung; gateway log:\n{}",
        gw.log_text()
    );
    let out = reload.join().unwrap();
    // The new process is a daemon: make sure it goes, whatever fails below.
    let new_pid: u32 = std::fs::read_to_string(gw.dir.path().join("modelgate.pid"))
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0);
    let _new = (new_pid != 0 && new_pid != old_pid).then(|| KillOnDrop(new_pid));
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "reload failed: {log}\ngateway log:\n{}",
        gw.log_text()
    );
    assert!(!gw.is_running(), "the old process is still running");
    assert_ne!(new_pid, old_pid);
    // The load goes on against the new process: at least 25 more calls,
    // and 50 in all, however fast this machine is.
    let after_handover = served.load(Ordering::Relaxed);
    wait_until(
        "calls served after the reload",
        Duration::from_secs(60),
        || {
            let n = served.load(Ordering::Relaxed);
            n >= 50 && n >= after_handover + 25
        },
    );
    stop.store(true, Ordering::Relaxed);
    let ids: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} calls failed during the reload ({} served): {failed:#?}\nreload said: {log}",
        failed.len(),
        ids.len()
    );
    assert!(ids.len() >= 50, "too little load: {}", ids.len());
    still_serves(&gw);
    // Both processes wrote the one chain: every served call has its record.
    wait_until("every call's record", Duration::from_secs(10), || {
        let recs = records(dir.path());
        ids.iter()
            .all(|id| recs.iter().any(|r| r["kind"] == "call" && &r["id"] == id))
    });
    verify_chain(dir.path());
    let recs = records(dir.path());
    let kinds: Vec<&str> = recs
        .iter()
        .filter_map(|r| r["kind"].as_str())
        .filter(|k| matches!(*k, "start" | "shutdown"))
        .collect();
    // The old writer closed its files, then the new one took over.
    assert_eq!(
        kinds,
        ["start", "shutdown", "start"],
        "one writer at a time"
    );
    println!(
        "FAULT graceful reload under load (`modelgate reload`): {} calls by 4 clients across the hand-over, 0 failed; old process {old_pid} drained and exited, new {new_pid} serving; one unbroken audit chain with every call's record",
        ids.len()
    );
}

#[test]
fn reload_refuses_what_it_cannot_do_safely() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let write = |server: &str| {
        let conf = dir.path().join("modelgate.yaml");
        std::fs::write(
            &conf,
            format!("server:\n{server}listen: [\"127.0.0.1:{}\"]\nupstreams: {{u: {{hosts: [\"127.0.0.1:1\"]}}}}\nroutes: [{{upstream: u}}]\n", free_port()),
        )
        .unwrap();
        conf
    };
    let reload = |conf: &Path| {
        let out = Command::new(BIN)
            .arg("-c")
            .arg(conf)
            .arg("reload")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // A stale pid file naming another program: it is not signalled.
    let mut other = Command::new("sleep").arg("30").spawn().unwrap();
    std::fs::write(dir.path().join("pid"), other.id().to_string()).unwrap();
    let conf = write(&format!("  pid_file: {d}/pid\n  upgrade_sock: {d}/sock\n"));
    let (ok, err) = reload(&conf);
    assert!(!ok && err.contains("not a modelgate"), "{err}");
    assert!(
        other.try_wait().unwrap().is_none(),
        "the other process was signalled"
    );
    other.kill().unwrap();
    other.wait().unwrap();
    // No running gateway.
    let (ok, err) = reload(&conf);
    assert!(!ok && err.contains("no running gateway"), "{err}");
    // Relative paths would land in `/` once the new process is a daemon.
    let conf = write("  pid_file: mg.pid\n");
    let (ok, err) = reload(&conf);
    assert!(
        !ok && err.contains("server.pid_file `mg.pid` is relative"),
        "{err}"
    );
}
