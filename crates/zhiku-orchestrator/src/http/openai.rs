//! The OpenAI-compatible routes: `POST /v1/chat/completions` (unary and SSE),
//! `GET /v1/models` and `POST /v1/embeddings`.
//!
//! A chat completion's `model` picks what answers: `kb:NAME` (or a bare NAME that is not the
//! generator's model) asks knowledge base NAME through the Ask pipeline, the messages being
//! the conversation (the last one, from the user, is the question; earlier user/assistant
//! pairs are the history; system messages are left out, the prompt being the knowledge base's
//! template); the generator's own model id gives a plain chat with every message.
//!
//! The answer of a knowledge base carries its citations in both forms of the response:
//! - in the content: the passages are numbered `[1]`, `[2]`, … in the prompt; each sentence
//!   of the answer ends with the `[n]` of the passage that supports it best ([`cite`]: the
//!   model's own markers are kept, none added to a sentence no passage supports), and the
//!   content ends with one line per source, `[n] source`, so that any OpenAI client shows
//!   them. In the request, `"zhiku": {"sources_in_content": false}` leaves the source lines
//!   out and `"inline_citations": false` the sentence markers;
//! - in the extension field `zhiku` of the response (unary) or of the first and the last
//!   chunk (streamed): `{"knowledge_base", "sources": [{"number", "document_id", "source",
//!   "chunk_index", "score", "text"}], "refused", "timings"}`.
//!
//! A refusal (no passage passed the threshold, or the model said it cannot answer) is an
//! ordinary answer holding the refusal text, `finish_reason: "stop"`, `zhiku.refused: true`.
//! Requests may also carry `"zhiku": {"top_k", "score_threshold", "mode"}` (the Ask fields).
//!
//! A LoRA adapter the generator has loaded answers when `model` ends in `@ADAPTER`
//! (`kb:handbook@tuned`, `Qwen2.5-0.5B-Instruct@tuned`) or the request carries
//! `"zhiku": {"adapter": "tuned"}` (which wins); `@` alone, or `"adapter": ""`, is the base
//! model even where the knowledge base has an adapter bound. Unset: the knowledge base's own
//! adapter (none for a plain chat). An adapter not loaded is 404, naming the loaded ones.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::wrappers::ReceiverStream;
use zhiku_proto::v1::{
    Answer, AskRequest, Chat, ChatMessage, Citation, EmbedKind, EmbedRequest, FinishReason,
    GenerateRequest, GeneratorInfoRequest, ListKnowledgeBasesRequest, Role, SamplingParams,
    SearchMode, Timings, Turn, Verification, ask_event, generate_request, generate_stream_response,
};

use super::cite::{self, Citer};
use super::{ApiError, HttpState, Json};
use crate::Orchestrator;
use crate::access::{Audit, HttpCaller, confine_filter, http_principal, require_kb, spawn_audited};
use crate::downstream::Deadline;
use crate::error::OrchestratorError;

/// Options of zhiku's own, in the request's `zhiku` field.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ChatOptions {
    /// Passages to retrieve (0 or unset: 5).
    pub top_k: u32,
    pub score_threshold: Option<f32>,
    /// "dense", "sparse" or "hybrid" (default).
    pub mode: Option<String>,
    /// False: the content holds the answer without the `[n] source` lines at its end.
    pub sources_in_content: Option<bool>,
    /// False: no `[n]` markers put after the answer's sentences.
    pub inline_citations: Option<bool>,
    /// Token budget of the passages (unset: the orchestrator's `--context-tokens`).
    pub context_tokens: Option<u32>,
    /// With history, rewrite the question into a standalone one before retrieval (unset:
    /// the orchestrator's `--rewrite-follow-ups`).
    pub rewrite_follow_up: Option<bool>,
    /// With `--abstention evidence`, the question coverage an answer needs (unset: the
    /// orchestrator's `--min-coverage`).
    pub min_coverage: Option<f64>,
    /// With `--abstention evidence`, the share of the question's anchors (names and
    /// figures) one passage must hold (unset: the orchestrator's `--min-anchors`).
    pub min_anchors: Option<f64>,
    /// The LoRA adapter that answers ("" = the base model; unset: the knowledge base's own,
    /// or the one `model` names after `@`).
    pub adapter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

