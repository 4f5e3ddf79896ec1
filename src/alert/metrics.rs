//! Prometheus metrics of the alert stage (prometheus-client).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Label: sink name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    /// Sink name.
    pub sink: String,
}

/// Label: why something was dropped or suppressed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `spool_full`, `queue_full`, `spool_error`, `spool_corrupt`, `closed` (dropped) or
    /// `cooldown`, `throttle` (suppressed).
    pub reason: String,
}

/// All alert metrics. Clones share the same values.
#[derive(Clone, Default)]
pub struct AlertMetrics {
    /// `advguard_alert_delivered_total{sink}`.
    pub delivered: Family<SinkLabel, Counter>,
    /// `advguard_alert_failed_total{sink}`: failed delivery attempts (each is retried).
    pub failed: Family<SinkLabel, Counter>,
    /// `advguard_alert_queued{sink}`: events in the spool not yet delivered to the sink.
    pub queued: Family<SinkLabel, Gauge>,
    /// `advguard_alert_oldest_undelivered_age_seconds{sink}`.
    pub oldest_age: Family<SinkLabel, Gauge<f64, AtomicU64>>,
    /// `advguard_alert_dropped_total{reason}`: events lost (never silently).
    pub dropped: Family<ReasonLabel, Counter>,
    /// `advguard_alert_suppressed_total{reason}`: messages removed by noise control.
    pub suppressed: Family<ReasonLabel, Counter>,
    /// `advguard_alert_spooled_total`: events committed to the spool.
    pub spooled: Counter,
    /// `advguard_alert_submitted_total`: events handed to `submit`.
    pub submitted: Counter,
    /// `advguard_alert_interrupted_total`: events a previous run left open, closed at start-up.
    pub interrupted: Counter,
}

impl AlertMetrics {
    /// Registers every metric under the `advguard_alert_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("advguard_alert");
        r.register(
            "delivered",
            "Events delivered, per sink",
            self.delivered.clone(),
        );
        r.register(
            "failed",
            "Failed delivery attempts (retried), per sink",
            self.failed.clone(),
        );
        r.register(
            "queued",
            "Events spooled but not yet delivered, per sink",
            self.queued.clone(),
        );
        r.register(
            "oldest_undelivered_age_seconds",
            "Age of the oldest undelivered event, per sink",
            self.oldest_age.clone(),
        );
        r.register("dropped", "Events dropped, by reason", self.dropped.clone());
        r.register(
            "suppressed",
            "Messages suppressed by noise control, by reason",
            self.suppressed.clone(),
        );
        r.register(
            "spooled",
            "Events committed to the spool",
            self.spooled.clone(),
        );
        r.register(
            "submitted",
            "Events submitted to the alert hub",
            self.submitted.clone(),
        );
        r.register(
            "interrupted",
            "Events left open by a previous run (crash, kill) and closed at start-up",
            self.interrupted.clone(),
        );
    }

    pub(crate) fn sink(s: &str) -> SinkLabel {
        SinkLabel {
            sink: s.to_string(),
        }
    }

    pub(crate) fn reason(s: &str) -> ReasonLabel {
        ReasonLabel {
            reason: s.to_string(),
        }
    }

    /// Dropped count for a reason.
    pub fn dropped_count(&self, reason: &str) -> u64 {
        self.dropped.get_or_create(&Self::reason(reason)).get()
    }
}
