//! The orchestrator is ready while its three downstream services are: it watches their
//! `grpc.health.v1` status and says NOT_SERVING while one of them is down or loading, and
//! SERVING again by itself when all are back.

use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::Channel;
use zhiku_runtime::request_id::PropagateRequestId;

/// Time between two rounds of health checks.
const INTERVAL: Duration = Duration::from_millis(500);
/// Longest wait for one downstream's answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Checks `downstreams` ((name, gRPC service, channel)) every [`INTERVAL`] and sends whether
/// all are SERVING; ends when nobody listens to `ready` any more.
pub async fn watch_downstreams(
    downstreams: Vec<(&'static str, &'static str, Channel)>,
    caller: PropagateRequestId,
    ready: watch::Sender<bool>,
) {
    let mut last_down: Option<Vec<&'static str>> = None;
    loop {
        let checks = downstreams.iter().map(|(name, service, channel)| {
            let caller = caller.clone();
            async move {
                let serving = zhiku_runtime::health::is_serving_as(
                    channel.clone(),
                    caller,
                    service,
                    CHECK_TIMEOUT,
                )
                .await;
                (*name, serving)
            }
        });
        let down: Vec<&'static str> = futures::future::join_all(checks)
            .await
            .into_iter()
            .filter(|(_, serving)| !serving)
            .map(|(name, _)| name)
            .collect();
        if last_down.as_ref() != Some(&down) {
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
