//! `zhiku-healthcheck ADDR [SERVICE]`: exits 0 when the gRPC server at ADDR reports SERVING
//! for SERVICE (default: the whole server), 1 otherwise. For container health checks.

use std::process::ExitCode;
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(addr) = args.next() else {
        eprintln!("usage: zhiku-healthcheck HOST:PORT [SERVICE]");
        return ExitCode::from(2);
    };
    let service = args.next().unwrap_or_default();
    let endpoint = if addr.contains("://") {
        addr.clone()
    } else {
        format!("http://{addr}")
    };
    let channel = match tonic::transport::Endpoint::from_shared(endpoint) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(3)),
        Err(e) => {
            eprintln!("bad address {addr}: {e}");
            return ExitCode::from(2);
        }
    };
    let channel = match channel.connect().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot connect to {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.clone(),
        })
        .await
    {
        Ok(response) => {
            let status = ServingStatus::try_from(response.into_inner().status)
                .unwrap_or(ServingStatus::Unknown);
            println!(
                "{}: {}",
                if service.is_empty() {
                    "server"
                } else {
                    &service
                },
                status.as_str_name()
            );
            if status == ServingStatus::Serving {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(status) => {
            eprintln!("health check failed: {status}");
            ExitCode::FAILURE
        }
    }
}
