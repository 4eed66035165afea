//! `modelgate reload -c FILE`: the graceful-upgrade procedure as one
//! command, for hosts without an orchestrator (in Kubernetes a config change
//! is a rolling restart instead). Also the HTTP probe behind `modelgate
//! probe`.
//!
//! 1. checks the new config like `-t` (nothing changes if it is bad), and
//!    that the paths a daemon uses are absolute (a daemon runs in `/`);
//! 2. reads the running process's id from `server.pid_file`, and checks it
//!    is a modelgate (a stale pid file must not get another process
//!    signalled);
//! 3. starts the new process (`-u -d`), which waits on `server.upgrade_sock`;
//! 4. once that socket exists, and is owned by this user, sends the old
//!    process SIGQUIT: it hands its listening sockets over (to whatever
//!    listens on that socket: keep it in a directory only the gateway's user
//!    can write), stops accepting and finishes its calls;
//! 5. waits until the pid file names the new process, the admin listener
//!    answers `/healthz`, and the old process has exited (bounded by
//!    `server.grace_period_seconds` + `graceful_shutdown_timeout_seconds` +
//!    a margin).
//!
//! No connection is refused at any point: the listening sockets are the
//! same kernel objects throughout, only their owner changes.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long the new process may take to open the upgrade socket. Pingora's
/// new process waits about 5 s for the old one's sockets.
const SOCKET_WAIT: Duration = Duration::from_secs(10);
/// Pingora's defaults, when the config does not set them.
const DEFAULT_GRACE: u64 = 300;
const DEFAULT_SHUTDOWN_TIMEOUT: u64 = 5;

