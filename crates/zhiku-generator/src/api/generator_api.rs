//! Handlers of `zhiku.v1.Generator` (proto/zhiku/v1/generator.proto). Requests are
//! validated here, at the edge; the engine below never sees a bad request.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};
use zhiku_proto::v1::generator_server::Generator;
use zhiku_proto::v1::{
    AdapterInfo, CountTokensRequest, CountTokensResponse, FinishReason, GenerateRequest,
    GenerateResponse, GenerateStreamResponse, GeneratorInfoRequest, GeneratorInfoResponse,
    LoadAdapterRequest, NextTokenLogprobsRequest, NextTokenLogprobsResponse, TextChunk,
    UnloadAdapterRequest, UnloadAdapterResponse, generate_stream_response,
};
use zhiku_runtime::Ready;

use crate::GeneratorState;
use crate::engine::{Completion, Event, Finish};
use crate::error::GeneratorError;

#[derive(Clone)]
pub struct GeneratorApi {
    state: Ready<Arc<GeneratorState>>,
    /// Generate and GenerateStream requests received (Info reports it): what shows that a
    /// caller did or did not ask for generation.
    generate_requests: Arc<std::sync::atomic::AtomicU64>,
}

impl GeneratorApi {
    pub fn new(state: Ready<Arc<GeneratorState>>) -> Self {
        Self {
            state,
            generate_requests: Arc::default(),
        }
    }

    fn count_generate_request(&self) {
        self.generate_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn state(&self) -> Result<Arc<GeneratorState>, Status> {
        self.state.get().cloned()
    }
}

/// The gRPC deadline of a request, if the client set one.
fn deadline<T>(request: &Request<T>) -> Option<Instant> {
    zhiku_runtime::deadline::from_metadata(request.metadata())
}

impl GeneratorState {
    fn response(&self, c: Completion, adapter: &str) -> GenerateResponse {
        GenerateResponse {
            text: c.text,
            finish_reason: match c.finish {
                Finish::Eos => FinishReason::Eos,
                Finish::Length => FinishReason::Length,
                Finish::StopString => FinishReason::StopString,
            } as i32,
            prompt_tokens: c.prompt_tokens as u32,
            generated_tokens: c.generated_tokens as u32,
            prefill_ms: c.prefill_ms,
            decode_ms: c.decode_ms,
            model: self.shared.info.model_id.clone(),
            adapter: adapter.to_owned(),
            cached_prompt_tokens: c.cached_prompt_tokens as u32,
        }
    }
}

/// `work` until `deadline`. The engine checks the deadline between tokens; a long prefill is
/// cut here, and dropping `work` (its receivers) stops the engine's jobs at their next step.
async fn within_deadline<T>(
    deadline: Option<Instant>,
    work: impl std::future::Future<Output = Result<T, GeneratorError>>,
) -> Result<T, GeneratorError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), work)
            .await
            .unwrap_or(Err(GeneratorError::DeadlineExceeded { generated: 0 })),
        None => work.await,
    }
}

/// Runs CPU work (template rendering, tokenizing) on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, GeneratorError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| GeneratorError::Inference(format!("the tokenizing thread failed: {e}")))
}

/// [`GeneratorState::start`] on a blocking thread; gives the request back.
async fn start_blocking(
    state: &Arc<GeneratorState>,
    request: GenerateRequest,
    deadline: Option<Instant>,
) -> Result<(GenerateRequest, (mpsc::UnboundedReceiver<Event>, usize)), GeneratorError> {
    let state = state.clone();
    blocking(move || {
        let started = state.start(&request, deadline)?;
        Ok((request, started))
    })
    .await?
}

