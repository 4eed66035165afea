//! Human approval end to end: the real `modelgate` binary in front of the
//! demo model. Held calls released by an approver, tickets redeemed once,
//! binding to the body and the requester, expiry, self-approval refused,
//! every step in the audit trail, two replicas sharing one real
//! `redis-server`, and the console driven by headless Chromium.
//!
//! Identities (tests/common): alice is in group `analysts`, the approver
//! group here; bob has no group.

mod common;

use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Held when `max_tokens` is over 1000; a ticket when the prompt asks for one.
fn config(up: &Upstream, approval: &str, extra: &str) -> String {
    format!(
        r#"upstreams:
  vllm:
    hosts: ["{}"]
    health_check: {{interval: 1s}}
routes:
  - {{path_prefix: "/v1/", upstream: vllm}}
policies:
  default:
    rules:
      - name: ticketed
        when: {{prompt_contains: "ticket please"}}
        action: require_approval
        approval: ticket
      - name: long-generations
        when: {{max_tokens_over: 1000}}
        action: require_approval
        approval: hold
approval:
  approver_groups: [analysts]
{approval}{extra}"#,
        up.addr
    )
}

fn body(text: &str, max_tokens: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": "llama-3-8b",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}]
    }))
    .unwrap()
}

fn client(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .build()
        .unwrap()
}

fn call(gw: &Gateway, key: &str, body: &[u8], approval: Option<&str>) -> (u16, Value) {
    let mut req = client(Duration::from_secs(60))
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(id) = approval {
        req = req.header("x-modelgate-approval", id);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

/// Sends the call on a thread (it may be held); the result arrives on the channel.
fn call_in_background(
    gw: &Gateway,
    key: &'static str,
    body: Vec<u8>,
) -> mpsc::Receiver<(u16, Value)> {
    let url = gw.url("/v1/chat/completions");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let resp = client(Duration::from_secs(60))
            .post(url)
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        let status = resp.status().as_u16();
        let _ = tx.send((status, resp.json().unwrap_or(Value::Null)));
    });
    rx
}

