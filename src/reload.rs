//! `modelgate reload -c FILE`: the graceful-upgrade procedure as one
//! command, for hosts without an orchestrator (in Kubernetes a config change
//! is a rolling restart instead).
//!
//! 1. checks the new config like `-t` (nothing changes if it is bad);
//! 2. reads the running process's id from `server.pid_file`;
//! 3. starts the new process (`-u -d`), which waits on `server.upgrade_sock`;
//! 4. once that socket exists, sends the old process SIGQUIT: it hands its
//!    listening sockets over, stops accepting and finishes its calls;
//! 5. waits until the pid file names the new process and the old one has
//!    exited (bounded by `server.grace_period_seconds` +
//!    `graceful_shutdown_timeout_seconds` + a margin).
//!
//! No connection is refused at any point: the listening sockets are the
//! same kernel objects throughout, only their owner changes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long the new process may take to open the upgrade socket. Pingora's
/// new process waits about 5 s for the old one's sockets.
const SOCKET_WAIT: Duration = Duration::from_secs(4);

/// Runs the procedure; `Err` says which step failed and what state is left.
pub fn reload(exe: &Path, conf: &Path, log: &mut dyn FnMut(&str)) -> Result<(), String> {
    let config = crate::config::load_file(conf).map_err(|e| e.to_string())?;
    crate::app::Services::build(&config)
        .map_err(|e| format!("the new config is not valid, nothing changed: {e}"))?;
    let server = config.server_conf().map_err(|e| e.to_string())?;
    let pid_file = Path::new(&server.pid_file);
    let old = read_pid(pid_file).ok_or_else(|| {
        format!(
            "no running gateway: {} does not name a live process (start one with `modelgate -c`)",
            pid_file.display()
        )
    })?;
    log(&format!("old process {old}"));
    let sock = Path::new(&server.upgrade_sock);
    // A stale socket file would look like the new process is ready.
    let _ = std::fs::remove_file(sock);
    // The daemon's parent may wait for it to be ready (Pingora's
    // `daemon_wait_for_ready`), which is after the hand-over: it is not
    // waited for until the old process has been told to hand over.
    // Not our stdout/stderr: the daemon would hold them open (and whoever
    // reads this command's output would wait for it forever). Its start-up
    // messages go to a file, shown if it fails; then to `server.error_log`.
    let out_path =
        std::env::temp_dir().join(format!("modelgate-reload-{}.log", std::process::id()));
    let out =
        std::fs::File::create(&out_path).map_err(|e| format!("{}: {e}", out_path.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", out_path.display()))?;
    let said = || {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(10).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    let mut parent = Command::new(exe)
        .arg("-u")
        .arg("-d")
        .arg("-c")
        .arg(conf)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let start = Instant::now();
    while !sock.exists() {
        if let Ok(Some(status)) = parent.try_wait() {
            if !status.success() {
                return Err(format!(
                    "the new process failed to start ({status}); the old one ({old}) still serves. It said:\n{}",
                    said()
                ));
            }
        }
        if start.elapsed() > SOCKET_WAIT {
            let _ = parent.kill();
            return Err(format!(
                "the new process did not open {} within {SOCKET_WAIT:?}; the old one ({old}) still serves (see server.error_log)",
                sock.display()
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
            "the new process exited with {status} after the hand-over. It said:\n{}",
            said()
        ));
    }
    let _ = std::fs::remove_file(&out_path);
    let drain = Duration::from_secs(
        server.grace_period_seconds.unwrap_or(60)
            + server.graceful_shutdown_timeout_seconds.unwrap_or(60)
            + 10,
    );
    let start = Instant::now();
    let mut new = None;
    while alive(old) || new.is_none() {
        if new.is_none() {
            new = read_pid(pid_file).filter(|p| *p != old);
            if let Some(p) = new {
                log(&format!("new process {p} serving"));
            }
        }
        if start.elapsed() > drain {
            return Err(match new {
                None => "the new process never wrote its pid file".into(),
                Some(_) => format!("the old process {old} is still draining after {drain:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    log(&format!("old process {old} finished its calls and exited"));
    Ok(())
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
