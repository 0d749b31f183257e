//! Handlers of `zhiku.v1.Embedder` (proto/zhiku/v1/embedder.proto). Requests are validated
//! here, at the edge; the model and batcher below never see a bad request.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use zhiku_proto::v1::embedder_server::Embedder;
use zhiku_proto::v1::{
    EmbedKind, EmbedRequest, EmbedResponse, EmbedderInfoRequest, EmbedderInfoResponse, Embedding,
    RecognizeRequest, RecognizeResponse, RerankRequest, RerankResponse, RerankScore, Token,
    TokenizeRequest, TokenizeResponse, TokenizedText,
};
use zhiku_runtime::Ready;

use crate::EmbedderState;
use crate::error::EmbedderError;
use crate::reranker::{CrossEncoder, order, sigmoid};
use crate::tokenizer::{PairInput, TextKind, TextTokenizer};

/// EmbedStream requests processed concurrently per stream (answers keep request order).
const STREAM_CONCURRENCY: usize = 16;

#[derive(Clone)]
pub struct EmbedderApi {
    state: Ready<Arc<EmbedderState>>,
}

impl EmbedderApi {
    pub fn new(state: Ready<Arc<EmbedderState>>) -> Self {
        Self { state }
    }

    fn state(&self) -> Result<Arc<EmbedderState>, Status> {
        self.state.get().cloned()
    }
}

fn parse_kind(kind: i32) -> Result<TextKind, EmbedderError> {
    match EmbedKind::try_from(kind) {
        Ok(EmbedKind::Query) => Ok(TextKind::Query),
        Ok(EmbedKind::Passage | EmbedKind::Unspecified) => Ok(TextKind::Passage),
        Err(_) => Err(EmbedderError::Validation(format!(
            "`kind` {kind} is not an EmbedKind: use EMBED_KIND_QUERY (1) or \
             EMBED_KIND_PASSAGE (2)"
        ))),
    }
}

/// Checks a request's texts against --max-client-batch-size and --max-text-bytes, before
/// anything is tokenized or allocated for them.
/// 1 to `max` items in `field`, none over `max_bytes` (checked before anything is tokenized).
fn check_texts(
    field: &str,
    texts: &[String],
    max: usize,
    max_bytes: usize,
) -> Result<(), EmbedderError> {
    check_items(field, texts, max)?;
    if let Some((i, text)) = texts.iter().enumerate().find(|(_, t)| t.len() > max_bytes) {
        return Err(EmbedderError::Validation(format!(
            "`{field}[{i}]` is {} bytes; at most {max_bytes} are allowed per text \
             (--max-text-bytes): shorten it (the model reads only its first tokens)",
            text.len()
        )));
    }
    Ok(())
}

/// 1 to `max` items in the request's `field`.
fn check_items(field: &str, items: &[String], max: usize) -> Result<(), EmbedderError> {
    if items.is_empty() {
        return Err(EmbedderError::Validation(format!(
            "`{field}` is empty: send between 1 and {max} {field}"
        )));
    }
    if items.len() > max {
        return Err(EmbedderError::Validation(format!(
            "`{field}` has {} {field}; at most {max} are allowed per request \
             (--max-client-batch-size): split the request",
            items.len()
        )));
    }
    Ok(())
}

impl EmbedderState {
    /// Validates, tokenizes and embeds one request. Tokenizing is CPU work in proportion to
    /// the request's text: it runs on a blocking thread, never on an async worker.
    pub async fn embed(&self, request: EmbedRequest) -> Result<EmbedResponse, EmbedderError> {
        check_texts(
            "texts",
            &request.texts,
            self.max_client_batch_size,
            self.max_text_bytes,
        )?;
        let kind = parse_kind(request.kind)?;
        let encoder = self.encoder.clone();
        let EmbedRequest {
            texts,
            reject_overlong,
            id,
            ..
        } = request;
        let (inputs, meta) =
            blocking(move || tokenize_for_model(&encoder.tokenizer, &texts, kind, reject_overlong))
                .await??;
        let vectors = self.batcher.embed(inputs).await?;
        let total_tokens = meta.iter().map(|(n, _)| n).sum();
        Ok(EmbedResponse {
            embeddings: vectors
                .into_iter()
                .zip(meta)
                .map(|(values, (token_count, truncated))| Embedding {
                    values,
                    token_count,
                    truncated,
                })
                .collect(),
            dimensions: self.encoder.info.dimensions as u32,
            total_tokens,
            model: self.encoder.info.model_id.clone(),
            id,
        })
    }