fn admin(gw: &Gateway, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let c = client(Duration::from_secs(10));
    let req = match method {
        "GET" => c.get(gw.admin_url(path)),
        _ => c.post(gw.admin_url(path)),
    };
    let req = req.bearer_auth(key);
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

/// Waits for exactly one pending request from `requester` and returns it.
fn pending_from(gw: &Gateway, requester: &str) -> Value {
    let mut found = Value::Null;
    wait_until(
        "a pending approval request",
        Duration::from_secs(15),
        || {
            let (s, v) = admin(gw, ALICE_KEY, "GET", "/approvals?status=pending", None);
            assert_eq!(s, 200, "{v}");
            let mine: Vec<&Value> = v["approvals"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["requester"] == requester)
                .collect();
            assert!(mine.len() <= 1, "one request per held call: {v}");
            if let Some(a) = mine.first() {
                found = (*a).clone();
                return true;
            }
            false
        },
    );
    found
}

fn decide(gw: &Gateway, key: &str, id: &str, verb: &str, comment: &str) -> (u16, Value) {
    admin(
        gw,
        key,
        "POST",
        &format!("/approvals/{id}/{verb}"),
        Some(json!({"comment": comment})),
    )
}

fn forwarded(up: &Upstream) -> usize {
    up.seen().len()
}

fn audit_yaml(dir: &str) -> String {
    format!(
        "audit:\n  sinks:\n    - {{kind: file, path: \"{dir}/audit.jsonl\", fsync_interval: 0s}}\n"
    )
}

#[test]
fn held_calls_wait_for_a_human_and_every_step_is_audited() {
    let up = Upstream::start("u");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let gw = Gateway::start(
        &config(&up, "  hold_timeout: 30s\n", &audit_yaml(&d)),
        &[],
        true,
    );
    let audit_file = dir.path().join("audit.jsonl");
    let steps = |id: &str| -> Vec<(String, Option<String>)> {
        std::fs::read_to_string(&audit_file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["kind"] == "approval" && r["id"] == id)
            .map(|r| {
                (
                    r["event"].as_str().unwrap().to_string(),
                    r["actor"]["name"].as_str().map(str::to_string),
                )
            })
            .collect()
    };

    // 1. Held, approved by alice: the waiting call completes.
    let before = forwarded(&up);
    let held = body("Summarise the account of jane.doe@example.com", 2000);
    let rx = call_in_background(&gw, BOB_KEY, held.clone());
    let a = pending_from(&gw, "bob");
    let id = a["id"].as_str().unwrap().to_string();
    assert_eq!(a["mode"], "hold");
    assert_eq!(a["rule"], "long-generations");
    assert_eq!(a["route"], "vllm");
    assert_eq!(a["body_sha256"], hex::encode(Sha256::digest(&held)));
    let summary = a["summary"].as_str().unwrap();
    assert!(
        summary.contains("Summarise the account of") && !summary.contains("jane.doe@example.com"),
        "the summary is masked: {summary}"
    );
    assert!(rx.try_recv().is_err(), "the call is held");
    assert_eq!(forwarded(&up), before, "a held call is not forwarded");
    // bob is not an approver; alice reads it by id.
    let (s, v) = decide(&gw, BOB_KEY, &id, "approve", "");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("not_approver"))
    );
    let (s, v) = admin(&gw, ALICE_KEY, "GET", &format!("/approvals/{id}"), None);
    assert_eq!((s, v["status"].as_str()), (200, Some("pending")), "{v}");
    assert!(
        gw.metrics().contains("modelgate_approvals_held 1"),
        "{}",
        gw.metrics()
    );
    let (s, v) = decide(&gw, ALICE_KEY, &id, "approve", "ok for the audit");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "approved");
    assert_eq!(v["decided_by"], "alice");
    let (s, v) = rx.recv_timeout(Duration::from_secs(10)).expect("released");
    assert_eq!(s, 200, "{v}");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    assert_eq!(forwarded(&up), before + 1);
    let (_, v) = admin(&gw, ALICE_KEY, "GET", &format!("/approvals/{id}"), None);
    assert_eq!(v["status"], "used", "single use: {v}");
    // A second decision on it is a conflict.
    let (s, v) = decide(&gw, ALICE_KEY, &id, "deny", "too late");
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("not_pending")));

    // 2. Held, denied: 403 with the approver and the comment.
    let rx = call_in_background(&gw, BOB_KEY, body("write a long report", 3000));
    let denied_id = pending_from(&gw, "bob")["id"].as_str().unwrap().to_string();
    let (s, _) = decide(&gw, ALICE_KEY, &denied_id, "deny", "not for this project");
    assert_eq!(s, 200);
    let (s, v) = rx.recv_timeout(Duration::from_secs(10)).expect("released");
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["type"], "approval_required");
    assert_eq!(v["error"]["code"], "approval_denied");
    assert_eq!(v["error"]["approval_id"], denied_id.as_str());
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("alice") && msg.contains("not for this project"),
        "{msg}"
    );
    assert_eq!(forwarded(&up), before + 1, "a denied call is not forwarded");

    // 3. Self-approval: alice's own held call; she may not approve it.
    let rx = call_in_background(&gw, ALICE_KEY, body("a long one of mine", 5000));
    let own = pending_from(&gw, "alice")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = decide(&gw, ALICE_KEY, &own, "approve", "");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("self_approval")),
        "{v}"
    );
    // Withdrawing (denying) her own request is allowed.
    assert_eq!(decide(&gw, ALICE_KEY, &own, "deny", "withdrawn").0, 200);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap().0, 403);

    // 4. A client that gives up while held: its request expires.
    // The client hangs up once the call is held (not after a fixed time, so
    // a slow machine cannot make it leave before the gateway holds it).
    let impatient = body("impatient", 2000);
    let mut conn = std::net::TcpStream::connect(&gw.addr).unwrap();
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {BOB_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        impatient.len()
    )
    .unwrap();
    conn.write_all(&impatient).unwrap();
    let gone = pending_from(&gw, "bob")["id"].as_str().unwrap().to_string();
    drop(conn);
    wait_until(
        "the abandoned request expires",
        Duration::from_secs(10),
        || {
            admin(&gw, ALICE_KEY, "GET", &format!("/approvals/{gone}"), None).1["status"]
                == "expired"
        },
    );
    assert_eq!(
        decide(&gw, ALICE_KEY, &gone, "approve", "").0,
        409,
        "an expired request cannot be approved"
    );

    // Every step is in the audit trail, with who took it; the call records
    // name the approval.
    wait_until(
        "approval steps in the audit file",
        Duration::from_secs(10),
        || steps(&id).len() == 3 && steps(&gone).len() == 2,
    );
    assert_eq!(
        steps(&id),
        vec![
            ("requested".into(), Some("bob".into())),
            ("approved".into(), Some("alice".into())),
            ("used".into(), Some("bob".into())),
        ]
    );
    assert_eq!(
        steps(&denied_id),
        vec![
            ("requested".into(), Some("bob".into())),
            ("denied".into(), Some("alice".into())),
        ]
    );
    assert_eq!(steps(&gone)[1].0, "expired");
    let records: Vec<Value> = std::fs::read_to_string(&audit_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let call_of = |aid: &str| {
        records
            .iter()
            .find(|r| r["kind"] == "call" && r["decision"]["approval"]["id"] == aid)
            .cloned()
            .unwrap_or_else(|| panic!("a call record names {aid}"))
    };
    assert_eq!(call_of(&id)["decision"]["approval"]["status"], "used");
    assert_eq!(call_of(&id)["status"], 200);
    assert_eq!(
        call_of(&denied_id)["decision"]["approval"]["status"],
        "denied"
    );
    assert_eq!(call_of(&denied_id)["status"], 403);
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(&audit_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the chain verifies: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // 5. A client that pipelines its next request while held is still
    // served (those bytes are not a hang-up), then the pipelined request is
    // served too, in order, and nothing stray reaches the model.
    let forwarded_before = forwarded(&up);
    let raw = {
        let addr = gw.addr.clone();
        let held = body("pipelined while held", 2000);
        let next = body("and then this", 10);
        std::thread::spawn(move || {
            let head = |len: usize, extra: &str| {
                format!(
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {BOB_KEY}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n{extra}\r\n"
                )
                .into_bytes()
            };
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(&[head(held.len(), ""), held].concat()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            s.write_all(&[head(next.len(), "Connection: close\r\n"), next].concat())
                .unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    let piped = pending_from(&gw, "bob")["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(600));
    let (_, a) = admin(&gw, ALICE_KEY, "GET", &format!("/approvals/{piped}"), None);
    assert_eq!(
        a["status"], "pending",
        "pipelined bytes are not a hang-up: {a}"
    );
    assert_eq!(decide(&gw, ALICE_KEY, &piped, "approve", "").0, 200);
    let out = raw.join().unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(
        out.matches("HTTP/1.1 200").count(),
        2,
        "both answered: {out}"
    );
    let seen = up.seen();
    assert_eq!(
        seen.len(),
        forwarded_before + 2,
        "the held call, then the next"
    );

    let m = gw.metrics();
    assert!(m.contains("modelgate_approvals_held 0"), "{m}");
    for line in [
        r#"modelgate_approvals_total{event="requested"} 5"#,
        r#"modelgate_approvals_total{event="approved"} 2"#,
        r#"modelgate_approvals_total{event="used"} 2"#,
    ] {
        assert!(m.contains(line), "{line} in\n{m}");
    }

    // 6. Shutting down with a held call: it is answered (503, retry) and
    // its request withdrawn, in the audit trail too.
    let mut gw = gw;
    let rx = call_in_background(&gw, BOB_KEY, body("held at shutdown", 2000));
    let last = pending_from(&gw, "bob")["id"].as_str().unwrap().to_string();
    gw.terminate();
    let (s, v) = rx.recv_timeout(Duration::from_secs(10)).expect("answered");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("approval_unavailable")),
        "{v}"
    );
    let expired: Vec<Value> = std::fs::read_to_string(&audit_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["kind"] == "approval" && r["id"] == last.as_str() && r["event"] == "expired")
        .collect();
    assert_eq!(expired.len(), 1, "withdrawn at shutdown");
    assert!(expired[0]["note"].as_str().unwrap().contains("shut down"));
}

#[test]
fn tickets_are_bound_to_the_body_and_the_requester_and_used_once() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&config(&up, "  max_pending_per_client: 3\n", ""), &[], true);
    let ticketed = body("ticket please: the quarterly numbers", 100);

    // The first call is answered at once with the approval id.
    let before = forwarded(&up);
    let (s, v) = call(&gw, BOB_KEY, &ticketed, None);
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["type"], "approval_required");
    assert_eq!(v["error"]["code"], "approval_required");
    let id = v["error"]["approval_id"].as_str().unwrap().to_string();
    let status_url = v["error"]["status_url"].as_str().unwrap().to_string();
    assert_eq!(status_url, format!("/modelgate/approvals/{id}"));
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("x-modelgate-approval"));

    // The requester reads its status on the proxy listener; nobody else can.
    let status = |key: &str| {
        let r = http()
            .get(gw.url(&status_url))
            .bearer_auth(key)
            .send()
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().unwrap_or(Value::Null),
        )
    };
    let (s, v) = status(BOB_KEY);
    assert_eq!((s, v["status"].as_str()), (200, Some("pending")), "{v}");
    assert_eq!(status(ALICE_KEY).0, 404);

    // Before approval the ticket admits nothing.
    let (s, v) = call(&gw, BOB_KEY, &ticketed, Some(&id));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("approval_invalid")),
        "{v}"
    );

    let (s, v) = decide(&gw, ALICE_KEY, &id, "approve", "fine");
    assert_eq!(s, 200, "{v}");
    assert_eq!(status(BOB_KEY).1["status"], "approved");

    // Another body (the rule still holds for it) is refused...
    let other = body("ticket please: the salaries", 100);
    let (s, v) = call(&gw, BOB_KEY, &other, Some(&id));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("approval_invalid")),
        "{v}"
    );
    // ...so is the same body to another path the rule also holds for, or
    // with another content type (which could change the route or skip
    // request masking)...
    let to = |path: &str, ctype: &str| {
        let r = client(Duration::from_secs(10))
            .post(gw.url(path))
            .bearer_auth(BOB_KEY)
            .header("content-type", ctype)
            .header("x-modelgate-approval", id.as_str())
            .body(ticketed.clone())
            .send()
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().unwrap_or(Value::Null),
        )
    };
    for (path, ctype) in [
        ("/v1/completions", "application/json"),
        ("/v1/chat/completions", "text/plain"),
        ("/v1/chat/completions?x=1", "application/json"),
    ] {
        let (s, v) = to(path, ctype);
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (403, Some("approval_invalid")),
            "{path} {ctype}: {v}"
        );
    }
    // ...so is another client with the same body...
    let (s, v) = call(&gw, ALICE_KEY, &ticketed, Some(&id));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("approval_invalid")),
        "{v}"
    );
    assert_eq!(forwarded(&up), before, "nothing forwarded yet");
    // ...and neither used it up: the requester's exact call goes through once.
    let (s, v) = call(&gw, BOB_KEY, &ticketed, Some(&id));
    assert_eq!(s, 200, "{v}");
    let seen = up.seen();
    assert_eq!(seen.len(), before + 1);
    assert!(
        seen.last().unwrap()["headers"]
            .get("x-modelgate-approval")
            .is_none(),
        "the ticket header stays at the gateway"
    );
    let (s, v) = call(&gw, BOB_KEY, &ticketed, Some(&id));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("approval_invalid")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("used"),
        "{v}"
    );
    assert_eq!(status(BOB_KEY).1["status"], "used");
    assert_eq!(forwarded(&up), before + 1);

    // One client cannot fill the store for everyone: its pending requests
    // are capped (max_pending_per_client: 3 here).
    for i in 0..3 {
        let (s, v) = call(
            &gw,
            BOB_KEY,
            &body(&format!("ticket please #{i}"), 10),
            None,
        );
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (403, Some("approval_required")),
            "{v}"
        );
    }
    let (s, v) = call(&gw, BOB_KEY, &body("ticket please #4", 10), None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("too_many_pending_approvals")),
        "{v}"
    );
    let (s, v) = call(&gw, ALICE_KEY, &body("ticket please, alice", 10), None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("approval_required")),
        "{v}"
    );

    // A call no rule holds for ignores a stray ticket header.
    let (s, _) = call(&gw, BOB_KEY, &body("hello", 10), Some("apr_0000"));
    assert_eq!(s, 200);

    // Bad input on the admin API gets clear errors.
    let (s, v) = admin(&gw, ALICE_KEY, "GET", "/approvals?status=maybe", None);
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_status")));
    let (s, _) = admin(&gw, ALICE_KEY, "GET", "/approvals/apr_nope", None);
    assert_eq!(s, 404);
    let (s, _) = admin(&gw, "wrong-key", "GET", "/approvals", None);
    assert_eq!(s, 401);
    let resp = client(Duration::from_secs(5))
        .post(gw.admin_url(&format!("/approvals/{id}/approve")))
        .bearer_auth(ALICE_KEY)
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // The stream and /me need a signed-in identity; the stream an approver.
    for path in ["/approvals/stream", "/approvals/me", "/approvals"] {
        let r = client(Duration::from_secs(5))
            .get(gw.admin_url(path))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }
    for path in ["/approvals/stream", "/approvals?status=pending"] {
        let r = client(Duration::from_secs(5))
            .get(gw.admin_url(path))
            .bearer_auth(BOB_KEY)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{path}");
    }
    let (s, me) = admin(&gw, BOB_KEY, "GET", "/approvals/me", None);
    assert_eq!(
        (s, me["name"].as_str(), me["approver"].as_bool()),
        (200, Some("bob"), Some(false))
    );
    // A stray ticket header that is not an id is refused without echoing it.
    let (s, v) = call(&gw, BOB_KEY, &ticketed, Some("<script>x</script>"));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("approval_invalid")),
        "{v}"
    );
    assert!(
        !v["error"]["message"].as_str().unwrap().contains("<script>"),
        "{v}"
    );
}

