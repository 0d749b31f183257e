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
    LoadAdapterRequest, TextChunk, UnloadAdapterRequest, UnloadAdapterResponse,
    count_tokens_request, generate_request, generate_stream_response,
};
use zhiku_runtime::Ready;

use crate::GeneratorState;
use crate::engine::{Completion, Event, Finish, Job};
use crate::error::GeneratorError;
use crate::sampling::{
    DEFAULT_REPEAT_LAST_N, DEFAULT_REPETITION_PENALTY, DEFAULT_SEED, SamplingConfig,
};
use crate::template::{Message, Prompt, Role};

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

fn role(role: i32) -> Result<Role, GeneratorError> {
    use zhiku_proto::v1::Role as ProtoRole;
    match ProtoRole::try_from(role) {
        Ok(ProtoRole::System) => Ok(Role::System),
        Ok(ProtoRole::User) | Ok(ProtoRole::Unspecified) => Ok(Role::User),
        Ok(ProtoRole::Assistant) => Ok(Role::Assistant),
        Err(_) => Err(GeneratorError::Validation(format!(
            "message role {role} is not a Role: use ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT"
        ))),
    }
}

impl GeneratorState {
    /// The prompt: a raw `prompt` is the caller's own trusted text (control tokens written
    /// in it count, as in llama.cpp's completion endpoint); a `chat` is rendered with the
    /// model's template, and its message contents are plain text: only the template's text
    /// yields control tokens.
    fn prompt_text(
        &self,
        prompt: Option<&str>,
        chat: Option<&zhiku_proto::v1::Chat>,
    ) -> Result<Prompt, GeneratorError> {
        self.check_size(prompt, chat)?;
        match (prompt, chat) {
            (Some(""), _) => Err(GeneratorError::Validation(
                "`prompt` is empty: send the text to continue, or use `chat`".into(),
            )),
            (Some(p), _) => Ok(Prompt::trusted(p)),
            (None, Some(chat)) => {
                let messages = chat
                    .messages
                    .iter()
                    .map(|m| Ok(Message::new(role(m.role)?, m.content.clone())))
                    .collect::<Result<Vec<_>, GeneratorError>>()?;
                self.shared.template.render_prompt(&messages)
            }
            (None, None) => Err(GeneratorError::Validation(
                "no input: set `prompt` (raw text) or `chat` (messages)".into(),
            )),
        }
    }

    /// Checks an input against --max-prompt-bytes and --max-chat-messages, before anything
    /// is rendered, copied or tokenized for it.
    fn check_size(
        &self,
        prompt: Option<&str>,
        chat: Option<&zhiku_proto::v1::Chat>,
    ) -> Result<(), GeneratorError> {
        let max = self.max_prompt_bytes;
        let bytes = match (prompt, chat) {
            (Some(p), _) => p.len(),
            (None, Some(chat)) => {
                let n = chat.messages.len();
                if n > self.max_chat_messages {
                    return Err(GeneratorError::Validation(format!(
                        "`chat` has {n} messages; at most {} are allowed \
                         (--max-chat-messages): drop the oldest",
                        self.max_chat_messages
                    )));
                }
                chat.messages.iter().map(|m| m.content.len()).sum()
            }
            (None, None) => 0,
        };
        if bytes > max {
            return Err(GeneratorError::Validation(format!(
                "the input is {bytes} bytes; at most {max} are allowed (--max-prompt-bytes): \
                 shorten it"
            )));
        }
        Ok(())
    }

    /// The ids Generate feeds the model for this input, validated: not empty, shorter than
    /// the context. CountTokens counts the same ids.
    pub fn encode_request(
        &self,
        prompt: Option<&str>,
        chat: Option<&zhiku_proto::v1::Chat>,
    ) -> Result<Vec<u32>, GeneratorError> {
        self.encode_prompt(&self.prompt_text(prompt, chat)?)
    }

    /// How many ids [`Self::encode_request`] gives for this input, without its length checks
    /// (a client counts to learn whether a prompt fits).
    pub fn count_request_tokens(
        &self,
        prompt: Option<&str>,
        chat: Option<&zhiku_proto::v1::Chat>,
    ) -> Result<usize, GeneratorError> {
        let prompt = self.prompt_text(prompt, chat)?;
        Ok(self.shared.tokenizer.encode_prompt(&prompt)?.len())
    }

    /// The CountTokens answer (blocking: rendering and tokenizing are CPU work).
    pub fn count(
        &self,
        request: &CountTokensRequest,
    ) -> Result<CountTokensResponse, GeneratorError> {
        let context_length = self.shared.info.context_length as u32;
        let (prompt, chat) = match &request.input {
            Some(count_tokens_request::Input::Prompt(p)) => (Some(p.as_str()), None),
            Some(count_tokens_request::Input::Chat(c)) => (None, Some(c)),
            None => (None, None),
        };
        let text = self.prompt_text(prompt, chat)?;
        let tokens = self.shared.tokenizer.encode_prompt(&text)?.len();
        let without_first = match chat {
            Some(chat) if request.without_first => self.without_first(chat, &text, tokens)?,
            _ => Vec::new(),
        };
        Ok(CountTokensResponse {
            tokens: tokens as u32,
            context_length,
            without_first,
        })
    }