    /// The Tokenize call's answer, computed on a blocking thread.
    pub async fn tokenize(
        &self,
        request: TokenizeRequest,
    ) -> Result<TokenizeResponse, EmbedderError> {
        check_texts(
            "texts",
            &request.texts,
            self.max_client_batch_size,
            self.max_text_bytes,
        )?;
        let kind = parse_kind(request.kind)?;
        let encoder = self.encoder.clone();
        blocking(move || {
            let texts = request
                .texts
                .iter()
                .map(|text| {
                    let (spans, truncated) = encoder.tokenizer.tokenize(text, kind)?;
                    Ok(TokenizedText {
                        tokens: spans
                            .into_iter()
                            .map(|s| Token {
                                id: s.id,
                                text: s.text,
                                start: s.start as u32,
                                end: s.end as u32,
                                special: s.special,
                            })
                            .collect(),
                        truncated,
                    })
                })
                .collect::<Result<_, EmbedderError>>()?;
            Ok(TokenizeResponse { texts })
        })
        .await?
    }

    /// Validates, tokenizes (on a blocking thread) and scores one Rerank request.
    pub async fn rerank(&self, request: RerankRequest) -> Result<RerankResponse, EmbedderError> {
        let Some(reranker) = &self.reranker else {
            return Err(EmbedderError::NoReranker);
        };
        if request.query.trim().is_empty() {
            return Err(EmbedderError::Validation(
                "`query` is empty: give the text the passages are scored against".into(),
            ));
        }
        if request.query.len() > self.max_text_bytes {
            return Err(EmbedderError::Validation(format!(
                "`query` is {} bytes; at most {} are allowed (--max-text-bytes): shorten it",
                request.query.len(),
                self.max_text_bytes
            )));
        }
        check_texts(
            "passages",
            &request.passages,
            self.max_client_batch_size,
            self.max_text_bytes,
        )?;
        let model = reranker.model.clone();
        let RerankRequest {
            query,
            passages,
            reject_overlong,
        } = request;
        let pairs =
            blocking(move || tokenize_pairs(&model, &query, &passages, reject_overlong)).await??;
        let meta: Vec<(u32, bool)> = pairs
            .iter()
            .map(|p| (p.ids.len() as u32, p.truncated))
            .collect();
        let logits = reranker.batcher.run(pairs).await?;
        let total_tokens = meta.iter().map(|(n, _)| n).sum();
        Ok(RerankResponse {
            order: order(&logits),
            scores: logits
                .into_iter()
                .zip(meta)
                .enumerate()
                .map(|(index, (logit, (token_count, truncated)))| RerankScore {
                    index: index as u32,
                    score: sigmoid(logit),
                    logit,
                    token_count,
                    truncated,
                })
                .collect(),
            model: reranker.model.info.model_id.clone(),
            total_tokens,
        })
    }

    pub fn info(&self) -> EmbedderInfoResponse {
        let info = &self.encoder.info;
        let batching = self.batcher.config();
        EmbedderInfoResponse {
            model_id: info.model_id.clone(),
            model_type: info.model_type.clone(),
            dimensions: info.dimensions as u32,
            max_input_tokens: info.max_input_tokens as u32,
            pooling: info.pooling.as_str().into(),
            dtype: info.precision.as_str().into(),
            device: info.device.clone(),
            query_prefix: info.query_prefix.clone(),
            passage_prefix: info.passage_prefix.clone(),
            max_batch_tokens: batching.max_batch_tokens as u32,
            max_client_batch_size: self.max_client_batch_size as u32,
            max_queued_texts: batching.max_queued_texts as u32,
            reranker_model: self
                .reranker
                .as_ref()
                .map(|r| r.model.info.model_id.clone())
                .unwrap_or_default(),
            reranker_max_input_tokens: self
                .reranker
                .as_ref()
                .map_or(0, |r| r.model.info.max_input_tokens as u32),
            ocr_model: self
                .ocr
                .as_ref()
                .map(|o| o.model_id.clone())
                .unwrap_or_default(),
        }
    }
}

/// Runs CPU work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EmbedderError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| EmbedderError::Tokenizer(format!("the tokenizing thread failed: {e}")))
}

/// Ids of each text for the model, with their count and whether they were cut.
type Tokenized = (Vec<Vec<u32>>, Vec<(u32, bool)>);