#[test]
fn requests_expire_when_nobody_decides() {
    let up = Upstream::start("u");
    let gw = Gateway::start(
        &config(&up, "  ttl: 2s\n  hold_timeout: 1s\n  grant_ttl: 2s\n", ""),
        &[],
        true,
    );
    // Held: nobody decides within hold_timeout → 403 approval_expired.
    let started = Instant::now();
    let (s, v) = call(&gw, BOB_KEY, &body("write a long report", 2000), None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("approval_expired")),
        "{v}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let held_id = v["error"]["approval_id"].as_str().unwrap().to_string();
    let (_, a) = admin(
        &gw,
        ALICE_KEY,
        "GET",
        &format!("/approvals/{held_id}"),
        None,
    );
    assert_eq!(a["status"], "expired");

    // A ticket nobody approves within ttl cannot be approved afterwards.
    let t = body("ticket please", 10);
    let (_, v) = call(&gw, BOB_KEY, &t, None);
    let id = v["error"]["approval_id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(2500));
    let (s, v) = decide(&gw, ALICE_KEY, &id, "approve", "");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("not_pending")),
        "{v}"
    );
    wait_until("the sweeper expires it", Duration::from_secs(5), || {
        admin(&gw, ALICE_KEY, "GET", &format!("/approvals/{id}"), None).1["status"] == "expired"
    });

    // An approved ticket unused past grant_ttl is refused.
    let (_, v) = call(&gw, BOB_KEY, &t, None);
    let id = v["error"]["approval_id"].as_str().unwrap().to_string();
    assert_eq!(decide(&gw, ALICE_KEY, &id, "approve", "").0, 200);
    std::thread::sleep(Duration::from_millis(2500));
    let (s, v) = call(&gw, BOB_KEY, &t, Some(&id));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("approval_invalid")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("time to use it has passed"),
        "{v}"
    );
}

