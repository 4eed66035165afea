//! Prometheus metric definitions, in one registry per gateway (not the global
//! default registry, so tests can run several gateways in one process).
//! Label cardinality is bounded: `client` is a configured client name (or
//! `-` before authentication), `route`/`upstream` are configured names,
//! `status` an HTTP status code, `listener` a configured listener name.

use prometheus::{
    exponential_buckets, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    /// Finished requests by route, status and client.
    pub requests: IntCounterVec,
    /// Total request duration (first byte in → last byte out), by route.
    pub duration: HistogramVec,
    /// Time from request start to the upstream's response header, by route.
    pub ttfb: HistogramVec,
    /// Upstream failures by pool and kind (`connect`, `timeout`, `io`,
    /// `no_healthy_host`, `tls_verify`, `tls_handshake`, `tls_client_cert_refused`).
    pub upstream_errors: IntCounterVec,
    /// Requests currently being processed.
    pub in_flight: IntGauge,
    /// 1 if the last health check of a host passed.
    pub upstream_host_healthy: IntGaugeVec,
    /// Values masked, by entity and direction (`request` / `response`).
    pub masked: IntCounterVec,
    /// Times a stream's holdback bound forced held text out early.
    pub mask_holdback_overflows: IntCounter,
    /// Audit records waiting for the writer.
    pub audit_queue_depth: IntGauge,
    /// Audit records written, by sink.
    pub audit_written: IntCounterVec,
    /// Audit records lost, by reason (`queue_full`, `sink_buffer_full`, ...).
    pub audit_dropped: IntCounterVec,
    /// Calls refused (503) because they could not be recorded.
    pub audit_refused: IntCounter,
    /// Failed sink writes, by sink (each retried).
    pub audit_sink_errors: IntCounterVec,
    /// Calls a policy rule decided, by route, rule and action.
    pub policy_decisions: IntCounterVec,
    /// Calls refused with 429, by kind (`requests`, `completion_tokens`,
    /// `store_unavailable`).
    pub rate_limited: IntCounterVec,
    /// Rate-limit store (Redis) calls that failed or timed out since start.
    pub rate_limit_store_errors: IntGauge,
    /// Approval steps by event (`requested`, `approved`, `denied`,
    /// `expired`, `used`, `refused_redeem`).
    pub approvals: IntCounterVec,
    /// Approval requests pending (in the store: all replicas with Redis).
    pub approvals_pending: IntGauge,
    /// Calls held on this replica, waiting for a decision.
    pub approvals_held: IntGauge,
    /// Approval webhook deliveries since start, by outcome (`sent`,
    /// `failed`, `dropped`, `retries`).
    pub approval_webhook: IntGaugeVec,
    /// Completed TLS handshakes, by listener and protocol version.
    pub tls_handshakes: IntCounterVec,
    /// Client certificates that failed verification, by listener.
    pub tls_client_cert_refused: IntCounterVec,
    /// `notAfter` of each listener certificate (Unix seconds), by listener and name.
    pub tls_cert_expiry: IntGaugeVec,
    /// Certificate reloads, by listener and result (`ok`, `error`).
    pub tls_reloads: IntCounterVec,
    /// Latest drift score (population stability index) by route, model and
    /// signal. `model` is bounded by `drift.max_models_per_route`.
    pub drift_score: GaugeVec,
    /// 1 while a signal's drift alert is firing.
    pub drift_alerting: IntGaugeVec,
    /// Drift alerts raised, by route, model and signal.
    pub drift_alerts: IntCounterVec,
    /// Calls in the baseline of each route and model (0 while learning).
    pub drift_baseline_calls: IntGaugeVec,
    /// New `model` / `system_fingerprint` values in answers, by field.
    pub drift_fingerprint_changes: IntCounterVec,
    /// Changes of an upstream host's model list.
    pub upstream_models_changes: IntCounterVec,
    /// Model-list fetches that failed.
    pub upstream_models_check_errors: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("modelgate".into()), None)
            .expect("static registry prefix is valid");
        // 1 ms .. ~65 s, doubling: covers fast JSON calls and long generations.
        let buckets = exponential_buckets(0.001, 2.0, 17).expect("static buckets are valid");
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests by route, status and client"),
            &["route", "status", "client"],
        )
        .unwrap();
        let duration = HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "Total request duration")
                .buckets(buckets.clone()),
            &["route"],
        )
        .unwrap();
        let ttfb = HistogramVec::new(
            HistogramOpts::new(
                "time_to_first_byte_seconds",
                "Request start to upstream response header",
            )
            .buckets(buckets),
            &["route"],
        )
        .unwrap();
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "upstream_errors_total",
                "Upstream failures by pool and kind",
            ),
            &["upstream", "kind"],
        )
        .unwrap();
        let in_flight = IntGauge::new("in_flight_requests", "Requests being processed").unwrap();
        let upstream_host_healthy = IntGaugeVec::new(
            Opts::new(
                "upstream_host_healthy",
                "1 if the host's last health check passed",
            ),
            &["upstream", "host"],
        )
        .unwrap();
        let masked = IntCounterVec::new(
            Opts::new("masked_total", "Values masked, by entity and direction"),
            &["entity", "direction"],
        )
        .unwrap();
        let mask_holdback_overflows = IntCounter::new(
            "mask_holdback_overflows_total",
            "Times the masking holdback bound forced held text out early",
        )
        .unwrap();
        let audit_queue_depth =
            IntGauge::new("audit_queue_depth", "Audit records waiting for the writer").unwrap();
        let audit_written = IntCounterVec::new(
            Opts::new("audit_written_total", "Audit records written, by sink"),
            &["sink"],
        )
        .unwrap();
        let audit_dropped = IntCounterVec::new(
            Opts::new("audit_dropped_total", "Audit records lost, by reason"),
            &["reason"],
        )
        .unwrap();
        let audit_refused = IntCounter::new(
            "audit_refused_total",
            "Calls refused because they could not be recorded",
        )
        .unwrap();
        let audit_sink_errors = IntCounterVec::new(
            Opts::new(
                "audit_sink_errors_total",
                "Failed audit sink writes, by sink",
            ),
            &["sink"],
        )
        .unwrap();
        let policy_decisions = IntCounterVec::new(
            Opts::new(
                "policy_decisions_total",
                "Calls a policy rule decided, by route, rule and action",
            ),
            &["route", "rule", "action"],
        )
        .unwrap();
        let rate_limited = IntCounterVec::new(
            Opts::new("rate_limited_total", "Calls refused with 429, by kind"),
            &["kind"],
        )
        .unwrap();
        let rate_limit_store_errors = IntGauge::new(
            "rate_limit_store_errors",
            "Rate-limit store (Redis) calls that failed or timed out since start",
        )
        .unwrap();
        let approvals = IntCounterVec::new(
            Opts::new("approvals_total", "Approval steps, by event"),
            &["event"],
        )
        .unwrap();
        let approvals_pending =
            IntGauge::new("approvals_pending", "Approval requests pending").unwrap();
        let approvals_held = IntGauge::new(
            "approvals_held",
            "Calls held on this replica, waiting for a decision",
        )
        .unwrap();
        let approval_webhook = IntGaugeVec::new(
            Opts::new(
                "approval_webhook_deliveries",
                "Approval webhook deliveries since start, by outcome",
            ),
            &["outcome"],
        )
        .unwrap();
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "tls_handshakes_total",
                "TLS handshakes, by listener and version",
            ),
            &["listener", "version"],
        )
        .unwrap();
        let tls_client_cert_refused = IntCounterVec::new(
            Opts::new(
                "tls_client_cert_refused_total",
                "Client certificates that failed verification, by listener",
            ),
            &["listener"],
        )
        .unwrap();
        let tls_cert_expiry = IntGaugeVec::new(
            Opts::new(
                "tls_certificate_expiry_seconds",
                "notAfter of each listener certificate, in Unix seconds",
            ),
            &["listener", "name"],
        )
        .unwrap();
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "tls_reloads_total",
                "Listener certificate reloads, by listener and result",
            ),
            &["listener", "result"],
        )
        .unwrap();
        let rmsig = ["route", "model", "signal"];
        let drift_score = GaugeVec::new(
            Opts::new(
                "drift_score",
                "Drift score (population stability index) of the recent window against the baseline",
            ),
            &rmsig,
        )
        .unwrap();
        let drift_alerting = IntGaugeVec::new(
            Opts::new("drift_alerting", "1 while a drift alert is firing"),
            &rmsig,
        )
        .unwrap();
        let drift_alerts = IntCounterVec::new(
            Opts::new("drift_alerts_total", "Drift alerts raised"),
            &rmsig,
        )
        .unwrap();
        let drift_baseline_calls = IntGaugeVec::new(
            Opts::new(
                "drift_baseline_calls",
                "Calls in the drift baseline of a route and model",
            ),
            &["route", "model"],
        )
        .unwrap();
        let drift_fingerprint_changes = IntCounterVec::new(
            Opts::new(
                "drift_fingerprint_changes_total",
                "New model or system_fingerprint values in answers",
            ),
            &["route", "model", "field"],
        )
        .unwrap();
        let upstream_models_changes = IntCounterVec::new(
            Opts::new(
                "upstream_models_changes_total",
                "Changes of an upstream host's model list",
            ),
            &["upstream", "host"],
        )
        .unwrap();
        let upstream_models_check_errors = IntCounterVec::new(
            Opts::new(
                "upstream_models_check_errors_total",
                "Model-list fetches that failed",
            ),
            &["upstream", "host"],
        )
        .unwrap();
        for c in [
            Box::new(tls_handshakes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(drift_score.clone()),
            Box::new(drift_alerting.clone()),
            Box::new(drift_alerts.clone()),
            Box::new(drift_baseline_calls.clone()),
            Box::new(drift_fingerprint_changes.clone()),
            Box::new(upstream_models_changes.clone()),
            Box::new(upstream_models_check_errors.clone()),
            Box::new(tls_client_cert_refused.clone()),
            Box::new(tls_cert_expiry.clone()),
            Box::new(tls_reloads.clone()),
            Box::new(rate_limit_store_errors.clone()),
            Box::new(approvals.clone()),
            Box::new(approvals_pending.clone()),
            Box::new(approvals_held.clone()),
            Box::new(approval_webhook.clone()),
            Box::new(policy_decisions.clone()),
            Box::new(rate_limited.clone()),
            Box::new(requests.clone()),
            Box::new(duration.clone()),
            Box::new(ttfb.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(in_flight.clone()),
            Box::new(upstream_host_healthy.clone()),
            Box::new(masked.clone()),
            Box::new(mask_holdback_overflows.clone()),
            Box::new(audit_queue_depth.clone()),
            Box::new(audit_written.clone()),
            Box::new(audit_dropped.clone()),
            Box::new(audit_refused.clone()),
            Box::new(audit_sink_errors.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            duration,
            ttfb,
            upstream_errors,
            in_flight,
            upstream_host_healthy,
            masked,
            mask_holdback_overflows,
            audit_queue_depth,
            audit_written,
            audit_dropped,
            audit_refused,
            audit_sink_errors,
            policy_decisions,
            rate_limited,
            rate_limit_store_errors,
            approvals,
            approvals_pending,
            approvals_held,
            approval_webhook,
            tls_handshakes,
            tls_client_cert_refused,
            tls_cert_expiry,
            tls_reloads,
            drift_score,
            drift_alerting,
            drift_alerts,
            drift_baseline_calls,
            drift_fingerprint_changes,
            upstream_models_changes,
            upstream_models_check_errors,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding into a Vec cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_metrics() {
        let m = Metrics::new();
        m.requests.with_label_values(&["r", "200", "alice"]).inc();
        m.in_flight.inc();
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(
                "modelgate_requests_total{client=\"alice\",route=\"r\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("modelgate_in_flight_requests 1"), "{text}");
    }
}