/// Runs the procedure; `Err` says which step failed and what state is left.
pub fn reload(exe: &Path, conf: &Path, log: &mut dyn FnMut(&str)) -> Result<(), String> {
    let config = crate::config::load_file(conf).map_err(|e| e.to_string())?;
    crate::app::Services::build(&config)
        .map_err(|e| format!("the new config is not valid, nothing changed: {e}"))?;
    let server = config.server_conf().map_err(|e| e.to_string())?;
    let mut paths = vec![
        ("server.pid_file", server.pid_file.clone()),
        ("server.upgrade_sock", server.upgrade_sock.clone()),
    ];
    if let Some(audit) = &config.audit {
        for s in &audit.sinks {
            if let crate::config::SinkConfig::File(f) = s {
                paths.push(("audit.sinks[].path", f.path.clone()));
            }
        }
    }
    if let Some(p) = config.drift.as_ref().and_then(|d| d.baseline_file.clone()) {
        paths.push(("drift.baseline_file", p));
    }
    if let Some((key, p)) = paths.iter().find(|(_, p)| !Path::new(p).is_absolute()) {
        return Err(format!(
            "{key} `{p}` is relative: the new process runs as a daemon in `/`, so every path it writes must be absolute; nothing changed"
        ));
    }
    let conf = std::fs::canonicalize(conf).map_err(|e| format!("{}: {e}", conf.display()))?;
    let pid_file = Path::new(&server.pid_file);
    let old = read_pid(pid_file).ok_or_else(|| {
        format!(
            "no running gateway: {} does not name a live process (start one with `modelgate -c`)",
            pid_file.display()
        )
    })?;
    let same_program = std::fs::read_link(format!("/proc/{old}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .zip(exe.file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|(running, ours)| running.trim_end_matches(" (deleted)") == ours);
    if !same_program {
        return Err(format!(
            "{} names process {old}, which is not a {} (a stale pid file?); nothing changed",
            pid_file.display(),
            exe.file_name()
                .map_or("modelgate".into(), |n| n.to_string_lossy())
        ));
    }
    log(&format!("old process {old}"));
    let sock = Path::new(&server.upgrade_sock);
    // A stale socket file would look like the new process is ready.
    let _ = std::fs::remove_file(sock);
    // Not our stdout/stderr: the daemon would hold them open (and whoever
    // reads this command's output would wait for it forever). Its output
    // goes to a new file beside the pid file (kept: without
    // `server.error_log` the daemon goes on writing there).
    let out_path = log_path(pid_file);
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&out_path)
        .map_err(|e| format!("{}: {e}", out_path.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", out_path.display()))?;
    let said = || {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(10).collect();
        let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        format!("It said ({}):\n{tail}", out_path.display())
    };
    // The daemon's parent may wait for it to be ready (Pingora's
    // `daemon_wait_for_ready`), which is after the hand-over: it is not
    // waited for until the old process has been told to hand over.
    let mut parent = Command::new(exe)
        .arg("-u")
        .arg("-d")
        .arg("-c")
        .arg(&conf)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let start = Instant::now();
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    loop {
        if let Ok(meta) = std::fs::symlink_metadata(sock) {
            if meta.uid() == me {
                break;
            }
            let _ = parent.kill();
            return Err(format!(
                "{} belongs to uid {}, not to this user: another user may be waiting for the listening sockets; the old process ({old}) still serves. Keep server.upgrade_sock in a directory only the gateway's user can write",
                sock.display(),
                meta.uid()
            ));
        }
        if let Ok(Some(status)) = parent.try_wait() {
            if !status.success() {
                return Err(format!(
                    "the new process failed to start ({status}); the old one ({old}) still serves. {}",
                    said()
                ));
            }
        }
        if start.elapsed() > SOCKET_WAIT {
            let _ = parent.kill();
            return Err(format!(
                "the new process did not open {} within {SOCKET_WAIT:?}; the old one ({old}) still serves. {}",
                sock.display(),
                said()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    log("new process waiting for the sockets; handing over");
    signal(old, libc::SIGQUIT)?;
    let status = parent
        .wait()
        .map_err(|e| format!("waiting for the new process: {e}"))?;
    if !status.success() {
        return Err(format!(
            "the new process exited with {status} after the hand-over. {}",
            said()
        ));
    }
    let drain = Duration::from_secs(
        server.grace_period_seconds.unwrap_or(DEFAULT_GRACE)
            + server
                .graceful_shutdown_timeout_seconds
                .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT)
            + 20,
    );
    let start = Instant::now();
    let mut new = None;
    let mut healthy = config.admin.is_none();
    while alive(old) || new.is_none() || !healthy {
        if new.is_none() {
            new = read_pid(pid_file).filter(|p| *p != old);
            if let Some(p) = new {
                log(&format!("new process {p} started"));
            }
        }
        if let (Some(p), false) = (new, healthy) {
            if !alive(p) {
                return Err(format!("the new process {p} exited. {}", said()));
            }
            let admin = config.admin.as_ref().expect("checked");
            healthy = http_ok(&admin.listen, "/healthz").is_ok();
            if healthy {
                log(&format!("new process {p} answers /healthz"));
            }
        }
        if start.elapsed() > drain {
            return Err(match (new, healthy) {
                (None, _) => format!("the new process never wrote its pid file. {}", said()),
                (Some(p), false) => {
                    format!("the new process {p} does not answer /healthz. {}", said())
                }
                (Some(_), true) => {
                    format!("the old process {old} is still draining after {drain:?}")
                }
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    log(&format!(
        "old process {old} finished its calls and exited; the new one logs to {} unless server.error_log is set",
        out_path.display()
    ));
    Ok(())
}

/// A new file beside the pid file for the new process's output.
fn log_path(pid_file: &Path) -> PathBuf {
    let dir = pid_file.parent().unwrap_or(Path::new("/tmp"));
    dir.join(format!(
        "modelgate-reload-{}-{}.log",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .replace(':', ""),
        std::process::id()
    ))
}

/// `GET http://addr{path}` answers 200 within 2 s; else what it answered.
pub fn http_ok(addr: &str, path: &str) -> Result<(), String> {
    use std::net::{TcpStream, ToSocketAddrs};
    let timeout = Duration::from_secs(2);
    let answer = (|| -> std::io::Result<String> {
        let sock = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut s = TcpStream::connect_timeout(&sock, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut head = [0u8; 64];
        let n = s.read(&mut head)?;
        Ok(String::from_utf8_lossy(&head[..n]).into_owned())
    })();
    match answer {
        Ok(a) if a.starts_with("HTTP/1.1 200") || a.starts_with("HTTP/1.0 200") => Ok(()),
        Ok(a) => Err(format!(
            "{addr}{path}: {}",
            a.lines().next().unwrap_or("no answer")
        )),
        Err(e) => Err(format!("{addr}{path}: {e}")),
    }
}

/// Writes this process's id to `path` (not through a symlink).
pub fn write_pid_file(path: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    writeln!(f, "{}", std::process::id())
}

fn read_pid(path: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

/// The process exists and is not a zombie (an exited child not yet reaped).
fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    if pid <= 0 || unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    state != Some('Z')
}

fn signal(pid: i32, sig: i32) -> Result<(), String> {
    // SAFETY: sends a signal to a process id read from the pid file.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(format!(
            "cannot signal process {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}