#[test]
fn two_replicas_share_approvals_through_redis() {
    let up = Upstream::start("u");
    let redis = Redis::start();
    // The re-read that would also release a held call comes only after an
    // hour, so a prompt release can only be the pub/sub message.
    let shared = format!(
        "  store: redis\n  redis: {{url: \"redis://127.0.0.1:{}/0\", key_prefix: \"t:\", recheck: 1h}}\n  hold_timeout: 30s\n",
        redis.port
    );
    let a = Gateway::start(&config(&up, &shared, ""), &[], true);
    let b = Gateway::start(&config(&up, &shared, ""), &[], true);
    let (_, ready) = admin(&a, ADMIN_TOKEN, "GET", "/readyz", None);
    assert_eq!(ready["approval_store"]["kind"], "redis", "{ready}");

    // Held on A, listed and approved on B: A's call is released promptly.
    let rx = call_in_background(&a, BOB_KEY, body("a long report via A", 2000));
    let id = pending_from(&b, "bob")["id"].as_str().unwrap().to_string();
    assert_eq!(decide(&b, ALICE_KEY, &id, "approve", "from B").0, 200);
    let (s, v) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("released by pub/sub: the re-read is an hour away");
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        admin(&a, ALICE_KEY, "GET", &format!("/approvals/{id}"), None).1["status"],
        "used"
    );

    // Denied on A, held on B.
    let rx = call_in_background(&b, BOB_KEY, body("another long one via B", 2000));
    let id = pending_from(&a, "bob")["id"].as_str().unwrap().to_string();
    assert_eq!(decide(&a, ALICE_KEY, &id, "deny", "no").0, 200);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap().0, 403);

    // A ticket from B, approved on A, redeemed on B, then refused on A.
    let t = body("ticket please across replicas", 10);
    let (_, v) = call(&b, BOB_KEY, &t, None);
    let id = v["error"]["approval_id"].as_str().unwrap().to_string();
    assert_eq!(decide(&a, ALICE_KEY, &id, "approve", "").0, 200);
    assert_eq!(call(&b, BOB_KEY, &t, Some(&id)).0, 200);
    let (s, v) = call(&a, BOB_KEY, &t, Some(&id));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("approval_invalid")),
        "{v}"
    );
}

