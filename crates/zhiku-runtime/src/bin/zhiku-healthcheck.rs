//! `zhiku-healthcheck ADDR [SERVICE]`: exits 0 when the gRPC server at ADDR reports SERVING
//! for SERVICE (default: the whole server), 1 otherwise. For container health checks.
//! `https://HOST:PORT` speaks TLS, trusting `ZHIKU_CA_CERT` besides the system roots; the
//! first key of `ZHIKU_API_KEY`, when set, is sent as `authorization: Bearer`.

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
    let ca_cert = std::env::var_os("ZHIKU_CA_CERT").map(std::path::PathBuf::from);
    let channel = match zhiku_runtime::client::endpoint(&endpoint, ca_cert.as_deref()) {
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
    let key = std::env::var("ZHIKU_API_KEY").ok();
    let key = key.as_deref().and_then(|k| k.split(',').next());
    let caller = match zhiku_runtime::request_id::PropagateRequestId::with_api_key(key) {
        Ok(caller) => caller,
        Err(e) => {
            eprintln!("ZHIKU_API_KEY: {e}");
            return ExitCode::from(2);
        }
    };
    match HealthClient::with_interceptor(channel, caller)
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
