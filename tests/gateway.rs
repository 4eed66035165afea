//! Integration tests of the gateway core: identity, credential swap,
//! streaming, model routing, failover, config checking, bad input, admin.
//! Each test starts the real `modelgate` binary against real upstream
//! processes on loopback.

mod common;

use common::*;
use std::io::Read;
use std::time::{Duration, Instant};

const UPSTREAM_SECRET: &str = "svc-secret-7f3a9c";

fn one_pool(up: &Upstream, extra: &str) -> String {
    one_pool_at(&up.addr, extra)
}

/// `one_pool` for a model host at `addr` that is not an `Upstream`.
fn one_pool_at(addr: &str, extra: &str) -> String {
    one_pool_checked(addr, "1s", extra)
}

/// `one_pool_at` with health checks `interval` apart (the first one runs at
/// start-up).
fn one_pool_checked(addr: &str, interval: &str, extra: &str) -> String {
    format!(
        "upstreams:\n  vllm:\n    hosts: [\"{addr}\"]\n    credential: \"Bearer ${{TEST_UPSTREAM_KEY}}\"\n    health_check: {{interval: {interval}}}\nroutes:\n  - {{path_prefix: \"/v1/\", upstream: vllm}}\n{extra}"
    )
}

/// Passthrough policy (no masking) for the tests that read the wire bytes.
const NO_MASKING: &str = "policies:\n  default: {mask: {response: none}}\n";

fn error_of(resp: reqwest::blocking::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "application/json",
        "errors are JSON"
    );
    assert!(resp.headers().contains_key("x-request-id"));
    (status, resp.json().unwrap())
}

#[test]
fn clients_need_a_valid_key_and_the_upstream_sees_only_the_service_credential() {
    let up = Upstream::start("u1");
    let gw = Gateway::start(
        &one_pool(&up, ""),
        &[("TEST_UPSTREAM_KEY", UPSTREAM_SECRET)],
        true,
    );
    let c = http();
    let url = gw.url("/v1/chat/completions");

    let (status, body) = error_of(
        c.post(&url)
            .json(&chat("demo-model", false))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 401);
    assert_eq!(body["error"]["type"], "authentication_error");
    let (status, body) = error_of(
        c.post(&url)
            .bearer_auth("not-a-key")
            .json(&chat("demo-model", false))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 401);
    assert_eq!(body["error"]["message"], "Invalid API key.");

    let r = c
        .post(&url)
        .bearer_auth(ALICE_KEY)
        .json(&chat("demo-model", false))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    let text = r.text().unwrap();
    assert!(text.contains("chat.completion"), "{text}");
    assert!(!text.contains(UPSTREAM_SECRET));
    let r = c
        .post(&url)
        .header("x-api-key", BOB_KEY)
        .json(&chat("demo-model", false))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    // Only the two authenticated calls reached the upstream, each carrying the
    // service credential and none of the client's.
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for req in &seen {
        let h = &req["headers"];
        assert_eq!(h["authorization"], format!("Bearer {UPSTREAM_SECRET}"));
        assert!(h.get("x-api-key").is_none(), "{h}");
        assert_eq!(h["accept-encoding"], "identity");
        let all = h.to_string();
        assert!(!all.contains(ALICE_KEY) && !all.contains(BOB_KEY), "{all}");
    }
    // Neither secret appears in the gateway's log (debug level).
    let log = gw.log_text();
    assert!(!log.is_empty());
    for secret in [UPSTREAM_SECRET, ALICE_KEY, BOB_KEY] {
        assert!(!log.contains(secret), "log leaks {secret}");
    }
}