#[test]
fn the_console_in_headless_chromium_releases_a_held_call() {
    let root = env!("CARGO_MANIFEST_DIR");
    let driver = format!("{root}/tests/browser/approve.mjs");
    assert!(
        std::path::Path::new(&format!(
            "{root}/tests/browser/node_modules/playwright-core"
        ))
        .exists(),
        "tests/browser/node_modules is missing: run `make test` (it runs `npm ci` there)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run `make test` (it installs Debian's chromium)"
    );
    let up = Upstream::start("u");
    let gw = Gateway::start(&config(&up, "  hold_timeout: 60s\n", ""), &[], true);
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("console.png");
    let mut node = Command::new("node")
        .arg(&driver)
        .env("CONSOLE_URL", gw.admin_url("/ui"))
        .env("APPROVER_TOKEN", ALICE_KEY)
        .env("EXPECT_REQUESTER", "bob")
        .env("COMMENT", "approved in the browser test")
        .env("SCREENSHOT", &shot)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (Node.js 20)");
    // Send the held call only once the page is live, so it must appear by
    // the live update, not the first list load.
    let stderr = node.stderr.take().unwrap();
    let (live_tx, live_rx) = mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("stream is live") {
                let _ = live_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    live_rx
        .recv_timeout(Duration::from_secs(45))
        .expect("the console signs in and goes live");
    let before = forwarded(&up);
    let rx = call_in_background(&gw, BOB_KEY, body("browser test: a long report", 2000));
    let out = node.wait_with_output().unwrap();
    let stderr = log.join().unwrap();
    assert!(
        out.status.success(),
        "approve.mjs failed (screenshot {}):\n{stderr}",
        shot.display()
    );
    let printed: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    let id = printed["approved_id"].as_str().unwrap();
    let (s, v) = rx.recv_timeout(Duration::from_secs(15)).expect("released");
    assert_eq!(s, 200, "{v}");
    assert_eq!(forwarded(&up), before + 1);
    let (_, a) = admin(&gw, ALICE_KEY, "GET", &format!("/approvals/{id}"), None);
    assert_eq!(a["status"], "used");
    assert_eq!(a["decided_by"], "alice");
    assert_eq!(a["comment"], "approved in the browser test");
}
