//! The orchestrator is ready while each of its three downstream services has a replica that
//! is: the replica sets check their replicas' `grpc.health.v1` status; this says
//! NOT_SERVING while a service has none SERVING, and SERVING again by itself when all have.

use std::time::Duration;

use tokio::sync::watch;

use crate::replicas::ReplicaSet;

/// Time between two looks at the replica sets.
const INTERVAL: Duration = Duration::from_millis(500);

/// Starts the health checks of `downstreams`, looks at them every [`INTERVAL`] and sends
/// whether each has a SERVING replica; ends when nobody listens to `ready` any more.
pub async fn watch_downstreams(downstreams: Vec<ReplicaSet>, ready: watch::Sender<bool>) {
    for set in &downstreams {
        set.start();
    }
    let mut last_down: Option<Vec<&'static str>> = None;
    loop {
        let down: Vec<&'static str> = downstreams
            .iter()
            .filter(|set| !set.serving())
            .map(ReplicaSet::service)
            .collect();
        // Before every replica was checked once, "down" is only "not checked yet".
        let checked = downstreams.iter().all(ReplicaSet::checked);
        if checked && last_down.as_ref() != Some(&down) {
            if down.is_empty() {
                tracing::info!("every downstream service is SERVING");
            } else {
                tracing::warn!(down = ?down, "downstream services not SERVING; the orchestrator is NOT_SERVING until they are");
            }
            last_down = Some(down.clone());
        }
        ready.send_if_modified(|ready| {
            let now = down.is_empty();
            std::mem::replace(ready, now) != now
        });
        if ready.is_closed() {
            return;
        }
        tokio::time::sleep(INTERVAL).await;
    }
}