type GenerateStreamResult =
    Pin<Box<dyn Stream<Item = Result<GenerateStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Generator for GeneratorApi {
    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateResponse>, Status> {
        self.count_generate_request();
        let state = self.state()?;
        let deadline = deadline(&request);
        let request = request.into_inner();
        let (request, (events, _)) = start_blocking(&state, request, deadline).await?;
        let completion = within_deadline(deadline, crate::scoring::completion(events)).await?;
        Ok(Response::new(state.response(completion, &request.adapter)))
    }

    type GenerateStreamStream = GenerateStreamResult;

    async fn generate_stream(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        self.count_generate_request();
        let state = self.state()?;
        let deadline = deadline(&request);
        let request = request.into_inner();
        let (request, (events, _)) = start_blocking(&state, request, deadline).await?;
        let adapter = request.adapter;
        // Dropping this stream (client cancelled, or the deadline below) closes the channel:
        // the engine stops at its next token.
        let events = UnboundedReceiverStream::new(events);
        let events: Pin<Box<dyn Stream<Item = Event> + Send>> = match deadline {
            Some(d) => Box::pin(until_deadline(events, d)),
            None => Box::pin(events),
        };
        let stream = events.map(move |event| match event {
            Event::Chunk {
                text,
                generated_tokens,
            } => Ok(GenerateStreamResponse {
                event: Some(generate_stream_response::Event::Chunk(TextChunk {
                    text,
                    generated_tokens: generated_tokens as u32,
                })),
            }),
            Event::Done(completion) => Ok(GenerateStreamResponse {
                event: Some(generate_stream_response::Event::Done(
                    state.response(completion, &adapter),
                )),
            }),
            Event::Failed(e) => Err(e.into()),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn count_tokens(
        &self,
        request: Request<CountTokensRequest>,
    ) -> Result<Response<CountTokensResponse>, Status> {
        let state = self.state()?;
        let request = request.into_inner();
        let response = blocking(move || state.count(&request)).await??;
        Ok(Response::new(response))
    }

    async fn info(
        &self,
        _request: Request<GeneratorInfoRequest>,
    ) -> Result<Response<GeneratorInfoResponse>, Status> {
        let state = self.state()?;
        let info = &state.shared.info;
        let cache = state.shared.cache.lock().map(|c| *c).unwrap_or_default();
        Ok(Response::new(GeneratorInfoResponse {
            model_id: info.model_id.clone(),
            architecture: info.architecture.clone(),
            dtype: info.dtype.clone(),
            device: info.device.clone(),
            context_length: info.context_length as u32,
            adapters: state
                .shared
                .adapter_summaries()
                .iter()
                .map(adapter_info)
                .collect(),
            resident_memory_bytes: resident_memory_bytes(),
            chat_template: state.shared.template.name().into(),
            max_batch_size: cache.max_batch as u32,
            kv_cache_tokens: cache.capacity_tokens as u32,
            kv_cache_used_tokens: cache.used_tokens as u32,
            active_sequences: cache.active as u32,
            prefix_cache_hits: cache.prefix.hits,
            prefix_cache_misses: cache.prefix.misses,
            prefix_cached_tokens: cache.prefix.cached_tokens,
            generate_requests: self
                .generate_requests
                .load(std::sync::atomic::Ordering::Relaxed),
        }))
    }

    async fn load_adapter(
        &self,
        request: Request<LoadAdapterRequest>,
    ) -> Result<Response<AdapterInfo>, Status> {
        let state = self.state()?;
        let request = request.into_inner();
        if request.name.is_empty() || request.name.contains(['/', '=', ',']) {
            return Err(GeneratorError::Validation(
                "`name` must be non-empty, without '/', '=' or ','".into(),
            )
            .into());
        }
        if request.path.is_empty() {
            return Err(GeneratorError::Validation(
                "`path`: the adapter directory (adapter_config.json + adapter_model.safetensors)"
                    .into(),
            )
            .into());
        }
        // Reading and checking the weights is file and tensor work: off the async threads.
        let summary = tokio::task::spawn_blocking(move || {
            state.served_base.check(
                &request.name,
                std::path::Path::new(&request.path),
                &state.shared.info.model_id,
            )?;
            // A path the client names that does not hold an adapter is the client's error.
            let adapter = zhiku_lm::lora::LoraAdapter::load(
                &request.name,
                std::path::Path::new(&request.path),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )
            .map_err(|e| match e {
                // A directory the caller named that does not hold an adapter is a bad request.
                zhiku_lm::LmError::Load(m) => GeneratorError::Validation(m),
                other => GeneratorError::from(other),
            })?;
            state.shared.load_adapter(adapter)
        })
        .await
        .map_err(|e| Status::internal(format!("adapter loading stopped: {e}")))??;
        tracing::info!(adapter = %summary.name, rank = summary.rank, "adapter loaded");
        Ok(Response::new(adapter_info(&summary)))
    }

    async fn unload_adapter(
        &self,
        request: Request<UnloadAdapterRequest>,
    ) -> Result<Response<UnloadAdapterResponse>, Status> {
        let state = self.state()?;
        let name = request.into_inner().name;
        state.shared.unload_adapter(&name)?;
        tracing::info!(adapter = %name, "adapter unloaded");
        Ok(Response::new(UnloadAdapterResponse {}))
    }

    async fn next_token_logprobs(
        &self,
        request: Request<NextTokenLogprobsRequest>,
    ) -> Result<Response<NextTokenLogprobsResponse>, Status> {
        let started = Instant::now();
        let state = self.state()?;
        let deadline = deadline(&request);
        let request = request.into_inner();
        let prepared = {
            let state = state.clone();
            blocking(move || state.prepare_scoring(&request, state.engine.max_queued())).await??
        };
        let scored = crate::scoring::score(&state, prepared, deadline, started);
        Ok(Response::new(within_deadline(deadline, scored).await?))
    }
}

fn adapter_info(a: &zhiku_lm::lora::AdapterSummary) -> AdapterInfo {
    AdapterInfo {
        name: a.name.clone(),
        rank: a.rank as u32,
        alpha: a.alpha,
        target_modules: a.target_modules.clone(),
        merged: a.merged,
    }
}

/// Ends `events` with a DeadlineExceeded event at `deadline`.
fn until_deadline(
    events: impl Stream<Item = Event> + Send + 'static,
    deadline: Instant,
) -> impl Stream<Item = Event> + Send + 'static {
    let events: Pin<Box<dyn Stream<Item = Event> + Send>> = Box::pin(events);
    futures::stream::unfold((events, false), move |(mut events, ended)| async move {
        if ended {
            return None;
        }
        tokio::select! {
            event = events.next() => {
                let event = event?;
                let last = matches!(event, Event::Done(_) | Event::Failed(_));
                Some((event, (events, last)))
            }
            _ = tokio::time::sleep_until(deadline.into()) => Some((
                Event::Failed(GeneratorError::DeadlineExceeded { generated: 0 }),
                (events, true),
            )),
        }
    })
}

/// Resident set size of this process (Linux: /proc/self/statm), 0 when unknown.
fn resident_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}