fn tokenize_for_model(
    tokenizer: &TextTokenizer,
    texts: &[String],
    kind: TextKind,
    reject_overlong: bool,
) -> Result<Tokenized, EmbedderError> {
    let mut inputs = Vec::with_capacity(texts.len());
    let mut meta = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let tokenized = tokenizer.encode(text, kind)?;
        if tokenized.truncated && reject_overlong {
            let full = tokenizer.count_untruncated(text, kind)?;
            return Err(EmbedderError::Validation(format!(
                "`texts[{i}]` is {full} tokens, over the model's limit of {}: shorten it, \
                 or leave `reject_overlong` false to have it truncated",
                tokenizer.max_input_tokens()
            )));
        }
        meta.push((tokenized.ids.len() as u32, tokenized.truncated));
        inputs.push(tokenized.ids);
    }
    Ok((inputs, meta))
}

/// The pairs of one Rerank request. The query may take at most half of the window, so that
/// truncation (longest side first) always leaves the passage room.
fn tokenize_pairs(
    model: &CrossEncoder,
    query: &str,
    passages: &[String],
    reject_overlong: bool,
) -> Result<Vec<PairInput>, EmbedderError> {
    let max = model.info.max_input_tokens;
    let query_tokens = model.tokenizer.count_untruncated(query, TextKind::Query)?;
    if query_tokens > max / 2 {
        return Err(EmbedderError::Validation(format!(
            "`query` is {query_tokens} tokens; the reranker reads at most {max} per (query, \
             passage) pair and the query may take half of them ({}): shorten it",
            max / 2
        )));
    }
    passages
        .iter()
        .enumerate()
        .map(|(i, passage)| {
            let pair = model.encode(query, passage)?;
            if pair.truncated && reject_overlong {
                return Err(EmbedderError::Validation(format!(
                    "`passages[{i}]` with the query is over the reranker's limit of {max} \
                     tokens: shorten it, or leave `reject_overlong` false to have it truncated"
                )));
            }
            Ok(pair)
        })
        .collect()
}

type EmbedStreamResponse = Pin<Box<dyn Stream<Item = Result<EmbedResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Embedder for EmbedderApi {
    async fn embed(
        &self,
        request: Request<EmbedRequest>,
    ) -> Result<Response<EmbedResponse>, Status> {
        let state = self.state()?;
        let response = state.embed(request.into_inner()).await?;
        Ok(Response::new(response))
    }

    type EmbedStreamStream = EmbedStreamResponse;

    async fn embed_stream(
        &self,
        request: Request<Streaming<EmbedRequest>>,
    ) -> Result<Response<Self::EmbedStreamStream>, Status> {
        let state = self.state()?;
        let inbound = request.into_inner();
        // `buffered` runs several requests at once but yields answers in request order.
        // tonic ends the stream at the first error.
        let outbound = inbound
            .map(move |message| {
                let state = state.clone();
                async move {
                    let message = message?;
                    state.embed(message).await.map_err(Status::from)
                }
            })
            .buffered(STREAM_CONCURRENCY);
        Ok(Response::new(Box::pin(outbound)))
    }

    async fn tokenize(
        &self,
        request: Request<TokenizeRequest>,
    ) -> Result<Response<TokenizeResponse>, Status> {
        let state = self.state()?;
        Ok(Response::new(state.tokenize(request.into_inner()).await?))
    }

    async fn rerank(
        &self,
        request: Request<RerankRequest>,
    ) -> Result<Response<RerankResponse>, Status> {
        let state = self.state()?;
        Ok(Response::new(state.rerank(request.into_inner()).await?))
    }

    async fn recognize(
        &self,
        request: Request<RecognizeRequest>,
    ) -> Result<Response<RecognizeResponse>, Status> {
        let state = self.state()?;
        let Some(ocr) = &state.ocr else {
            return Err(EmbedderError::NoOcr.into());
        };
        Ok(Response::new(ocr.recognize(request.into_inner()).await?))
    }

    async fn info(
        &self,
        _request: Request<EmbedderInfoRequest>,
    ) -> Result<Response<EmbedderInfoResponse>, Status> {
        Ok(Response::new(self.state()?.info()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(parse_kind(0).unwrap(), TextKind::Passage);
        assert_eq!(parse_kind(1).unwrap(), TextKind::Query);
        assert_eq!(parse_kind(2).unwrap(), TextKind::Passage);
        let err = parse_kind(9).unwrap_err().to_string();
        assert!(err.contains("`kind` 9"), "{err}");
    }

    #[test]
    fn counts() {
        assert!(
            check_items("texts", &[], 4)
                .unwrap_err()
                .to_string()
                .contains("`texts` is empty")
        );
        let five = vec![String::new(); 5];
        let err = check_items("texts", &five, 4).unwrap_err().to_string();
        assert!(err.contains("at most 4"), "{err}");
        assert!(check_items("texts", &five, 5).is_ok());
    }
}