    /// Entry k: the tokens of `chat` without its first k messages, from the one rendering
    /// `text` (of `tokens` tokens): the text from one message's content to the next one's is
    /// what dropping that message takes away.
    fn without_first(
        &self,
        chat: &zhiku_proto::v1::Chat,
        text: &Prompt,
        tokens: usize,
    ) -> Result<Vec<u32>, GeneratorError> {
        let n = chat.messages.len();
        let starts = text.message_starts();
        let in_order = starts.len() == n
            && starts.iter().enumerate().all(|(i, &(m, _))| m == i)
            && starts.windows(2).all(|w| w[0].1 <= w[1].1);
        if !in_order {
            // The template moves or merges messages: count each shorter chat.
            return (0..n)
                .map(|k| {
                    let rest = zhiku_proto::v1::Chat {
                        messages: chat.messages[k..].to_vec(),
                    };
                    // A chat the template refuses (one that starts with an answer) never fits.
                    Ok(self
                        .count_request_tokens(None, Some(&rest))
                        .map_or(u32::MAX, |t| t as u32))
                })
                .collect();
        }
        let tokenizer = &self.shared.tokenizer;
        // A piece that does not start the prompt gets no BOS in the whole prompt.
        let bos = tokenizer.encode_prompt(&Prompt::trusted(""))?.len();
        let mut out = Vec::with_capacity(n);
        let mut left = tokens;
        out.push(left as u32);
        for pair in starts.windows(2) {
            let piece = text.slice(pair[0].1..pair[1].1);
            let dropped = tokenizer.encode_prompt(&piece)?.len().saturating_sub(bos);
            left = left.saturating_sub(dropped);
            out.push(left as u32);
        }
        Ok(out)
    }

    fn encode_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>, GeneratorError> {
        let ids = self.shared.tokenizer.encode_prompt(prompt)?;
        let context = self.shared.info.context_length;
        if ids.is_empty() {
            return Err(GeneratorError::Validation(
                "the prompt encodes to no tokens".into(),
            ));
        }
        if ids.len() >= context {
            return Err(GeneratorError::Validation(format!(
                "the prompt is {} tokens; the model's context is {context}: shorten it",
                ids.len()
            )));
        }
        Ok(ids)
    }

    fn sampling(
        &self,
        params: Option<&zhiku_proto::v1::SamplingParams>,
        prompt_tokens: usize,
    ) -> Result<SamplingConfig, GeneratorError> {
        let p = params.cloned().unwrap_or_default();
        let room = self.shared.info.context_length - prompt_tokens;
        let config = SamplingConfig {
            temperature: p.temperature.unwrap_or(0.0) as f64,
            top_p: p.top_p.map(f64::from),
            top_k: p.top_k.map(|k| k as usize),
            repetition_penalty: p.repetition_penalty.unwrap_or(DEFAULT_REPETITION_PENALTY),
            repeat_last_n: p
                .repeat_last_n
                .map(|n| n as usize)
                .unwrap_or(DEFAULT_REPEAT_LAST_N),
            seed: p.seed.unwrap_or(DEFAULT_SEED),
            max_new_tokens: p
                .max_new_tokens
                .map(|n| n as usize)
                .unwrap_or(self.default_max_new_tokens)
                .min(room),
            stop: p.stop,
        };
        config.validate()?;
        Ok(config)
    }

    fn adapter(&self, name: &str) -> Result<Option<String>, GeneratorError> {
        if name.is_empty() {
            return Ok(None);
        }
        let merged = self
            .shared
            .adapter_summaries()
            .into_iter()
            .find(|a| a.name == name)
            .map(|a| a.merged);
        match merged {
            Some(true) => Ok(None), // already in the weights
            Some(false) => Ok(Some(name.to_owned())),
            None => Err(GeneratorError::UnknownAdapter(name.to_owned())),
        }
    }

    /// Validates a request and queues it; events arrive on the returned channel.
    pub fn start(
        &self,
        request: &GenerateRequest,
        deadline: Option<Instant>,
    ) -> Result<(mpsc::UnboundedReceiver<Event>, usize), GeneratorError> {
        let (prompt, chat) = match &request.input {
            Some(generate_request::Input::Prompt(p)) => (Some(p.as_str()), None),
            Some(generate_request::Input::Chat(c)) => (None, Some(c)),
            None => (None, None),
        };
        let text = self.prompt_text(prompt, chat)?;
        let ids = self.encode_prompt(&text)?;
        let sampling = self.sampling(request.sampling.as_ref(), ids.len())?;
        let adapter = self.adapter(&request.adapter)?;
        let (events, rx) = mpsc::unbounded_channel();
        let prompt_tokens = ids.len();
        self.engine.submit(Job {
            prompt: ids,
            sampling,
            adapter,
            deadline,
            events,
        })?;
        Ok((rx, prompt_tokens))
    }

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
        let (request, (mut events, _)) = start_blocking(&state, request, deadline).await?;
        let answer = async {
            while let Some(event) = events.recv().await {
                match event {
                    Event::Chunk { .. } => {}
                    Event::Done(completion) => return Ok(completion),
                    Event::Failed(e) => return Err(e),
                }
            }
            Err(GeneratorError::ShuttingDown)
        };
        // The engine checks the deadline between tokens; a long prefill is cut here, and
        // dropping the receiver stops the engine at its next token.
        let completion = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), answer)
                .await
                .unwrap_or(Err(GeneratorError::DeadlineExceeded { generated: 0 })),
            None => answer.await,
        }?;
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
            // A path the client names that does not hold an adapter is the client's error.
            let adapter = crate::lora::LoraAdapter::load(
                &request.name,
                std::path::Path::new(&request.path),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )
            .map_err(|e| match e {
                GeneratorError::Load(m) => GeneratorError::Validation(m),
                other => other,
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
}

fn adapter_info(a: &crate::models::AdapterSummary) -> AdapterInfo {
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