impl Message {
    fn text(&self) -> Result<String, ApiError> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(text)) => Ok(text.clone()),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), &part.text) {
                        ("text", Some(t)) => text.push_str(t),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                "messages",
                                format!("content parts of type `{kind}` are not supported"),
                            ));
                        }
                    }
                }
                Ok(text)
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StreamOptions {
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub zhiku: ChatOptions,
}

impl ChatRequest {
    fn sampling(&self, default_max_new_tokens: u32) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            max_new_tokens: Some(
                self.max_completion_tokens
                    .or(self.max_tokens)
                    .unwrap_or(default_max_new_tokens),
            ),
            stop: match &self.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s.clone()],
                Some(Stop::Many(v)) => v.clone(),
            },
            ..Default::default()
        }
    }
}

/// What a `model` names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    KnowledgeBase(String),
    Chat(String),
}

/// The generator's model id, and the name it is also known by (its last path component).
async fn generator_model(orchestrator: &Orchestrator) -> Result<String, ApiError> {
    Ok(orchestrator
        .downstream
        .generator
        .clone()
        .info(Deadline::default().request(GeneratorInfoRequest {}))
        .await
        .map_err(OrchestratorError::downstream("generator"))?
        .into_inner()
        .model_id)
}

fn short_name(model_id: &str) -> &str {
    model_id
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(model_id)
}

/// `model` without its `@ADAPTER` suffix, and the adapter it names ("" for a bare `@`).
fn split_adapter(model: &str) -> (&str, Option<&str>) {
    match model.rsplit_once('@') {
        Some((model, adapter)) if !adapter.contains('/') => (model, Some(adapter)),
        _ => (model, None),
    }
}

async fn target(orchestrator: &Orchestrator, model: &str) -> Result<Target, ApiError> {
    if let Some(name) = model.strip_prefix("kb:") {
        return Ok(Target::KnowledgeBase(name.to_owned()));
    }
    if model.is_empty() {
        return Err(ApiError::invalid(
            "model",
            "`model` is empty: name a knowledge base (kb:NAME) or the generator's model",
        ));
    }
    let generator = generator_model(orchestrator).await?;
    if model == generator || model == short_name(&generator) {
        Ok(Target::Chat(generator))
    } else {
        Ok(Target::KnowledgeBase(model.to_owned()))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn finish_reason(reason: i32) -> &'static str {
    match FinishReason::try_from(reason) {
        Ok(FinishReason::Length) => "length",
        _ => "stop",
    }
}

fn source_json(c: &Citation) -> Value {
    json!({
        "number": c.number,
        "document_id": c.document_id,
        "source": c.source,
        "chunk_index": c.chunk_index,
        "score": c.score,
        "text": c.text,
    })
}

fn timings_json(t: &Option<Timings>) -> Value {
    match t {
        None => Value::Null,
        Some(t) => json!({
            "embed_ms": t.embed_ms,
            "search_ms": t.search_ms,
            "first_token_ms": t.first_token_ms,
            "generate_ms": t.generate_ms,
            "total_ms": t.total_ms,
        }),
    }
}

/// The `[n] source` lines the content ends with.
fn sources_footer(citations: &[Citation]) -> String {
    let mut out = String::from("\n\n");
    for (i, c) in citations.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("[{}] {}", c.number, c.source));
    }
    out
}

/// The Ask of a chat request to knowledge base `kb`.
fn ask_request(
    request: &ChatRequest,
    kb: String,
    max_new_tokens: u32,
) -> Result<AskRequest, ApiError> {
    let mut messages = Vec::with_capacity(request.messages.len());
    for m in &request.messages {
        match m.role.as_str() {
            "system" | "developer" => {}
            "user" | "assistant" => messages.push((m.role.as_str(), m.text()?)),
            other => {
                return Err(ApiError::invalid(
                    "messages",
                    format!("role `{other}` is not supported with a knowledge base"),
                ));
            }
        }
    }
    let Some(("user", question)) = messages.pop() else {
        return Err(ApiError::invalid(
            "messages",
            "the last message must be the user's question",
        ));
    };
    // Earlier turns: each user message with the assistant's answer after it.
    let mut history = Vec::new();
    let mut pending: Option<String> = None;
    for (role, text) in messages {
        match role {
            "user" => {
                if let Some(q) = pending.replace(text) {
                    history.push(Turn {
                        question: q,
                        answer: String::new(),
                    });
                }
            }
            _ => history.push(Turn {
                question: pending.take().unwrap_or_default(),
                answer: text,
            }),
        }
    }
    if let Some(q) = pending {
        history.push(Turn {
            question: q,
            answer: String::new(),
        });
    }
    let mode = match request.zhiku.mode.as_deref() {
        None | Some("hybrid") => SearchMode::Hybrid,
        Some("dense") => SearchMode::Dense,
        Some("sparse") => SearchMode::Sparse,
        Some(other) => {
            return Err(ApiError::invalid(
                "zhiku.mode",
                format!("`zhiku.mode` `{other}` is not dense, sparse or hybrid"),
            ));
        }
    };
    Ok(AskRequest {
        question,
        knowledge_base: kb,
        top_k: request.zhiku.top_k,
        score_threshold: request.zhiku.score_threshold,
        history,
        mode: mode as i32,
        sampling: Some(request.sampling(max_new_tokens)),
        filter: None,
        context_tokens: request.zhiku.context_tokens,
        rewrite_follow_up: request.zhiku.rewrite_follow_up,
        min_coverage: request.zhiku.min_coverage,
        adapter: None,
        min_relevance: None,
        min_anchors: request.zhiku.min_anchors,
    })
}

