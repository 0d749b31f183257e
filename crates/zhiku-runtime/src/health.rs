//! Asking another server for its `grpc.health.v1` status.

use std::time::Duration;

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The status `service` ("" for the whole server) reports on `channel`, or why it could not
/// be asked. The call is bounded by `timeout`.
pub async fn check(
    channel: Channel,
    service: &str,
    timeout: Duration,
) -> Result<ServingStatus, tonic::Status> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    request.set_timeout(timeout);
    let mut client = HealthClient::new(channel);
    let response = tokio::time::timeout(timeout, client.check(request))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("the health check timed out"))??;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

/// True when `service` on `channel` says SERVING within `timeout`.
pub async fn is_serving(channel: Channel, service: &str, timeout: Duration) -> bool {
    matches!(
        check(channel, service, timeout).await,
        Ok(ServingStatus::Serving)
    )
}
