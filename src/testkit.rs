//! Helpers shared by unit tests and, through `#[path]` in `tests/common`,
//! by integration tests: a real `redis-server` on a free loopback port, and
//! free ports. Only `std`, so both crates can compile it.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A real `redis-server` on a free loopback port, killed on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// On a free port. A port taken between `free_port` and the server's
    /// bind (say, as an outgoing connection's local port) makes the server
    /// exit at start: then another port is tried.
    pub fn start() -> RedisServer {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start_on(free_port(), &[]) {
                Ok(server) => return server,
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }

    /// On `port`, with extra command-line arguments (e.g. `--requirepass`).
    ///
    /// Started means: the child we spawned is still running and a server on
    /// `port` answers `INFO` with that child's pid. So a port taken by
    /// something else (another test binary's Redis, say) fails loudly here
    /// instead of two tests silently sharing one Redis.
    pub fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        Self::try_start_on(port, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As `start_on`; `Err` if the server exited at start or another one
    /// answers on `port` (ours is killed when the `Err` drops it).
    fn try_start_on(port: u16, extra: &[&str]) -> Result<RedisServer, String> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (Debian: apt-get install redis-server)");
        let mut server = RedisServer { child, port };
        let password = extra
            .iter()
            .position(|a| *a == "--requirepass")
            .and_then(|i| extra.get(i + 1).copied());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "redis-server on port {port} exited at start ({status}); port taken?"
                ));
            }
            match server_pid(port, password) {
                Some(pid) if pid == server.child.id() => return Ok(server),
                Some(pid) => {
                    return Err(format!(
                        "port {port} is served by another redis-server (pid {pid}, ours is {})",
                        server.child.id()
                    ))
                }
                None => {}
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

/// The `process_id` a Redis on `port` reports, if one answers yet.
fn server_pid(port: u16, password: Option<&str>) -> Option<u32> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut request = String::new();
    if let Some(pw) = password {
        request.push_str(&format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{pw}\r\n", pw.len()));
    }
    request.push_str("*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n");
    conn.write_all(request.as_bytes()).ok()?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&reply);
        // While loading, or on a wrong password, the answer is an error.
        if text.starts_with('-') || text.contains("\r\n-") {
            return None;
        }
        if let Some(rest) = text.split("process_id:").nth(1) {
            if let Some((pid, _)) = rest.split_once("\r\n") {
                return pid.trim().parse().ok();
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port, never one already handed out in this process: the
/// OS may give a just-released port to the next `bind(0)`, so two tests
/// asking at once could otherwise both get it.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}