/// The chat of a plain (no knowledge base) request: every message, in order.
fn chat(request: &ChatRequest) -> Result<Chat, ApiError> {
    let mut messages = Vec::with_capacity(request.messages.len());
    for m in &request.messages {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::invalid(
                    "messages",
                    format!("role `{other}` is not supported"),
                ));
            }
        };
        messages.push(ChatMessage {
            role: role as i32,
            content: m.text()?,
        });
    }
    Ok(Chat { messages })
}

/// What the final answer says, whatever produced it.
struct Final {
    text: String,
    finish_reason: &'static str,
    prompt_tokens: u32,
    completion_tokens: u32,
    /// Knowledge-base answers only: the `zhiku` field.
    zhiku: Option<Value>,
}

fn usage(f: &Final) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    })
}

/// How the citations show in the content.
#[derive(Debug, Clone, Copy)]
struct Cites {
    /// `[n]` after each supported sentence.
    inline: bool,
    /// The `[n] source` lines at the end.
    footer: bool,
}

impl Cites {
    fn of(options: &ChatOptions) -> Self {
        Self {
            inline: options.inline_citations.unwrap_or(true),
            footer: options.sources_in_content.unwrap_or(true),
        }
    }
}

/// The content after the answer's text: the source lines, unless refused or asked not to.
fn footer(answer: &Answer, refused: bool, cites: Cites) -> String {
    if cites.footer && !refused && !answer.citations.is_empty() {
        sources_footer(&answer.citations)
    } else {
        String::new()
    }
}

fn is_refused(answer: &Answer) -> bool {
    answer.refused || crate::grounding::is_refusal(&answer.text)
}

/// The content of a unary answer: its text with the markers, then the source lines.
fn content(answer: &Answer, cites: Cites) -> String {
    let refused = is_refused(answer);
    let mut text = if cites.inline && !refused {
        cite::cite(&answer.text, &answer.citations)
    } else {
        answer.text.clone()
    };
    text.push_str(&footer(answer, refused, cites));
    text
}

/// The final answer; `text`: its content, the answer's text with the citations in.
fn kb_final(kb: &str, answer: Answer, text: String) -> Final {
    let refused = is_refused(&answer);
    Final {
        text,
        finish_reason: if answer.refused {
            "stop"
        } else {
            finish_reason(answer.finish_reason)
        },
        prompt_tokens: answer.prompt_tokens,
        completion_tokens: answer.generated_tokens,
        zhiku: Some(json!({
            "knowledge_base": kb,
            "refused": refused,
            "sources": answer.citations.iter().map(source_json).collect::<Vec<_>>(),
            "timings": timings_json(&answer.timings),
            "verification": verification_json(answer.verification.as_ref()),
        })),
    }
}

/// The answer's fact-level verification (`null` when it was not generated).
fn verification_json(verification: Option<&Verification>) -> Value {
    verification.map_or(Value::Null, |v| {
        json!({
            "checked": v.checked,
            "withdrawn": v.withdrawn,
            "unsupported_facts": v.unsupported_facts,
            "reason": v.reason,
            "echoed": v.echoed,
            "refocused": v.refocused,
            "units_dropped": v.units_dropped,
            "read_from_table": v.read_from_table,
        })
    })
}

