//! Asking another server for its `grpc.health.v1` status.

use std::time::Duration;

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::request_id::PropagateRequestId;

/// The status `service` ("" for the whole server) reports on `channel`, or why it could not
/// be asked. The call is bounded by `timeout`.
pub async fn check(
    channel: Channel,
    service: &str,
    timeout: Duration,
) -> Result<ServingStatus, tonic::Status> {
    check_as(channel, PropagateRequestId::default(), service, timeout).await
}

/// [`check`] with the API key (and request id) of `caller`, for servers whose health
/// checks need a key.
pub async fn check_as(
    channel: Channel,
    caller: PropagateRequestId,
    service: &str,
    timeout: Duration,
) -> Result<ServingStatus, tonic::Status> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    request.set_timeout(timeout);
    let mut client = HealthClient::with_interceptor(channel, caller);
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

/// [`is_serving`] with the API key of `caller`.
pub async fn is_serving_as(
    channel: Channel,
    caller: PropagateRequestId,
    service: &str,
    timeout: Duration,
) -> bool {
    matches!(
        check_as(channel, caller, service, timeout).await,
        Ok(ServingStatus::Serving)
    )
}
