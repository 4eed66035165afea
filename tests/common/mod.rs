//! Shared harness for integration tests: starts the real `modelgate` binary
//! and real upstream processes on ephemeral loopback ports, and kills them
//! when the handle drops.
#![allow(dead_code)]

use std::io::{Read, Write};

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// The unit tests' helpers, shared: a free port never handed out twice in
// this process, and a real `redis-server` that counts as started only when
// it reports our child's pid (retrying another port when its own is taken).
#[path = "../../src/testkit.rs"]
mod testkit;
#[allow(unused_imports)] // not every test binary uses both
pub use testkit::{free_port, RedisServer as Redis};

pub const BIN: &str = env!("CARGO_BIN_EXE_modelgate");

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts connections on `port` while `child` (the
/// process meant to listen there) is still running: a child that exited at
/// start (its port taken) fails here, by name, instead of the test talking
/// to whatever holds the port.
pub fn wait_listening(child: &mut Proc, port: u16, what: &str) {
    wait_until(what, Duration::from_secs(10), || {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("{what} on port {port} exited at start ({status}); port taken?");
        }
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    if let Ok(Some(status)) = child.0.try_wait() {
        panic!("{what} on port {port} exited at start ({status}); port taken?");
    }
}

/// Sets its flag when dropped: load threads that loop until the flag is set
/// stop even when the test panics before setting it, instead of spinning
/// for the rest of the test binary.
pub struct StopOnDrop(pub std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The demo model as a separate upstream process.
pub struct Upstream {
    pub addr: String,
    pub name: String,
    proc: Option<Proc>,
}

impl Upstream {
    pub fn start(name: &str) -> Upstream {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(BIN)
            .args(["demo-model", "--listen", &addr, "--name", name])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let up = Upstream {
            addr,
            name: name.into(),
            proc: Some(Proc(child)),
        };
        let url = format!("http://{}/health", up.addr);
        wait_until("demo model", Duration::from_secs(10), || {
            http().get(&url).send().is_ok_and(|r| r.status() == 200)
        });
        up
    }

    /// Kills the upstream process (a host going down).
    pub fn kill(&mut self) {
        self.proc.take();
    }

    /// Requests the upstream received, as its `/__requests` log reports them.
    pub fn seen(&self) -> Vec<serde_json::Value> {
        http()
            .get(format!("http://{}/__requests", self.addr))
            .send()
            .unwrap()
            .json()
            .unwrap()
    }
}

/// A running gateway.
pub struct Gateway {
    pub addr: String,
    pub admin: String,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
    proc: Proc,
}

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Client keys known to `clients_yaml()`.
pub const ALICE_KEY: &str = "alice-key-0001";
pub const BOB_KEY: &str = "bob-key-0002";

pub fn clients_yaml() -> String {
    format!(
        "clients:\n  - {{name: alice, key_sha256: \"{}\", groups: [analysts]}}\n  - {{name: bob, key_sha256: \"{}\"}}\n",
        modelgate::identity::sha256_hex(ALICE_KEY),
        modelgate::identity::sha256_hex(BOB_KEY)
    )
}

impl Gateway {
    /// Writes `body` (upstreams, routes, limits...) plus listeners and clients
    /// to a config file and starts `modelgate -c` on it. Waits for `/healthz`,
    /// and for `/readyz` when `wait_ready`.
    pub fn start(body: &str, env: &[(&str, &str)], wait_ready: bool) -> Gateway {
        let listen = |addr: &str| format!("listen: [\"{addr}\"]\n");
        Gateway::start_with(&listen, &clients_yaml(), body, env, wait_ready)
    }

    /// As `start`, with the listener section made by `listen` from the
    /// address `url` serves (called again on a retry) and a `clients` section.
    pub fn start_with(
        listen: &dyn Fn(&str) -> String,
        clients: &str,
        body: &str,
        env: &[(&str, &str)],
        wait_ready: bool,
    ) -> Gateway {
        Gateway::start_wrapped(&[], listen, clients, body, env, wait_ready)
    }

    /// As `start_with`, run under `wrapper` (a command and its arguments
    /// that ends by exec'ing the gateway command line it is given, e.g.
    /// `prlimit --fsize=N --`); the process id stays the gateway's.
    pub fn start_wrapped(
        wrapper: &[&str],
        listen: &dyn Fn(&str) -> String,
        clients: &str,
        body: &str,
        env: &[(&str, &str)],
        wait_ready: bool,
    ) -> Gateway {
        // A port from `free_port` can be taken by a parallel test before the
        // gateway binds it: then the gateway exits at once, and we retry on
        // fresh ports rather than fail the test.
        for attempt in 1..=3 {
            let dir = tempfile::tempdir().unwrap();
            let addr = format!("127.0.0.1:{}", free_port());
            let admin = format!("127.0.0.1:{}", free_port());
            let config = format!(
                "server:\n  threads: 2\n  pid_file: {d}/modelgate.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period_seconds: 1\n  graceful_shutdown_timeout_seconds: 2\n{listen}admin: {{listen: \"{admin}\", token: \"{ADMIN_TOKEN}\"}}\n{clients}{body}",
                d = dir.path().display(),
                listen = listen(&addr),
            );
            let conf_path = dir.path().join("modelgate.yaml");
            std::fs::write(&conf_path, config).unwrap();
            let log = dir.path().join("gateway.log");
            let mut cmd = match wrapper.split_first() {
                Some((program, args)) => {
                    let mut c = Command::new(program);
                    c.args(args).arg(BIN);
                    c
                }
                None => Command::new(BIN),
            };
            cmd.arg("-c")
                .arg(&conf_path)
                .env("RUST_LOG", "debug")
                .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
                .stderr(std::fs::File::create(&log).unwrap());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let proc = Proc(cmd.spawn().unwrap());
            let mut gw = Gateway {
                addr,
                admin,
                log,
                dir,
                proc,
            };
            let health = format!("http://{}/healthz", gw.admin);
            let start = Instant::now();
            loop {
                if http().get(&health).send().is_ok_and(|r| r.status() == 200) {
                    if wait_ready {
                        gw.wait_ready();
                    }
                    return gw;
                }
                if !gw.is_running() {
                    let log = gw.log_text();
                    assert!(
                        attempt < 3 && log.contains("ddress already in use"),
                        "gateway exited at start-up:\n{log}"
                    );
                    break; // retry on other ports
                }
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "timed out waiting for gateway /healthz; log:\n{}",
                    gw.log_text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    pub fn wait_ready(&self) {
        let ready = format!("http://{}/readyz", self.admin);
        wait_until("gateway /readyz", Duration::from_secs(15), || {
            http().get(&ready).send().is_ok_and(|r| r.status() == 200)
        });
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn metrics(&self) -> String {
        http()
            .get(self.admin_url("/metrics"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.0.try_wait().unwrap().is_none()
    }

    /// `kill -9`: no chance to flush or drain.
    pub fn kill9(&mut self) {
        self.proc.0.kill().unwrap();
        self.proc.0.wait().unwrap();
    }

    /// SIGTERM (graceful shutdown) and wait for the process to exit.
    pub fn terminate(&mut self) {
        let pid = self.proc.0.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(ok.success());
        let start = Instant::now();
        while self.is_running() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "gateway did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `modelgate -t` on `yaml`: (passed, stderr).
pub fn check_config(dir: &Path, yaml: &str) -> (bool, String) {
    let conf = dir.join("c.yaml");
    std::fs::write(&conf, yaml).unwrap();
    let out = Command::new(BIN)
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A chat request body.
pub fn chat(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "How do I reach support?"}]
    })
}

/// A model host on a loopback port, written by the test: each connection
/// gets its own thread running `serve` (with a 20 s read timeout), which
/// reports what it saw on the returned channel. The gateway's health checks
/// connect and close without a request; `serve` sees those too.
pub fn raw_model<T: Send + 'static>(
    serve: impl Fn(TcpStream, std::sync::mpsc::Sender<T>) + Clone + Send + 'static,
) -> (String, std::sync::mpsc::Receiver<T>) {
    let model = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = model.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in model.incoming().flatten() {
            let (tx, serve) = (tx.clone(), serve.clone());
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                serve(s, tx)
            });
        }
    });
    (addr, rx)
}

/// Sends raw bytes and returns everything the server answers until it closes
/// or `timeout` passes.
pub fn raw_exchange(
    addr: &str,
    request: &[u8],
    pause_after: Option<Duration>,
    timeout: Duration,
) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(request).unwrap();
    if let Some(p) = pause_after {
        std::thread::sleep(p);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// How long a [`HeldStream`] model holds the rest of an answer back, waiting
/// for the test to release it; then it gives up and cuts the answer off.
pub const HOLD: Duration = Duration::from_secs(10);

/// A model host (see `raw_model`) that answers every request with a
/// chunked `200` in two parts: it writes the `head` chunks, then holds the
/// `rest` back until the test has seen a marker of the head arrive through
/// the gateway ([`HeldStream::read`]). Streaming is then checked by the
/// order of events, not by timing: a gateway that buffers the answer never
/// shows the marker before the rest is released, however fast the machine.
pub struct HeldStream {
    pub addr: String,
    release: std::sync::mpsc::Sender<()>,
    /// Per answered request: its head (request line and header fields),
    /// and whether the test released the rest (false: the hold timed out
    /// and the answer was cut off).
    answered: std::sync::mpsc::Receiver<(String, bool)>,
}

impl HeldStream {
    pub fn start(content_type: &str, head: Vec<String>, rest: Vec<String>) -> HeldStream {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = std::sync::Arc::new(std::sync::Mutex::new(released));
        let content_type = content_type.to_string();
        let chunk = |data: &str| format!("{:x}\r\n{data}\r\n", data.len());
        let (addr, answered) = raw_model(move |mut s, tx| {
            let mut seen = Vec::new();
            // Health checks connect and close without a request.
            while let Some((request, len)) = read_message(&mut s, &mut seen) {
                seen.drain(..len);
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
                );
                for c in &head {
                    out.push_str(&chunk(c));
                }
                if s.write_all(out.as_bytes()).is_err() {
                    return;
                }
                let ok = released.lock().unwrap().recv_timeout(HOLD).is_ok();
                let _ = tx.send((request, ok));
                if !ok {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                    return;
                }
                let mut out: String = rest.iter().map(|c| chunk(c)).collect();
                out.push_str("0\r\n\r\n");
                if s.write_all(out.as_bytes()).is_err() {
                    return;
                }
            }
        });
        HeldStream {
            addr,
            release,
            answered,
        }
    }

    /// Reads `resp` (a `200` without `Content-Length`: a stream) until
    /// `marker` appears, only then lets the model send the rest, and reads
    /// to the end. Returns the body and the head of the request the model
    /// got. Fails if the marker did not arrive while the model was holding
    /// the rest back (a buffering gateway).
    pub fn read(&self, mut resp: reqwest::blocking::Response, marker: &str) -> (String, String) {
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("content-length").is_none());
        let mut buf = [0u8; 4096];
        let mut bytes = Vec::new();
        let mut seen = false;
        loop {
            let n = match resp.read(&mut buf) {
                Ok(n) => n,
                Err(e) => panic!(
                    "stream broken ({e}) after:\n{}",
                    String::from_utf8_lossy(&bytes)
                ),
            };
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..n]);
            if !seen && String::from_utf8_lossy(&bytes).contains(marker) {
                seen = true;
                self.release.send(()).unwrap();
            }
        }
        let body = String::from_utf8(bytes).unwrap();
        assert!(seen, "`{marker}` never arrived: {body}");
        let (request, released) = self
            .answered
            .recv_timeout(HOLD + Duration::from_secs(5))
            .expect("the model answered");
        assert!(
            released,
            "`{marker}` reached the client only after the model gave up holding the rest back: not streamed"
        );
        (body, request)
    }
}