/// What the last content chunk of a stream says when verification withdrew the streamed
/// draft: that it was withdrawn and why, then the refusal.
fn withdrawal_notice(answer: &Answer) -> Option<String> {
    let v = answer.verification.as_ref().filter(|v| v.withdrawn)?;
    Some(format!("\n\n[withdrawn: {}]\n{}", v.reason, answer.text))
}

/// What a stream says before its sources when the answer is a second reading
/// (`verification.refocused`) that stood: the content above holds the draft and the second
/// reading one after the other, so the answer is restated under a marker.
fn second_reading_notice(answer: &Answer) -> Option<String> {
    let v = answer.verification.as_ref().filter(|v| !v.withdrawn)?;
    if v.read_from_table {
        return Some(format!(
            "\n\n[read from the table: {}; the answer:]\n{}",
            v.reason, answer.text
        ));
    }
    if v.units_dropped {
        return Some(format!(
            "\n\n[unit dropped: no source states the unit given for a figure above; the \
             answer, as the sources write it:]\n{}",
            answer.text
        ));
    }
    if !v.refocused {
        return None;
    }
    Some(format!(
        "\n\n[read again: the first draft gave a figure from another table row or document; \
         the answer, from the passages the question names:]\n{}",
        answer.text
    ))
}

fn completion_id() -> String {
    format!("chatcmpl-{}", uuid_like())
}

