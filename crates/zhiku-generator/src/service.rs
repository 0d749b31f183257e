//! The generator's service logic, apart from gRPC: a loaded model behind its engine, and
//! what every request goes through before the engine sees it (size limits, prompt
//! rendering and tokenizing, sampling settings, adapter lookup).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use zhiku_lm::template::{Message, Prompt, Role};
use zhiku_proto::v1::{
    CountTokensRequest, CountTokensResponse, GenerateRequest, count_tokens_request,
    generate_request,
};

use crate::config::GeneratorArgs;
use crate::engine::{EngineShared, Event, GenerationEngine, Job};
use crate::error::GeneratorError;
use crate::sampling::{
    DEFAULT_REPEAT_LAST_N, DEFAULT_REPETITION_PENALTY, DEFAULT_SEED, SamplingConfig,
};

/// A loaded model behind its engine: what the handlers work with.
pub struct GeneratorState {
    pub engine: GenerationEngine,
    pub shared: Arc<EngineShared>,
    pub default_max_new_tokens: usize,
    /// Input limits checked before rendering or tokenizing (--max-prompt-bytes,
    /// --max-chat-messages).
    pub max_prompt_bytes: usize,
    pub max_chat_messages: usize,
    /// The served model's identity, which LoadAdapter checks an adapter's base against.
    pub served_base: crate::base_check::ServedBase,
}

impl GeneratorState {
    /// Loads the model (blocking: call from a blocking thread) and starts the engine.
    pub fn load(args: &GeneratorArgs) -> Result<Self, GeneratorError> {
        let started = std::time::Instant::now();
        // The kernels' pool starts with the first repacked matrix: size it first. A second
        // model in the same process keeps the first one's pool.
        let threads = args.threads.unwrap_or_else(zhiku_kernels::default_threads);
        if let Err(e) = zhiku_kernels::set_threads(threads) {
            tracing::warn!(error = %e, "kernel threads already set");
        }
        tracing::info!(
            threads = zhiku_kernels::threads(),
            simd = zhiku_kernels::simd_level(),
            "CPU kernels"
        );
        let model = args.load_model()?;
        tracing::info!(
            model = %model.info.model_id,
            architecture = %model.info.architecture,
            dtype = %model.info.dtype,
            device = %model.info.device,
            context_length = model.info.context_length,
            template = model.template.name(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Self::from_model(model, args)
    }

    pub fn from_model(
        model: zhiku_lm::LoadedModel,
        args: &GeneratorArgs,
    ) -> Result<Self, GeneratorError> {
        let (engine, shared) = GenerationEngine::start(model, args.engine_config())?;
        Ok(Self {
            engine,
            shared,
            default_max_new_tokens: args.max_new_tokens.max(1),
            max_prompt_bytes: args.max_prompt_bytes.max(1),
            max_chat_messages: args.max_chat_messages.max(1),
            served_base: crate::base_check::ServedBase::of(args),
        })
    }
}

impl GeneratorState {
    /// The prompt: a raw `prompt` is the caller's own trusted text (control tokens written
    /// in it count, as in llama.cpp's completion endpoint); a `chat` is rendered with the
    /// model's template, and its message contents are plain text: only the template's text
    /// yields control tokens.
    pub fn prompt_text(
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
                Ok(self.shared.template.render_prompt(&messages)?)
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
            score_candidates: Vec::new(),
        };
        config.validate()?;
        Ok(config)
    }

    pub(crate) fn adapter(&self, name: &str) -> Result<Option<String>, GeneratorError> {
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