#[test]
fn sse_events_arrive_one_by_one_before_the_upstream_finishes() {
    // The model sends its role chunk and first token, then holds the other
    // four tokens and the end back until the client has the first token:
    // a gateway that waits for the end never delivers it.
    let events = openai_chat_events(&["tok "; 5]);
    let model = HeldStream::start(
        "text/event-stream",
        events[..2].to_vec(),
        events[2..].to_vec(),
    );
    let gw = Gateway::start(
        &one_pool_at(&model.addr, ""),
        &[("TEST_UPSTREAM_KEY", UPSTREAM_SECRET)],
        true,
    );
    let resp = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(ALICE_KEY)
        .json(&chat("demo-model", true))
        .send()
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (text, _) = model.read(resp, "\"tok ");
    assert_eq!(text.matches("\"tok ").count(), 5, "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[test]
fn json_answers_of_any_size_arrive_whole_with_and_without_masking() {
    // Small answers arrive with their header; large ones (80 KiB, 240 KiB:
    // more than the 64 KiB body buffer) take further reads of the upstream
    // body. Each size twice, so the second call reuses the upstream
    // connection the first one released.
    let up = Upstream::start("u1");
    for mask in ["none", "all"] {
        let extra = format!("policies:\n  default: {{mask: {{response: {mask}}}}}\n");
        let gw = Gateway::start(
            &one_pool(&up, &extra),
            &[("TEST_UPSTREAM_KEY", UPSTREAM_SECRET)],
            true,
        );
        for n in [1, 1, 20_000, 20_000, 60_000, 60_000, 3, 3] {
            let resp = http()
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(ALICE_KEY)
                .header("x-demo-events", n.to_string())
                .json(&chat("demo-model", false))
                .send()
                .unwrap();
            assert_eq!(resp.status(), 200, "mask {mask}, {n} pieces");
            let length = resp.content_length();
            let body = resp.bytes().unwrap();
            if mask == "none" {
                assert_eq!(
                    length,
                    Some(body.len() as u64),
                    "passthrough keeps the length"
                );
            }
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let text = v["choices"][0]["message"]["content"].as_str().unwrap();
            assert_eq!(text, "tok ".repeat(n), "mask {mask}, {n} pieces");
        }
    }
}

#[test]
fn the_model_field_picks_the_pool() {
    let llama = Upstream::start("llama-host");
    let qwen = Upstream::start("qwen-host");
    let body = format!(
        "upstreams:\n  llama: {{hosts: [\"{}\"]}}\n  qwen: {{hosts: [\"{}\"]}}\nroutes:\n  - {{path_prefix: /v1/, model: \"llama-*\", upstream: llama}}\n  - {{path_prefix: /v1/, model: [\"qwen-*\", \"qwq-*\"], upstream: qwen}}\n",
        llama.addr, qwen.addr
    );
    let gw = Gateway::start(&body, &[], true);
    let c = http();
    let served_by = |model: &str| {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(ALICE_KEY)
            .json(&chat(model, false))
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let host = r
            .headers()
            .get("x-demo-upstream")
            .map(|v| v.to_str().unwrap().to_string());
        (status, host)
    };
    assert_eq!(served_by("llama-3-8b"), (200, Some("llama-host".into())));
    assert_eq!(served_by("qwen-2.5-7b"), (200, Some("qwen-host".into())));
    assert_eq!(served_by("qwq-32b"), (200, Some("qwen-host".into())));
    assert_eq!(served_by("llama-3-70b"), (200, Some("llama-host".into())));
    // No route for this model and no catch-all: 404, nothing forwarded.
    assert_eq!(served_by("mistral-7b"), (404, None));
    assert_eq!(llama.seen().len(), 2);
    assert_eq!(qwen.seen().len(), 2);
}

#[test]
fn dead_hosts_are_skipped() {
    let a = Upstream::start("a");
    let mut b = Upstream::start("b");
    let dead = format!("127.0.0.1:{}", free_port());
    // The first health check runs at start-up (readiness waits for it); the
    // next one only in an hour, so `b` dies between checks whatever the
    // machine's speed.
    let body = format!(
        "upstreams:\n  pool:\n    hosts: [\"{dead}\", \"{}\", \"{}\"]\n    health_check: {{interval: 1h}}\nroutes:\n  - {{path_prefix: /, upstream: pool}}\n",
        a.addr, b.addr
    );
    let gw = Gateway::start(&body, &[], true);
    let c = http();
    let call = || {
        c.post(gw.url("/v1/chat/completions"))
            .bearer_auth(ALICE_KEY)
            .json(&chat("m", false))
            .send()
            .unwrap()
    };
    // The health check found the never-started host dead: all calls succeed.
    for _ in 0..10 {
        assert_eq!(call().status(), 200);
    }
    let hosts: serde_json::Value = c
        .get(gw.admin_url("/upstreams"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(hosts["pool"]["hosts"][&dead], false, "{hosts}");
    assert_eq!(hosts["pool"]["hosts"][&a.addr], true, "{hosts}");

    // A host dies between health checks: connect fails, the call fails over.
    b.kill();
    let before = a.seen().len();
    for _ in 0..10 {
        assert_eq!(call().status(), 200);
    }
    assert_eq!(a.seen().len(), before + 10);
    let m = gw.metrics();
    assert!(
        m.contains("modelgate_upstream_errors_total{kind=\"connect\",upstream=\"pool\"}"),
        "{m}"
    );
}

#[test]
fn upstream_down_is_a_clean_502_without_internal_addresses() {
    let mut up = Upstream::start("only");
    let env = [("TEST_UPSTREAM_KEY", UPSTREAM_SECRET)];
    // Two gateways in front of the one host. This one checks its health at
    // start-up, then only in an hour: it cannot notice the host going down,
    // however slow the machine.
    let unnoticed = Gateway::start(&one_pool_checked(&up.addr, "1h", ""), &env, true);
    // This one checks every second.
    let gw = Gateway::start(&one_pool(&up, ""), &env, true);
    let port = up.addr.rsplit(':').next().unwrap().to_string();
    up.kill();
    let c = http();
    let check = |gw: &Gateway, expect_code: &str| {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(ALICE_KEY)
            .json(&chat("m", false))
            .send()
            .unwrap();
        let (status, body) = error_of(r);
        assert_eq!(status, 502, "{body}");
        assert_eq!(body["error"]["code"], expect_code, "{body}");
        let text = body.to_string();
        assert!(
            !text.contains("127.0.0.1") && !text.contains(&port),
            "{text}"
        );
        assert!(!text.contains(UPSTREAM_SECRET), "{text}");
    };
    // Before the health check notices: the connect fails.
    check(&unnoticed, "upstream_unavailable");
    // After: the pool has no healthy host, and the gateway is not ready.
    wait_until("readyz to fail", Duration::from_secs(10), || {
        c.get(gw.admin_url("/readyz")).send().unwrap().status() == 503
    });
    check(&gw, "no_healthy_upstream");
    for g in [&unnoticed, &gw] {
        assert!(!g.log_text().contains(UPSTREAM_SECRET));
    }
}

#[test]
fn bad_input_gets_clear_errors_and_the_gateway_keeps_serving() {
    let up = Upstream::start("u1");
    let limits = "limits: {max_request_body_bytes: 2048, client_body_timeout: 1s}\n";
    let mut gw = Gateway::start(&one_pool(&up, limits), &[("TEST_UPSTREAM_KEY", "k")], true);
    let c = http();
    let url = gw.url("/v1/chat/completions");

    // Malformed JSON.
    let r = c
        .post(&url)
        .bearer_auth(ALICE_KEY)
        .header("content-type", "application/json")
        .body("{\"model\": \"m\", \"messages\": [")
        .send()
        .unwrap();
    let (status, body) = error_of(r);
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));

    // Oversized, declared and chunked.
    let big = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(4000)}]});
    let (status, body) = error_of(
        c.post(&url)
            .bearer_auth(ALICE_KEY)
            .json(&big)
            .send()
            .unwrap(),
    );
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "request_too_large");
    let chunked = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE_KEY}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n{}\r\n0\r\n\r\n",
        "y".repeat(0x1000)
    );
    let answer = raw_exchange(&gw.addr, chunked.as_bytes(), None, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Unknown route.
    let (status, body) = error_of(
        c.get(gw.url("/admin/secret"))
            .bearer_auth(ALICE_KEY)
            .send()
            .unwrap(),
    );
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "unknown_route");

    // A client that declares a body and never sends it (slowloris): 408.
    let started = Instant::now();
    let slow = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\":"
    );
    let answer = raw_exchange(&gw.addr, slow.as_bytes(), None, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A body that trickles in, a byte every 200 ms: the timeout is for the
    // whole body, not for each piece, so 408 comes after about 1 s, where
    // the body would take 12 s.
    let mut trickle = std::net::TcpStream::connect(&gw.addr).unwrap();
    trickle
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE_KEY}\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n"
    );
    std::io::Write::write_all(&mut trickle, head.as_bytes()).unwrap();
    let started = Instant::now();
    let mut writer = trickle.try_clone().unwrap();
    let feeder = std::thread::spawn(move || {
        for _ in 0..60 {
            if std::io::Write::write_all(&mut writer, b" ").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let mut answer = [0u8; 12];
    trickle.read_exact(&mut answer).unwrap();
    let took = started.elapsed();
    assert_eq!(
        &answer,
        b"HTTP/1.1 408",
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(took < Duration::from_secs(4), "408 after {took:?}");
    drop(trickle);
    feeder.join().unwrap();

    // Garbage instead of HTTP.
    let answer = raw_exchange(
        &gw.addr,
        b"\x16\x03\x01 hello\r\n\r\n",
        None,
        Duration::from_secs(5),
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );

    // None of that reached the upstream, and the gateway still serves.
    assert!(gw.is_running());
    assert_eq!(up.seen().len(), 0);
    let r = c
        .post(&url)
        .bearer_auth(ALICE_KEY)
        .json(&chat("m", false))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn admin_listener_health_readiness_and_metrics() {
    let up = Upstream::start("u1");
    let gw = Gateway::start(&one_pool(&up, ""), &[("TEST_UPSTREAM_KEY", "k")], true);
    let c = http();
    assert_eq!(
        c.get(gw.admin_url("/healthz")).send().unwrap().status(),
        200
    );
    let ready: serde_json::Value = c
        .get(gw.admin_url("/readyz"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["upstreams"]["vllm"], true);

    for _ in 0..3 {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(ALICE_KEY)
            .json(&chat("m", true))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().unwrap();
    }
    let _ = c
        .post(gw.url("/v1/chat/completions"))
        .json(&chat("m", false))
        .send()
        .unwrap();

    assert_eq!(
        c.get(gw.admin_url("/metrics")).send().unwrap().status(),
        401
    );
    assert_eq!(
        c.get(gw.admin_url("/metrics"))
            .bearer_auth("wrong")
            .send()
            .unwrap()
            .status(),
        401
    );
    let m = gw.metrics();
    assert!(
        m.contains("modelgate_requests_total{client=\"alice\",route=\"vllm\",status=\"200\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("modelgate_requests_total{client=\"-\",route=\"-\",status=\"401\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("modelgate_time_to_first_byte_seconds_count{route=\"vllm\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("modelgate_request_duration_seconds_bucket"),
        "{m}"
    );
    assert!(m.contains("modelgate_in_flight_requests 0"), "{m}");
}

#[test]
fn config_test_mode_accepts_good_and_names_the_broken_key() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let good = "listen: [\"127.0.0.1:1\"]\nupstreams:\n  vllm: {hosts: [\"127.0.0.1:2\"], credential: \"Bearer ${MG_TEST_KEY}\"}\nroutes:\n  - {path_prefix: /, upstream: vllm}\n";
    let run = |path: &std::path::Path, env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("-t").arg("-c").arg(path).env_remove("MG_TEST_KEY");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };

    let (code, out) = run(&write("good.yaml", good), &[("MG_TEST_KEY", "x")]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("test is successful"), "{out}");

    let (code, out) = run(&write("unset.yaml", good), &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("upstreams.vllm.credential: environment variable `MG_TEST_KEY` is not set"),
        "{out}"
    );
    assert!(out.contains("test failed"), "{out}");

    let cases = [
        (
            "hosts:",
            "hostz:",
            "upstreams.vllm.hostz: unknown field `hostz`",
        ),
        (
            "upstream: vllm}",
            "upstream: tgi}",
            "routes[0].upstream: unknown upstream `tgi` (defined: vllm)",
        ),
        (
            "127.0.0.1:1",
            "localhost",
            "listen[0]: `localhost` is not an IP:port address",
        ),
        (
            "routes:",
            "server: {threads: two}\nroutes:",
            "server.threads: invalid type",
        ),
        (
            "path_prefix: /,",
            "path_prefix: /, model: \"[\",",
            "routes[0].model[0]: `[` is not a valid glob",
        ),
    ];
    for (i, (from, to, expect)) in cases.iter().enumerate() {
        let (code, out) = run(
            &write(&format!("bad{i}.yaml"), &good.replace(from, to)),
            &[("MG_TEST_KEY", "x")],
        );
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(expect), "expected `{expect}` in: {out}");
    }
    let (code, out) = run(&write("yaml.yaml", "listen: [\n"), &[]);
    assert_eq!(code, Some(1));
    assert!(out.contains("invalid YAML"), "{out}");

    // Running (not testing) a broken config fails the same way, before listening.
    let out = std::process::Command::new(BIN)
        .arg("-c")
        .arg(write("run.yaml", good))
        .env_remove("MG_TEST_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`MG_TEST_KEY` is not set"));
}

#[test]
fn hash_key_prints_the_sha256_to_paste_into_config() {
    let out = std::process::Command::new(BIN)
        .args(["hash-key", "secret"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
    );
}

#[test]
fn large_bodies_are_forwarded_whole_after_body_based_routing() {
    // Larger than Pingora's 64 KiB retry buffer: needs the body replay
    // (vendor/PATCHES.md), for both Content-Length and chunked uploads.
    let up = Upstream::start("u1");
    let gw = Gateway::start(&one_pool(&up, ""), &[("TEST_UPSTREAM_KEY", "k")], true);
    let prompt = "lorem ipsum ".repeat(30_000);
    let body = serde_json::to_vec(&serde_json::json!({
        "model": "demo-model",
        "messages": [{"role": "user", "content": prompt}]
    }))
    .unwrap();
    let r = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(ALICE_KEY)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    let mut chunked = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE_KEY}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for part in body.chunks(7_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(&gw.addr, &chunked, None, Duration::from_secs(10));
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{}",
        &answer[..answer.len().min(300)]
    );

    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    for req in seen {
        assert_eq!(req["body_len"], body.len(), "{req}");
        assert_eq!(req["model"], "demo-model");
        assert_eq!(req["headers"]["content-length"], body.len().to_string());
    }
}

#[test]
fn a_json_body_without_content_type_is_still_routed_by_model() {
    // vLLM and Ollama accept JSON without a Content-Type, so the gateway must
    // read it as JSON too, or a `model:` route (and its policy) is bypassed.
    let llama = Upstream::start("llama-host");
    let other = Upstream::start("other-host");
    let body = format!(
        "upstreams:\n  llama: {{hosts: [\"{}\"]}}\n  other: {{hosts: [\"{}\"]}}\nroutes:\n  - {{path_prefix: /v1/, model: \"llama-*\", upstream: llama}}\n  - {{path_prefix: /, upstream: other}}\n",
        llama.addr, other.addr
    );
    let gw = Gateway::start(&body, &[], true);
    let json = r#"{"model":"llama-3-8b","messages":[{"role":"user","content":"hi"}]}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE_KEY}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    );
    let answer = raw_exchange(&gw.addr, request.as_bytes(), None, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-demo-upstream: llama-host"),
        "{answer}"
    );
    assert_eq!(other.seen().len(), 0);
}

#[test]
fn expect_100_continue_gets_its_go_ahead_and_is_not_forwarded() {
    use std::io::Write;
    let up = Upstream::start("u1");
    let gw = Gateway::start(&one_pool(&up, ""), &[("TEST_UPSTREAM_KEY", "k")], true);
    let json = serde_json::to_string(&chat("m", false)).unwrap();
    let mut s = std::net::TcpStream::connect(&gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        json.len()
    )
    .unwrap();
    // The go-ahead comes before the body is sent.
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert!(
        std::str::from_utf8(&buf[..n])
            .unwrap()
            .starts_with("HTTP/1.1 100"),
        "{:?}",
        &buf[..n]
    );
    s.write_all(json.as_bytes()).unwrap();
    let mut rest = String::new();
    let _ = s.read_to_string(&mut rest);
    assert!(rest.contains("HTTP/1.1 200"), "{rest}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0]["headers"].get("expect").is_none(), "{}", seen[0]);
}

#[test]
fn a_json_response_too_large_to_mask_is_a_clean_502() {
    let up = Upstream::start("u1");
    let gw = Gateway::start(
        &one_pool(&up, "masking: {max_json_body_bytes: 100}\n"),
        &[("TEST_UPSTREAM_KEY", "k")],
        true,
    );
    let r = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(ALICE_KEY)
        .json(&chat("m", false))
        .send()
        .unwrap();
    let (status, body) = error_of(r);
    assert_eq!(status, 502, "{body}");
    assert!(!body.to_string().contains("@example.com"));
}

#[test]
fn an_unauthenticated_body_is_not_drained() {
    // A 401 is answered before the body is read. A client that declares a
    // huge body and never sends it must not hold the connection open. (This
    // held before the gateway also disabled keep-alive on 401; it guards the
    // behaviour, whichever layer provides it.)
    let up = Upstream::start("u1");
    let gw = Gateway::start(&one_pool(&up, ""), &[("TEST_UPSTREAM_KEY", "k")], true);
    let started = Instant::now();
    let answer = raw_exchange(
        &gw.addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{\"model\":",
        None,
        Duration::from_secs(20),
    );
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "held open {:?}",
        started.elapsed()
    );
}

/// A model host that answers one canned JSON response per request and
/// sends each request's head (everything up to the blank line) to the test.
fn recording_model() -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::Write;
    raw_model(|mut s, tx| {
        let mut seen = Vec::new();
        // Health checks connect and close without a request.
        while let Some((head, len)) = read_message(&mut s, &mut seen) {
            seen.drain(..len);
            let _ = tx.send(head);
            let body = r#"{"id":"x","object":"chat.completion","choices":[]}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Model-Trace: m-1\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    })
}

#[test]
fn header_names_are_relayed_lower_case_unless_case_is_preserved() {
    let (addr, heads) = recording_model();
    let body = chat("demo-model", false).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ALICE_KEY}\r\n\
         Content-Type: application/json\r\nX-Client-Trace: c-1\r\nContent-Length: {}\r\n\
         Connection: close\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\r\n{body}",
        body.len()
    );
    for (setting, client_header, model_header) in [
        ("", "x-client-trace: c-1", "x-model-trace: m-1"),
        (
            "http: {preserve_header_case: false}\n",
            "x-client-trace: c-1",
            "x-model-trace: m-1",
        ),
        (
            "http: {preserve_header_case: true}\n",
            "X-Client-Trace: c-1",
            "X-Model-Trace: m-1",
        ),
    ] {
        let gw = Gateway::start(
            &one_pool_at(&addr, &format!("{NO_MASKING}{setting}")),
            &[("TEST_UPSTREAM_KEY", "svc")],
            true,
        );
        let answer = raw_exchange(&gw.addr, request.as_bytes(), None, Duration::from_secs(10));
        assert!(answer.starts_with("HTTP/1.1 200"), "{setting}: {answer}");
        let head = heads.recv_timeout(Duration::from_secs(10)).unwrap();
        // Exactly as spelled: the name's case is what is being tested.
        assert!(
            head.lines().any(|l| l == client_header),
            "{setting}: the model got\n{head}"
        );
        assert!(
            answer.lines().any(|l| l.trim_end() == model_header),
            "{setting}: the client got\n{answer}"
        );
        // The values, the credential swap and the body framing are the same
        // either way; the standard names Pingora title-cases stay so.
        assert!(
            head.lines().any(|l| l == "Content-Type: application/json"),
            "{head}"
        );
        assert!(
            head.lines()
                .any(|l| l.eq_ignore_ascii_case("authorization: Bearer svc")),
            "{head}"
        );
        assert!(!head.contains(ALICE_KEY), "{head}");
        // Hop-by-hop fields stay on the client's side.
        for hop in ["connection:", "keep-alive:", "te:"] {
            assert!(
                !head
                    .lines()
                    .any(|l| l.to_ascii_lowercase().starts_with(hop)),
                "{hop} {head}"
            );
        }
        assert!(answer.ends_with(r#""choices":[]}"#), "{answer}");
    }
}

#[test]
fn each_hop_by_hop_field_stays_on_the_client_side() {
    // One field per call and no `Connection` (which alone would make every
    // removal run): each must be stripped on its own.
    let (addr, heads) = recording_model();
    let gw = Gateway::start(
        &one_pool_at(&addr, NO_MASKING),
        &[("TEST_UPSTREAM_KEY", "svc")],
        true,
    );
    let body = chat("demo-model", false).to_string();
    let mut c = std::net::TcpStream::connect(&gw.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for (name, value) in [
        ("TE", "trailers"),
        ("Trailer", "Expires"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authenticate", "Basic"),
        ("Proxy-Authorization", "Basic eDp5"),
        ("Upgrade", "h2c"),
        ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
    ] {
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ALICE_KEY}\r\n\
             Content-Type: application/json\r\n{name}: {value}\r\nX-Client-Trace: {name}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        use std::io::Write;
        c.write_all(request.as_bytes()).unwrap();
        let mut seen = Vec::new();
        let (_, len) = read_message(&mut c, &mut seen).expect("an answer");
        let answer = String::from_utf8_lossy(&seen[..len]).into_owned();
        assert!(answer.starts_with("HTTP/1.1 200"), "{name}: {answer}");
        let head = heads.recv_timeout(Duration::from_secs(10)).unwrap();
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains(&format!("x-client-trace: {}", name.to_ascii_lowercase())),
            "{name}: the call did not reach the model as sent\n{head}"
        );
        let field = format!("{}:", name.to_ascii_lowercase());
        assert!(
            !lower.lines().any(|l| l.starts_with(&field)),
            "{name} reached the model\n{head}"
        );
    }
}