/// A unique enough id: the request id when there is one (it is unique per call).
fn uuid_like() -> String {
    zhiku_runtime::request_id::current().unwrap_or_else(|| format!("{:x}", now_secs()))
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<HttpState>,
    caller: HttpCaller,
    Json(request): Json<ChatRequest>,
) -> Result<Response, ApiError> {
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("n", "only n = 1 is supported"));
    }
    if request.messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` is empty"));
    }
    let orchestrator = state.orchestrator()?;
    let (model, named_adapter) = split_adapter(&request.model);
    let adapter = request
        .zhiku
        .adapter
        .clone()
        .or_else(|| named_adapter.map(str::to_owned));
    let target = target(&orchestrator, model).await?;
    let max_new_tokens = orchestrator.args.ask.max_new_tokens;
    let header = Header {
        id: completion_id(),
        created: now_secs(),
        model: request.model.clone(),
    };
    match target {
        Target::KnowledgeBase(kb) => {
            let mut ask = ask_request(&request, kb.clone(), max_new_tokens)?;
            ask.adapter = adapter;
            let principal = http_principal(&caller);
            require_kb(principal, &kb)?;
            confine_filter(principal, &mut ask.filter);
            let audit = Audit::new("ask", principal, &kb);
            let cites = Cites::of(&request.zhiku);
            let events = spawn_audited(
                move |tx| {
                    let orchestrator = orchestrator.clone();
                    async move { orchestrator.ask(ask, Deadline::default(), tx).await }
                },
                audit,
            );
            if request.stream {
                let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
                Ok(sse(kb_chunks(header, kb, events, cites, include_usage)))
            } else {
                let answer = collect_answer(events).await?;
                let text = content(&answer, cites);
                Ok(header.completion(&kb_final(&kb, answer, text)))
            }
        }
        Target::Chat(model) => {
            let adapter = adapter.unwrap_or_default();
            if !adapter.is_empty() {
                orchestrator
                    .require_loaded(&adapter, Deadline::default())
                    .await?;
            }
            let generate = GenerateRequest {
                input: Some(generate_request::Input::Chat(chat(&request)?)),
                sampling: Some(request.sampling(max_new_tokens)),
                adapter,
            };
            let header = Header { model, ..header };
            if request.stream {
                let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
                let stream = orchestrator
                    .downstream
                    .generator
                    .clone()
                    .generate_stream(Deadline::default().request(generate))
                    .await
                    .map_err(OrchestratorError::downstream("generator"))?
                    .into_inner();
                Ok(sse(chat_chunks(header, stream, include_usage)))
            } else {
                let done = orchestrator
                    .downstream
                    .generator
                    .clone()
                    .generate(Deadline::default().request(generate))
                    .await
                    .map_err(OrchestratorError::downstream("generator"))?
                    .into_inner();
                Ok(header.completion(&Final {
                    text: done.text,
                    finish_reason: finish_reason(done.finish_reason),
                    prompt_tokens: done.prompt_tokens,
                    completion_tokens: done.generated_tokens,
                    zhiku: None,
                }))
            }
        }
    }
}

type Events = tokio::sync::mpsc::Receiver<Result<zhiku_proto::v1::AskEvent, OrchestratorError>>;

async fn collect_answer(mut events: Events) -> Result<Answer, ApiError> {
    while let Some(event) = events.recv().await {
        if let Some(ask_event::Event::Answer(answer)) = event?.event {
            return Ok(answer);
        }
    }
    Err(OrchestratorError::Internal("the answer ended before its final event".into()).into())
}

/// The fields every response and chunk of one completion share.
#[derive(Clone)]
struct Header {
    id: String,
    created: u64,
    model: String,
}

impl Header {
    fn completion(&self, f: &Final) -> Response {
        let mut body = json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": f.text},
                "finish_reason": f.finish_reason,
            }],
            "usage": usage(f),
        });
        if let Some(zhiku) = &f.zhiku {
            body["zhiku"] = zhiku.clone();
        }
        Json(body).into_response()
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        })
    }

    fn usage_chunk(&self, f: &Final) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage(f),
        })
    }

    /// The chunks that end a stream: what is left of the content, the finish reason (with
    /// `zhiku` when there is one) and the usage when asked.
    fn last_chunks(&self, rest: Option<String>, f: &Final, include_usage: bool) -> Vec<Value> {
        let mut out = Vec::new();
        if let Some(rest) = rest.filter(|r| !r.is_empty()) {
            out.push(self.chunk(json!({ "content": rest }), None));
        }
        let mut last = self.chunk(json!({}), Some(f.finish_reason));
        if let Some(zhiku) = &f.zhiku {
            last["zhiku"] = zhiku.clone();
        }
        out.push(last);
        if include_usage {
            out.push(self.usage_chunk(f));
        }
        out
    }
}

/// A stream of JSON chunks as SSE, ended by `data: [DONE]`; an error mid-stream is sent as
/// an `{"error": …}` chunk (what OpenAI's clients raise).
fn sse(chunks: impl Stream<Item = Result<Vec<Value>, ApiError>> + Send + 'static) -> Response {
    let events = chunks
        .map(|chunks| {
            let values = match chunks {
                Ok(values) => values,
                Err(e) => vec![e.body()],
            };
            futures::stream::iter(
                values
                    .into_iter()
                    .map(|v| Ok::<_, Infallible>(Event::default().data(v.to_string()))),
            )
        })
        .flatten()
        .chain(futures::stream::once(async {
            Ok(Event::default().data("[DONE]"))
        }));
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The chunks of a knowledge-base answer: the role with the sources first, the answer's
/// pieces as they come, then the end (see [`Header::last_chunks`]). The stream stops after
/// an error.
fn kb_chunks(
    header: Header,
    kb: String,
    events: Events,
    cites: Cites,
    include_usage: bool,
) -> impl Stream<Item = Result<Vec<Value>, ApiError>> + Send + 'static {
    let header = Arc::new(header);
    // Puts the markers in as the pieces pass (set once the sources are known).
    let mut citer: Option<Citer> = None;
    ReceiverStream::new(events)
        .map(move |event| {
            let header = header.clone();
            let event = event.map_err(ApiError::from)?;
            Ok(match event.event {
                Some(ask_event::Event::Sources(sources)) => {
                    if cites.inline {
                        citer = Some(Citer::new(&sources.citations));
                    }
                    let mut chunk = header.chunk(json!({"role": "assistant", "content": ""}), None);
                    chunk["zhiku"] = json!({
                        "knowledge_base": kb,
                        "sources": sources.citations.iter().map(source_json).collect::<Vec<_>>(),
                    });
                    vec![chunk]
                }
                Some(ask_event::Event::Chunk(chunk)) => {
                    let text = match &mut citer {
                        Some(citer) => citer.push(&chunk.text),
                        None => chunk.text,
                    };
                    // Empty while the citer holds a sentence's end back.
                    if text.is_empty() {
                        Vec::new()
                    } else {
                        vec![header.chunk(json!({ "content": text }), None)]
                    }
                }
                Some(ask_event::Event::Answer(answer)) => {
                    // A refusal of the pipeline was not streamed: its text goes out here. A
                    // generated answer was: what the citer held, and the source lines.
                    let rest = if let Some(notice) = withdrawal_notice(&answer) {
                        notice
                    } else if answer.refused {
                        answer.text.clone()
                    } else {
                        let mut rest = citer.as_mut().map(Citer::finish).unwrap_or_default();
                        rest.push_str(&second_reading_notice(&answer).unwrap_or_default());
                        rest.push_str(&footer(&answer, is_refused(&answer), cites));
                        rest
                    };
                    let f = kb_final(&kb, answer, rest.clone());
                    header.last_chunks(Some(rest), &f, include_usage)
                }
                None => Vec::new(),
            })
        })
        .scan(false, |failed, item| {
            // Nothing after an error.
            if *failed {
                return futures::future::ready(None);
            }
            *failed = item.is_err();
            futures::future::ready(Some(item))
        })
}

/// The chunks of a plain chat, from the generator's stream.
fn chat_chunks(
    header: Header,
    stream: tonic::Streaming<zhiku_proto::v1::GenerateStreamResponse>,
    include_usage: bool,
) -> impl Stream<Item = Result<Vec<Value>, ApiError>> + Send + 'static {
    let first = futures::stream::once({
        let header = header.clone();
        async move {
            Ok::<_, ApiError>(vec![
                header.chunk(json!({"role": "assistant", "content": ""}), None),
            ])
        }
    });
    // Chunks passed on: a generator lost after the first is not retried elsewhere.
    let mut chunks = 0;
    let rest = stream
        .map(move |event| {
            let event = event.map_err(OrchestratorError::generation(chunks))?;
            Ok(match event.event {
                Some(generate_stream_response::Event::Chunk(chunk)) => {
                    chunks += 1;
                    vec![header.chunk(json!({ "content": chunk.text }), None)]
                }
                Some(generate_stream_response::Event::Done(done)) => {
                    let f = Final {
                        text: String::new(),
                        finish_reason: finish_reason(done.finish_reason),
                        prompt_tokens: done.prompt_tokens,
                        completion_tokens: done.generated_tokens,
                        zhiku: None,
                    };
                    header.last_chunks(None, &f, include_usage)
                }
                None => Vec::new(),
            })
        })
        .scan(false, |failed, item: Result<Vec<Value>, ApiError>| {
            if *failed {
                return futures::future::ready(None);
            }
            *failed = item.is_err();
            futures::future::ready(Some(item))
        });
    first.chain(rest)
}

/// `GET /v1/models`: every knowledge base (`kb:NAME`) and the generator's model.
pub async fn models(
    State(state): State<HttpState>,
    caller: HttpCaller,
) -> Result<Response, ApiError> {
    let orchestrator = state.orchestrator()?;
    let generator = generator_model(&orchestrator).await?;
    let kbs = state
        .retriever(|mut c| async move {
            c.list_knowledge_bases(ListKnowledgeBasesRequest::default())
                .await
        })
        .await?
        .knowledge_bases;
    let created = now_secs();
    let mut data = vec![json!({
        "id": generator,
        "object": "model",
        "created": created,
        "owned_by": "zhiku",
        "zhiku": {"kind": "generator"},
    })];
    let principal = http_principal(&caller);
    for kb in kbs
        .into_iter()
        .filter(|kb| principal.is_none_or(|p| p.may_use(&kb.name)))
    {
        data.push(json!({
            "id": format!("kb:{}", kb.name),
            "object": "model",
            "created": kb.created_at_ms.max(0) / 1000,
            "owned_by": "zhiku",
            "zhiku": {
                "kind": "knowledge_base",
                "name": kb.name,
                "description": kb.description,
                "documents": kb.document_count,
                "passages": kb.passage_count,
            },
        }));
    }
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EmbeddingOptions {
    /// "query" or "passage" (default): the prefix asymmetric models put before the text.
    pub kind: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    pub input: EmbeddingInput,
    #[serde(default)]
    pub model: Option<String>,
    /// "float" (default) or "base64" (little-endian f32, what the `openai` package asks for).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Must be the model's, when given (the vectors are not cut).
    #[serde(default)]
    pub dimensions: Option<u32>,
    #[serde(default)]
    pub zhiku: EmbeddingOptions,
}

/// `POST /v1/embeddings`, through the embedder (`model` is not checked: there is one).
pub async fn embeddings(
    State(state): State<HttpState>,
    Json(request): Json<EmbeddingsRequest>,
) -> Result<Response, ApiError> {
    let texts = match request.input {
        EmbeddingInput::One(text) => vec![text],
        EmbeddingInput::Many(texts) => texts,
    };
    if texts.is_empty() {
        return Err(ApiError::invalid("input", "`input` is empty"));
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("`encoding_format` `{other}` is not float or base64"),
            ));
        }
    };
    let kind = match request.zhiku.kind.as_deref() {
        None | Some("passage") => EmbedKind::Passage,
        Some("query") => EmbedKind::Query,
        Some(other) => {
            return Err(ApiError::invalid(
                "zhiku.kind",
                format!("`zhiku.kind` `{other}` is not query or passage"),
            ));
        }
    };
    let orchestrator = state.orchestrator()?;
    let response = orchestrator
        .downstream
        .embedder
        .clone()
        .embed(Deadline::default().request(EmbedRequest {
            texts,
            kind: kind as i32,
            ..Default::default()
        }))
        .await
        .map_err(OrchestratorError::downstream("embedder"))?
        .into_inner();
    if let Some(asked) = request.dimensions
        && asked != response.dimensions
    {
        return Err(ApiError::invalid(
            "dimensions",
            format!(
                "`dimensions` {asked}: the model's vectors have {} (they are not cut)",
                response.dimensions
            ),
        ));
    }
    let data: Vec<Value> = response
        .embeddings
        .iter()
        .enumerate()
        .map(|(index, e)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = e.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(e.values)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": response.model,
        "usage": {"prompt_tokens": response.total_tokens, "total_tokens": response.total_tokens},
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(messages: &[(&str, &str)]) -> ChatRequest {
        serde_json::from_value(json!({
            "model": "kb:x",
            "messages": messages
                .iter()
                .map(|(role, content)| json!({"role": role, "content": content}))
                .collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn the_messages_are_the_history_and_the_last_is_the_question() {
        let r = request(&[
            ("system", "be brief"),
            ("user", "q1"),
            ("assistant", "a1"),
            ("user", "q2"),
            ("assistant", "a2"),
            ("user", "q3"),
        ]);
        let ask = ask_request(&r, "x".into(), 64).unwrap();
        assert_eq!(ask.question, "q3");
        let turns: Vec<_> = ask
            .history
            .iter()
            .map(|t| (t.question.as_str(), t.answer.as_str()))
            .collect();
        assert_eq!(turns, [("q1", "a1"), ("q2", "a2")]);
        assert_eq!(ask.sampling.unwrap().max_new_tokens, Some(64));

        let last_is_not_a_question = request(&[("user", "q"), ("assistant", "a")]);
        let e = ask_request(&last_is_not_a_question, "x".into(), 64).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_model_may_name_an_adapter_after_at() {
        assert_eq!(
            split_adapter("kb:handbook@tuned"),
            ("kb:handbook", Some("tuned"))
        );
        assert_eq!(split_adapter("kb:handbook@"), ("kb:handbook", Some("")));
        assert_eq!(split_adapter("kb:handbook"), ("kb:handbook", None));
        assert_eq!(
            split_adapter("Qwen/Qwen2.5@v2"),
            ("Qwen/Qwen2.5", Some("v2"))
        );
        assert_eq!(split_adapter("a@b/c"), ("a@b/c", None));
    }

    #[test]
    fn content_parts_of_text_are_joined() {
        let r: ChatRequest = serde_json::from_value(json!({
            "model": "m",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "小拾"}, {"type": "text", "text": "喜欢什么"}
            ]}],
        }))
        .unwrap();
        assert_eq!(r.messages[0].text().unwrap(), "小拾喜欢什么");
    }

    #[test]
    fn a_refusal_is_an_ordinary_stop_with_refused_set() {
        let f = kb_final(
            "kb",
            Answer {
                text: crate::prompt::REFUSAL.into(),
                refused: true,
                ..Default::default()
            },
            crate::prompt::REFUSAL.into(),
        );
        assert_eq!(f.text, crate::prompt::REFUSAL);
        assert_eq!(f.finish_reason, "stop");
        assert_eq!(f.zhiku.unwrap()["refused"], true);
    }

    fn withdrawn_answer() -> Answer {
        Answer {
            text: crate::prompt::REFUSAL.into(),
            refused: true,
            generated_tokens: 12,
            verification: Some(Verification {
                checked: true,
                withdrawn: true,
                unsupported_facts: vec!["72GB".into()],
                reason: "unsupported key fact: no passage states 72GB".into(),
                echoed: false,
                refocused: false,
                units_dropped: false,
                read_from_table: false,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_withdrawn_answer_says_so_in_its_last_chunk_and_its_zhiku_object() {
        let withdrawn = withdrawn_answer();
        let notice = withdrawal_notice(&withdrawn).unwrap();
        assert!(notice.contains("[withdrawn: unsupported key fact: no passage states 72GB]"));
        assert!(notice.ends_with(crate::prompt::REFUSAL));
        let zhiku = kb_final("kb", withdrawn, notice).zhiku.unwrap();
        assert_eq!(zhiku["refused"], true);
        assert_eq!(zhiku["verification"]["withdrawn"], true);
        assert_eq!(zhiku["verification"]["unsupported_facts"][0], "72GB");

        let kept = Answer {
            text: "INT4 需要 6GB。".into(),
            verification: Some(Verification {
                checked: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(withdrawal_notice(&kept), None);
        assert_eq!(second_reading_notice(&kept), None);
        // A second reading that stood restates the answer under a marker; a withdrawn one
        // leaves that to the withdrawal notice.
        let read_again = Answer {
            text: "72.3".into(),
            verification: Some(Verification {
                checked: true,
                refocused: true,
                units_dropped: false,
                ..Default::default()
            }),
            ..Default::default()
        };
        let notice = second_reading_notice(&read_again).unwrap();
        assert!(
            notice.contains("[read again:") && notice.ends_with("\n72.3"),
            "{notice}"
        );
        assert_eq!(withdrawal_notice(&read_again), None);
        let mut withdrawn_again = withdrawn_answer();
        if let Some(v) = withdrawn_again.verification.as_mut() {
            v.refocused = true;
        }
        assert_eq!(second_reading_notice(&withdrawn_again), None);
        // An answer whose unit was dropped is restated as it stands: the stream held the
        // draft with the unit.
        let bare = Answer {
            text: "112.9".into(),
            verification: Some(Verification {
                checked: true,
                units_dropped: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let notice = second_reading_notice(&bare).unwrap();
        assert!(
            notice.contains("[unit dropped:") && notice.ends_with("\n112.9"),
            "{notice}"
        );
        // An answer read from the table cell the question names says which figure it
        // replaced, after a second reading too.
        let from_table = Answer {
            text: "模型大小为3.69G。".into(),
            verification: Some(Verification {
                checked: true,
                refocused: true,
                read_from_table: true,
                reason: "the draft's 3.92G sat in another row or column of the table".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let notice = second_reading_notice(&from_table).unwrap();
        assert!(
            notice.contains("[read from the table: the draft's 3.92G")
                && notice.ends_with("\n模型大小为3.69G。"),
            "{notice}"
        );
        assert_eq!(
            kb_final("kb", from_table, notice).zhiku.unwrap()["verification"]["read_from_table"],
            true
        );
        assert_eq!(
            kb_final("kb", kept, String::new()).zhiku.unwrap()["verification"]["withdrawn"],
            false
        );
    }

    #[test]
    fn the_content_ends_with_the_numbered_sources() {
        let citation = |n: u32, source: &str, text: &str| Citation {
            number: n,
            source: source.into(),
            text: text.into(),
            ..Default::default()
        };
        let answer = |text: &str| Answer {
            text: text.into(),
            citations: vec![
                citation(1, "xiaoshi.txt", "小拾喜欢玩手机、打游戏、看电影。"),
                citation(2, "glm.md", "GLM 是清华大学的模型。"),
            ],
            finish_reason: FinishReason::Eos as i32,
            ..Default::default()
        };
        let all = Cites {
            inline: true,
            footer: true,
        };
        // The model's own marker is kept; a sentence without one gets the passage's.
        let written = answer("小拾喜欢玩手机 [1]。GLM 是清华大学的模型。");
        assert_eq!(
            content(&written, all),
            "小拾喜欢玩手机 [1]。GLM 是清华大学的模型。[2]\n\n[1] xiaoshi.txt\n[2] glm.md"
        );
        let plain = answer("小拾喜欢看电影。");
        let bare = Cites {
            inline: false,
            footer: false,
        };
        assert_eq!(content(&plain, bare), "小拾喜欢看电影。");
        let inline_only = Cites {
            inline: true,
            footer: false,
        };
        assert_eq!(content(&plain, inline_only), "小拾喜欢看电影。[1]");
        let f = kb_final("kb", plain, String::new());
        assert_eq!(f.zhiku.unwrap()["sources"][1]["source"], "glm.md");
        assert_eq!(short_name("/models/Qwen/qwen.gguf"), "qwen.gguf");
    }
}
