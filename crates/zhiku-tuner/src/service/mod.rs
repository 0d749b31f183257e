//! The `Tuner` gRPC service: jobs that train adapters one at a time ([`jobs`]), their
//! handlers ([`api`]), served on the shared runtime (health, reflection, request ids, API
//! keys, TLS) by [`serve`].

pub mod api;
pub mod jobs;

use std::future::Future;

use tokio::net::TcpListener;
use zhiku_proto::service_names;
use zhiku_proto::v1::tuner_server::TunerServer;
use zhiku_runtime::server::RuntimeError;
use zhiku_runtime::{ServerArgs, ServiceRuntime};

use crate::config::TunerArgs;
use crate::error::TuneError;
use crate::job::JobBase;
use jobs::{JobQueue, QueueConfig};

/// Serves `zhiku.v1.Tuner` on `listener` until `shutdown`; then takes no new jobs and stops
/// the running one at its next step (no adapter is written for it).
pub async fn serve(
    args: TunerArgs,
    server: ServerArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    let (device, _) = zhiku_models::parse_device(&args.device).map_err(RuntimeError::Load)?;
    let queue = JobQueue::start(QueueConfig {
        base: JobBase {
            model: args.model.clone(),
            gguf_file: args.gguf_file.clone(),
            models_dir: args.models_dir.clone(),
            device,
        },
        adapter_dir: args.adapter_dir.clone(),
        max_queued: args.max_queued,
        keep_finished: args.keep_finished,
    })
    .map_err(|e| RuntimeError::Load(e.to_string()))?;
    let load = {
        let (adapter_dir, data_dir) = (args.adapter_dir.clone(), args.data_dir.clone());
        async move {
            tokio::task::spawn_blocking(move || check_dirs(&adapter_dir, data_dir.as_deref()))
                .await
                .map_err(|e| TuneError::Training(e.to_string()))?
        }
    };
    let runtime = ServiceRuntime::new(server, service_names::TUNER).await;
    let limit = runtime.max_message_bytes();
    let service = TunerServer::new(api::TunerApi::new(
        queue.clone(),
        args.data_dir.clone(),
        args.threads,
    ))
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let served = runtime.serve(listener, service, load, shutdown).await;
    queue.stop();
    served
}

/// Creates the adapter directory (the volume may be empty) and checks the data directory.
fn check_dirs(
    adapter_dir: &std::path::Path,
    data_dir: Option<&std::path::Path>,
) -> Result<(), TuneError> {
    std::fs::create_dir_all(adapter_dir).map_err(|source| TuneError::Io {
        path: adapter_dir.display().to_string(),
        source,
    })?;
    if let Some(dir) = data_dir
        && !dir.is_dir()
    {
        return Err(TuneError::Validation(format!(
            "--data-dir {} is not a directory",
            dir.display()
        )));
    }
    Ok(())
}