/// Reads from `s` into `seen` until it holds one whole HTTP/1 message with
/// a `Content-Length` body, or none (the gateway forwards request bodies
/// with an exact length); returns its head (up to the blank line) and its
/// length in bytes, or `None` if the peer closed first.
pub fn read_message(s: &mut TcpStream, seen: &mut Vec<u8>) -> Option<(String, usize)> {
    let mut buf = [0u8; 16384];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).into_owned();
            assert!(
                !head.to_ascii_lowercase().contains("\r\ntransfer-encoding:"),
                "read_message reads Content-Length bodies only: {head}"
            );
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if seen.len() >= end + 4 + length {
                return Some((head, end + 4 + length));
            }
        }
        match s.read(&mut buf) {
            Ok(n @ 1..) => seen.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

/// An OpenAI chat stream, one SSE event per item: a role chunk, a chunk per
/// piece of text, a `stop` chunk, then `data: [DONE]`.
pub fn openai_chat_events(pieces: &[&str]) -> Vec<String> {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        let v = serde_json::json!({
            "id": "chatcmpl-held-1",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "demo-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        format!("data: {v}\n\n")
    };
    let mut events = vec![chunk(
        serde_json::json!({"role": "assistant", "content": ""}),
        serde_json::Value::Null,
    )];
    for p in pieces {
        events.push(chunk(
            serde_json::json!({ "content": p }),
            serde_json::Value::Null,
        ));
    }
    events.push(chunk(serde_json::json!({}), serde_json::json!("stop")));
    events.push("data: [DONE]\n\n".into());
    events
}
