//! The replica sets' metrics, on the process's one `/metrics`: calls in flight and health per
//! replica, their imbalance, retries, and how generations were routed.

use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts};

use super::Replica;

pub struct ReplicaMetrics {
    /// `zhiku_downstream_in_flight{service, replica}`.
    pub in_flight: IntGaugeVec,
    /// `zhiku_downstream_serving{service, replica}`: 1 while the replica takes new calls.
    pub serving: IntGaugeVec,
    /// `zhiku_downstream_in_flight_imbalance{service}`: most calls in flight on a serving
    /// replica minus the fewest, when the last call was placed.
    pub imbalance: IntGaugeVec,
    /// `zhiku_downstream_calls_total{service, replica}`: calls sent (retries included).
    pub calls: IntCounterVec,
    /// `zhiku_downstream_retries_total{service}`: calls sent again to another replica.
    pub retries: IntCounterVec,
    /// `zhiku_generator_routes_total{route}`: how each generation picked its replica:
    /// prefix_hit (the replica holding its prefix), prefix_busy (that one was too busy:
    /// the least loaded instead), prefix_miss (no replica held enough of it: the least
    /// loaded), least_loaded, round_robin (--generator-routing), retry.
    pub routes: IntCounterVec,
    /// `zhiku_generator_prefix_routes`: prefixes in the routing table.
    pub prefix_routes: IntGauge,
}

fn build() -> Result<ReplicaMetrics, prometheus::Error> {
    let gauge =
        |name: &str, help: &str, labels: &[&str]| IntGaugeVec::new(Opts::new(name, help), labels);
    let counter =
        |name: &str, help: &str, labels: &[&str]| IntCounterVec::new(Opts::new(name, help), labels);
    let metrics = ReplicaMetrics {
        in_flight: gauge(
            "zhiku_downstream_in_flight",
            "Calls in flight to each downstream replica.",
            &["service", "replica"],
        )?,
        serving: gauge(
            "zhiku_downstream_serving",
            "1 while a downstream replica takes new calls (its health check says SERVING).",
            &["service", "replica"],
        )?,
        imbalance: gauge(
            "zhiku_downstream_in_flight_imbalance",
            "Most calls in flight on a serving replica of a service minus the fewest.",
            &["service"],
        )?,
        calls: counter(
            "zhiku_downstream_calls_total",
            "Calls sent to each downstream replica, retries included.",
            &["service", "replica"],
        )?,
        retries: counter(
            "zhiku_downstream_retries_total",
            "Calls sent again to another replica after the first one failed before answering.",
            &["service"],
        )?,
        routes: counter(
            "zhiku_generator_routes_total",
            "Generations by how their replica was chosen: prefix_hit, prefix_busy, prefix_miss, least_loaded, round_robin, retry.",
            &["route"],
        )?,
        prefix_routes: IntGauge::new(
            "zhiku_generator_prefix_routes",
            "Prefixes in the generator routing table.",
        )?,
    };
    let registry = zhiku_runtime::metrics::metrics();
    registry.register(Box::new(metrics.in_flight.clone()))?;
    registry.register(Box::new(metrics.serving.clone()))?;
    registry.register(Box::new(metrics.imbalance.clone()))?;
    registry.register(Box::new(metrics.calls.clone()))?;
    registry.register(Box::new(metrics.retries.clone()))?;
    registry.register(Box::new(metrics.routes.clone()))?;
    registry.register(Box::new(metrics.prefix_routes.clone()))?;
    Ok(metrics)
}

static METRICS: LazyLock<ReplicaMetrics> = LazyLock::new(|| {
    // The names are constants and registered once: only a bug makes this fail.
    build().unwrap_or_else(|e| panic!("the replica metrics are ill-defined: {e}"))
});

pub fn metrics() -> &'static ReplicaMetrics {
    &METRICS
}

/// One call in flight on a replica, from when it is sent until its response ends.
pub struct InFlight {
    replica: Arc<Replica>,
}

impl InFlight {
    pub fn start(replica: &Arc<Replica>) -> Self {
        replica.in_flight.fetch_add(1, Ordering::Relaxed);
        let m = metrics();
        m.in_flight
            .with_label_values(&[replica.service, &replica.address])
            .inc();
        m.calls
            .with_label_values(&[replica.service, &replica.address])
            .inc();
        Self {
            replica: Arc::clone(replica),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.replica.in_flight.fetch_sub(1, Ordering::Relaxed);
        metrics()
            .in_flight
            .with_label_values(&[self.replica.service, &self.replica.address])
            .dec();
    }
}
