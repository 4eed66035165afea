//! Hot reload of listener certificates: a background service that re-reads
//! a listener's certificate and key files on SIGHUP, and when a poll of
//! their (mtime, size, inode) every `tls.reload_check_interval` sees a
//! change. A set that fails any check is not used: the listener keeps its
//! current certificates and the next poll tries again (a half-written pair
//! fails the key check). New handshakes get the new certificates; open
//! connections keep theirs. Everything else TLS (client CA, versions,
//! upstream TLS) changes with a graceful upgrade (`modelgate -u`).

use super::certs::{CertStore, SniCerts, Validity};
use crate::config::CertKeyFiles;
use crate::metrics::Metrics;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// One TLS listener's certificate files and the store its handshakes read.
pub struct WatchedListener {
    pub name: String,
    /// Config key of the list, e.g. `listeners[0].tls.certificates`.
    pub at: String,
    pub files: Vec<CertKeyFiles>,
    pub store: CertStore,
    stamps: Mutex<Vec<Option<Stamp>>>,
}

/// What tells a rewritten file apart without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl WatchedListener {
    pub fn new(name: &str, at: String, files: Vec<CertKeyFiles>, store: CertStore) -> Self {
        let stamps = Mutex::new(stamps(&files));
        WatchedListener {
            name: name.to_string(),
            at,
            files,
            store,
            stamps,
        }
    }

    fn changed(&self) -> bool {
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) != stamps(&self.files)
    }

    /// Re-reads every file; swaps the set in only if all of it passes.
    fn reload(&self, metrics: &Metrics, warn_within: Duration) {
        let seen = stamps(&self.files);
        match SniCerts::load_all(&self.at, &self.files, warn_within, Validity::Warn) {
            Ok((set, warnings)) => {
                for w in warnings {
                    log::warn!("{w}");
                }
                clear_expiry(metrics, &self.name, &self.store.load());
                set_expiry(metrics, &self.name, &set);
                self.store.store(Arc::new(set));
                *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = seen;
                metrics
                    .tls_reloads
                    .with_label_values(&[self.name.as_str(), "ok"])
                    .inc();
                log::info!("listener {}: certificates reloaded", self.name);
            }
            Err(e) => {
                metrics
                    .tls_reloads
                    .with_label_values(&[self.name.as_str(), "error"])
                    .inc();
                log::error!(
                    "listener {}: certificate reload refused, keeping the current certificates: {e}",
                    self.name
                );
            }
        }
    }
}

fn stamps(files: &[CertKeyFiles]) -> Vec<Option<Stamp>> {
    files
        .iter()
        .flat_map(|f| [&f.cert, &f.key])
        .map(|path| {
            std::fs::metadata(path).ok().map(|m| Stamp {
                modified: m.modified().ok(),
                len: m.len(),
                inode: m.ino(),
            })
        })
        .collect()
}

/// `modelgate_tls_certificate_expiry_seconds{listener,name}` for a set.
pub fn set_expiry(metrics: &Metrics, listener: &str, set: &SniCerts) {
    for ck in set.all() {
        metrics
            .tls_cert_expiry
            .with_label_values(&[listener, ck.label()])
            .set(ck.not_after_unix);
    }
}

/// Removes a set's series, so a certificate no longer served raises no alert.
fn clear_expiry(metrics: &Metrics, listener: &str, set: &SniCerts) {
    for ck in set.all() {
        let _ = metrics
            .tls_cert_expiry
            .remove_label_values(&[listener, ck.label()]);
    }
}

/// The reload service of every TLS listener.
pub struct CertReload {
    pub listeners: Vec<WatchedListener>,
    /// Poll period; zero: SIGHUP only.
    pub interval: Duration,
    pub warn_within: Duration,
    pub metrics: Arc<Metrics>,
}

impl CertReload {
    fn reload_all(&self, only_changed: bool) {
        for l in &self.listeners {
            if !only_changed || l.changed() {
                l.reload(&self.metrics, self.warn_within);
            }
        }
    }
}

#[async_trait::async_trait]
impl BackgroundService for CertReload {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        // Without a handler SIGHUP would end the process; Pingora handles
        // only TERM, INT and QUIT.
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("certificate reload: cannot handle SIGHUP ({e}); polling only");
                None
            }
        };
        let period = (!self.interval.is_zero()).then_some(self.interval);
        let mut tick = tokio::time::interval(period.unwrap_or(Duration::from_secs(3600)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate
        log::info!(
            "certificate reload: watching {} TLS listener(s) (SIGHUP{})",
            self.listeners.len(),
            period.map_or(String::new(), |p| format!(
                ", file changes every {}",
                humantime::format_duration(p)
            ))
        );
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = async { hup.as_mut()?.recv().await } => {
                    log::info!("SIGHUP: reloading listener certificates");
                    self.reload_all(false);
                }
                _ = tick.tick(), if period.is_some() => self.reload_all(true),
            }
        }
    }
}
